"""The ledger CLI: embedded state across processes, a consortium on anvil, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ledger.chain import connect
from ledger.cli import consent_app, consortium_app, ledger_app, patient_app
from ledger.errors import ChainUnavailableError
from ledger.keystore import generate_key_file
from tests.ledger.conftest import REPO_ROOT, Anvil, free_port

STUDY = "1.2.826.0.1.3680043.8.498.77"


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run one command in its own Python process, as an operator would."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PACSMESH_PATIENT_KEY_PASSWORD": "patient-pw",
    }
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )


@pytest.mark.slow
def test_embedded_chain_state_survives_across_processes(tmp_path: Path) -> None:
    data = tmp_path / "node-a"
    deployed = cli("ledger", "deploy", "--hospital-id", "hosp-a", "--json", data_dir=data)
    assert deployed.returncode == 0, deployed.stderr
    deployment = json.loads(deployed.stdout)
    key = tmp_path / "patient.json"
    patient = generate_key_file(key, "patient-pw").address

    granted = cli(
        "consent", "grant", "--patient-key", str(key), "--grantee", "hosp-a",
        "--purpose", "treatment", "--study", STUDY, "--expires", "+30d", data_dir=data,
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    check = ["consent", "check", "--patient", patient, "--grantee", "hosp-a", "--purpose"]
    # A new process replays the journal and sees the grant made by the previous one.
    assert cli(*check, "treatment", "--study", STUDY, data_dir=data).returncode == 0
    revoked = cli(
        "consent", "revoke", "--patient-key", str(key), "--grantee", "hosp-a",
        "--purpose", "treatment", "--study", STUDY, data_dir=data,
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr

    # And this process, opening the same directory afterwards, sees all four processes' work.
    runner, app = CliRunner(), _app()
    here = ["--data-dir", str(data)]
    res = runner.invoke(app, [*check, "treatment", "--study", STUDY, *here])
    assert res.exit_code == 1, res.output
    res = runner.invoke(app, ["consent", "list", "--patient", patient, "--json", *here])
    assert json.loads(res.output)["grants"] == []
    status = json.loads(runner.invoke(app, ["ledger", "status", "--json", *here]).output)
    assert status["chain"] == "embedded" and status["member_status"] == "active"
    assert status["hospital_id"] == "hosp-a"
    assert status["deployment"]["consent_registry"] == deployment["consent_registry"]
    assert status["head_block"] == 5  # 3 deployments, a grant and a revocation


def _app() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(ledger_app, name="ledger")
    root.add_typer(consortium_app, name="consortium")
    root.add_typer(patient_app, name="patient")
    root.add_typer(consent_app, name="consent")
    return root


@pytest.mark.integration
def test_consortium_vote_and_consent_over_anvil(anvil: Anvil, tmp_path: Path) -> None:
    runner = CliRunner()
    app = _app()
    dirs = [tmp_path / f"node-{n}" for n in "abc"]
    accounts = []
    for d in dirs:
        # Before deployment, status already names the node account an operator must fund.
        res = runner.invoke(
            app, ["ledger", "status", "--data-dir", str(d), "--rpc", anvil.url, "--json"]
        )
        assert res.exit_code == 0, res.output
        status = json.loads(res.output)
        assert status["deployment"] is None and status["balance_wei"] == 0
        accounts.append(status["node_account"])
        anvil.fund(status["node_account"])
    founders = [f"hosp-b,{accounts[1]},https://b.example"]
    res = runner.invoke(
        app,
        ["ledger", "deploy", "--data-dir", str(dirs[0]), "--rpc", anvil.url,
         "--hospital-id", "hosp-a", "--founder", founders[0], "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    for d in dirs[1:]:
        shutil.copy(dirs[0] / "deployment.json", d / "deployment.json")

    def run(node: int, *args: str) -> tuple[int, str]:
        r = runner.invoke(app, [*args, "--data-dir", str(dirs[node]), "--rpc", anvil.url])
        return r.exit_code, r.output

    code, out = run(
        0, "consortium", "propose", "add", "--account", accounts[2], "--hospital-id", "hosp-c",
        "--endpoint", "https://c.example", "--json",
    )  # fmt: skip
    assert code == 0, out
    proposal = json.loads(out)
    assert proposal["status"] == "open"  # 1 of 2 is not a majority
    code, out = run(2, "consortium", "vote", str(proposal["proposal_id"]), "--yes")
    assert code == 2 and "NotMember" in out  # the candidate cannot vote for itself
    code, out = run(1, "consortium", "vote", str(proposal["proposal_id"]), "--yes", "--json")
    assert code == 0 and json.loads(out)["status"] == "executed"
    code, out = run(2, "consortium", "list", "--json")
    members = json.loads(out)["members"]
    assert [m["hospital_id"] for m in members] == ["hosp-a", "hosp-b", "hosp-c"]

    os.environ["PACSMESH_PATIENT_KEY_PASSWORD"] = "pw"
    try:
        key = tmp_path / "patient.json"
        code, patient = run(0, "patient", "keygen", "--out", str(key))
        patient = patient.strip()
        code, out = run(
            2, "consent", "grant", "--patient-key", str(key), "--grantee", "all",
            "--purpose", "ai-training",
        )  # fmt: skip
        assert code == 0, out
    finally:
        del os.environ["PACSMESH_PATIENT_KEY_PASSWORD"]
    for node, hid in ((0, "hosp-a"), (1, "hosp-c")):
        code, out = run(
            node, "consent", "check", "--patient", patient, "--grantee", hid,
            "--purpose", "ai-training", "--study", STUDY, "--json",
        )  # fmt: skip
        assert code == 0 and json.loads(out)["permitted"] is True
    code, _ = run(0, "consent", "check", "--patient", patient, "--grantee", "hosp-b",
                  "--purpose", "treatment")  # fmt: skip
    assert code == 1
    code, out = run(1, "consent", "list", "--patient", patient, "--json")
    grants = json.loads(out)["grants"]
    assert [(g["grantee"], g["purpose"], g["study_hash"], g["in_force"]) for g in grants] == [
        ("all", "ai-training", "all", True)
    ]


def test_errors_are_one_line_with_exit_status_2(tmp_path: Path) -> None:
    runner = CliRunner()
    app = _app()
    res = runner.invoke(app, ["consortium", "list", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and "NotDeployedError" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(
        app,
        ["consent", "check", "--data-dir", str(tmp_path), "--patient", "0x" + "11" * 20,
         "--grantee", "hosp-a", "--purpose", "gossip", "--json"],
    )  # fmt: skip
    assert res.exit_code == 2 and "unknown purpose" in json.loads(res.output)["error"]
    (tmp_path / "deployment.json").write_text(
        json.dumps(
            {
                "chain_id": 31337,
                "consortium_registry": "0x" + "01" * 20,
                "consent_registry": "0x" + "02" * 20,
                "audit_anchor": "0x" + "03" * 20,
                "block_number": 1,
            }
        )
    )
    res = runner.invoke(
        app, ["ledger", "status", "--data-dir", str(tmp_path), "--rpc", "ftp://nowhere"]
    )
    assert res.exit_code == 2 and "unsupported RPC URL" in res.output
    # A chain that is down: one line naming the outage, no traceback.
    port = free_port()
    res = runner.invoke(
        app, ["ledger", "status", "--data-dir", str(tmp_path), "--rpc", f"http://127.0.0.1:{port}"]
    )
    assert res.exit_code == 2 and "ChainUnavailableError" in res.output
    assert "Traceback" not in res.output


def test_embedded_chain_refuses_a_second_opener(tmp_path: Path) -> None:
    first = connect(tmp_path)
    try:
        with pytest.raises(ChainUnavailableError, match="another process"):
            connect(tmp_path)
    finally:
        first.close()
    connect(tmp_path).close()  # free again once closed
