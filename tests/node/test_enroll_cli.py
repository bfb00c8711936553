"""`pacsmesh node enroll` end to end: key and CSR, CA signature, installation, and the
registry update that a vote of the consortium completes (real anvil chain)."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from typer.testing import CliRunner

from ledger.cli import consortium_app, ledger_app
from node.cli import node_app
from tests.ledger.conftest import Anvil

ENV = {"PACSMESH_CA_PASSPHRASE": "correct horse battery staple"}
ENDPOINT = "https://127.0.0.1:8443"


@pytest.fixture(scope="module")
def anvil_node() -> Iterator[Anvil]:
    node = Anvil().start()
    yield node
    node.stop()


# The command groups as `pacsmesh` mounts them (node/cli.py mounts ledger groups at run time).
app = typer.Typer()
app.add_typer(node_app, name="node")
app.add_typer(ledger_app, name="ledger")
app.add_typer(consortium_app, name="consortium")


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ENV)
    return result.exit_code, result.output


@pytest.mark.integration
def test_enroll_registers_the_certificate_after_the_vote(anvil_node: Anvil, tmp_path: Path) -> None:
    dirs = {n: tmp_path / f"node-{n}" for n in "ab"}
    accounts = {}
    for name, d in dirs.items():
        code, out = invoke(
            "ledger", "status", "--data-dir", str(d), "--rpc", anvil_node.url, "--json"
        )
        assert code == 0, out
        accounts[name] = json.loads(out)["node_account"]
        anvil_node.fund(accounts[name])
    code, out = invoke(
        "ledger", "deploy", "--data-dir", str(dirs["a"]), "--rpc", anvil_node.url,
        "--hospital-id", "hosp-a", "--founder", f"hosp-b,{accounts['b']},https://b.example",
    )  # fmt: skip
    assert code == 0, out
    shutil.copy(dirs["a"] / "deployment.json", dirs["b"] / "deployment.json")

    ca_dir = tmp_path / "ca"
    code, out = invoke("consortium", "init-ca", "--out", str(ca_dir))
    assert code == 0, out
    assert ENV["PACSMESH_CA_PASSPHRASE"] not in out

    code, out = invoke("node", "enroll", "--data-dir", str(dirs["a"]), "--endpoint", ENDPOINT)
    assert code == 0, out
    tls = dirs["a"] / "tls"
    assert stat.S_IMODE((tls / "node.key").stat().st_mode) == 0o600
    csr = x509.load_pem_x509_csr((tls / "node.csr").read_bytes())
    assert csr.is_signature_valid

    cert_path = tmp_path / "a.crt"
    code, out = invoke(
        "consortium", "sign-csr", str(tls / "node.csr"), "--ca", str(ca_dir), "--out",
        str(cert_path), "--json",
    )  # fmt: skip
    assert code == 0, out
    fp = x509.load_pem_x509_certificate(cert_path.read_bytes()).fingerprint(hashes.SHA256())
    assert json.loads(out)["fingerprint"] == fp.hex()

    enroll = ["node", "enroll", "--data-dir", str(dirs["a"]), "--endpoint", ENDPOINT]
    enroll += ["--rpc", anvil_node.url, "--json"]
    code, out = invoke(*enroll, "--cert", str(cert_path), "--ca-cert", str(ca_dir / "ca.crt"))
    assert code == 0, out
    result = json.loads(out)
    # Two members: the proposer's own yes is not a majority, so the update waits for b.
    assert result["status"] == "open" and result["fingerprint"] == fp.hex()
    assert (tls / "node.crt").read_bytes() == cert_path.read_bytes()

    def member_a() -> dict[str, str]:
        code, out = invoke(
            "consortium", "list", "--data-dir", str(dirs["b"]), "--rpc", anvil_node.url, "--json"
        )
        assert code == 0, out
        return next(m for m in json.loads(out)["members"] if m["hospital_id"] == "hosp-a")

    assert member_a()["tls_fingerprint"] == "00" * 32
    pid = str(result["proposal"]["proposal_id"])
    code, out = invoke(
        "consortium", "vote", pid, "--yes", "--data-dir", str(dirs["b"]), "--rpc",
        anvil_node.url, "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["status"] == "executed", out
    assert member_a()["tls_fingerprint"] == fp.hex()
    assert member_a()["endpoint"] == ENDPOINT

    # Enrolling the same certificate again changes nothing and needs no vote.
    code, out = invoke(*enroll, "--cert", str(tls / "node.crt"))
    assert code == 0 and json.loads(out)["status"] == "registered", out


def test_certificate_from_another_ca_is_not_installed(tmp_path: Path) -> None:
    data = tmp_path / "node"
    assert invoke("node", "enroll", "--data-dir", str(data), "--endpoint", ENDPOINT)[0] == 0
    for name in ("ca", "rogue"):
        assert invoke("consortium", "init-ca", "--out", str(tmp_path / name))[0] == 0
    rogue_cert = tmp_path / "rogue.crt"
    code, out = invoke(
        "consortium", "sign-csr", str(data / "tls" / "node.csr"), "--ca",
        str(tmp_path / "rogue"), "--out", str(rogue_cert),
    )  # fmt: skip
    assert code == 0, out
    code, out = invoke(
        "node", "enroll", "--data-dir", str(data), "--endpoint", ENDPOINT, "--cert",
        str(rogue_cert), "--ca-cert", str(tmp_path / "ca"),
    )  # fmt: skip
    assert code == 2 and "not issued by the consortium CA" in out
    assert not (data / "tls" / "node.crt").exists()


def test_endpoint_must_be_https(tmp_path: Path) -> None:
    code, out = invoke(
        "node", "enroll", "--data-dir", str(tmp_path), "--endpoint", "http://127.0.0.1:8080"
    )
    assert code == 2 and "https URL" in out
    assert not (tmp_path / "tls" / "node.key").exists()
