"""`pacsmesh node enroll`: the node's TLS identity in the consortium.

Step 1 (no --cert): make the node key (DATA_DIR/tls/node.key, mode 0600, kept if present) and a
CSR (DATA_DIR/tls/node.csr) naming the endpoint's host; the CA operator signs it with
`pacsmesh consortium sign-csr`.
Step 2 (--cert): install the certificate and the CA certificate beside the key, then register
the certificate's SHA-256 fingerprint and the endpoint for this node's member account (its key
and deployment.json in the node's ledger directory, DATA_DIR/ledger, or --ledger-dir). The
ConsortiumRegistry changes a member only by a vote (ProposalKind.Update): this node proposes
the update with its own yes vote; it takes effect at once when that is a majority, otherwise
when enough members run `pacsmesh consortium vote ID --yes`.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from ledger.errors import LedgerError

EXIT_ERROR = 2
EXIT_PENDING = 0  # a proposal waiting for votes is a normal outcome, not an error


def tls_dir(data_dir: Path) -> Path:
    """Where the node keeps its TLS key, CSR, certificate and the consortium CA certificate."""
    return Path(data_dir) / "tls"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


def _host_names(endpoint: str, dns: list[str], ips: list[str]) -> tuple[str, list[str], list[str]]:
    from ledger.pki import PkiError

    parts = urlsplit(endpoint)
    if parts.scheme != "https" or not parts.hostname:
        raise PkiError(f"the endpoint must be an https URL with a host, not {endpoint!r}")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
        ips = [host, *ips]
    except ValueError:
        dns = [host, *dns]
    return host, sorted(set(dns)), sorted(set(ips))


def _make_csr(data_dir: Path, endpoint: str, dns: list[str], ips: list[str]) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    from ledger.pki import load_private_key, make_csr, new_key, write_private_key

    directory = tls_dir(data_dir)
    key_path, csr_path = directory / "node.key", directory / "node.csr"
    host, dns, ips = _host_names(endpoint, dns, ips)
    if key_path.exists():
        key = load_private_key(key_path)
    else:
        key = new_key()
        write_private_key(key_path, key)
    csr = make_csr(key, host, dns, ips)
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return {"key": str(key_path), "csr": str(csr_path), "dns": dns, "ip": ips}


def _install(data_dir: Path, cert_path: Path, ca_path: Path | None) -> tuple[Any, Path]:
    """Check the certificate against the node key and the CA, then copy both into tls/."""
    import datetime as dt

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    from ledger.pki import PkiError, load_ca_cert, load_cert, load_private_key

    directory = tls_dir(data_dir)
    installed_ca = directory / "ca.crt"
    ca_file = load_ca_source(ca_path) if ca_path is not None else installed_ca
    if not ca_file.exists():
        raise PkiError("give --ca-cert: the consortium CA certificate is not installed yet")
    ca = load_ca_cert(ca_file)
    cert = load_cert(cert_path)
    key = load_private_key(directory / "node.key")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, pub) != key.public_key().public_bytes(der, pub):
        raise PkiError("the certificate is not for this node's key (tls/node.key)")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError("the certificate was not issued by the consortium CA") from None
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PkiError("the certificate is not valid now")
    if ca_file.resolve() != installed_ca.resolve():
        shutil.copyfile(ca_file, installed_ca)
    target = directory / "node.crt"
    if Path(cert_path).resolve() != target.resolve():
        shutil.copyfile(cert_path, target)
    return cert, target


def load_ca_source(path: Path) -> Path:
    """A CA given as a directory means its ca.crt."""
    from ledger.pki import CA_CERT_FILE

    return Path(path) / CA_CERT_FILE if Path(path).is_dir() else Path(path)


def ledger_dir_of(data_dir: Path, ledger_dir: Path | None) -> Path:
    """Where the member key and deployment file are: --ledger-dir, else the node's own ledger
    directory (DATA_DIR/ledger, as `node serve` reads it) once it holds a deployment, else
    DATA_DIR itself (a directory used by the `pacsmesh ledger` commands directly)."""
    from ledger.deploy import DEPLOYMENT_FILE

    if ledger_dir is not None:
        return Path(ledger_dir)
    nested = Path(data_dir) / "ledger"
    return nested if (nested / DEPLOYMENT_FILE).exists() else Path(data_dir)


def _register(ledger_dir: Path, rpc: str | None, endpoint: str, fp: bytes) -> dict[str, Any]:
    """Propose this member's new fingerprint and endpoint; report whether it took effect."""
    from ledger.chain import connect
    from ledger.consortium import ConsortiumClient, MemberStatus, ProposalKind
    from ledger.deploy import check_deployment, load_deployment
    from ledger.pki import PkiError

    deployment = load_deployment(ledger_dir)
    chain = connect(ledger_dir, rpc)
    try:
        check_deployment(chain, deployment)
        client = ConsortiumClient(chain, deployment)
        account = chain.address
        member = client.member(account)
        if member.status is not MemberStatus.ACTIVE:
            raise PkiError(
                f"account {account} is not an active member: a member must propose adding it "
                f"(`pacsmesh consortium propose add --account {account} --hospital-id ID "
                f"--endpoint {endpoint} --tls-fingerprint {fp.hex()}`)"
            )
        if member.tls_fingerprint == fp.hex() and member.endpoint == endpoint:
            return {"status": "registered", "hospital_id": member.hospital_id, "proposal": None}
        pid = client.propose(ProposalKind.UPDATE, account, member.hospital_id, endpoint, fp)
        proposal = client.proposal(pid)
        status = "registered" if proposal.status.name == "EXECUTED" else proposal.status.name
        return {
            "status": status.lower(),
            "hospital_id": member.hospital_id,
            "proposal": proposal.to_json(),
            "active_members": int(client.chain.call(client.contract.functions.activeMemberCount())),
        }
    finally:
        chain.close()


def enroll(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar="PACSMESH_DATA_DIR", help="Node data directory.")
    ],
    endpoint: Annotated[
        str, typer.Option("--endpoint", help="This node's https URL as peers reach it.")
    ],
    cert: Annotated[
        Path | None, typer.Option("--cert", help="The CA-signed certificate to install.")
    ] = None,
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="The consortium CA certificate (or its dir).")
    ] = None,
    csr_only: Annotated[
        bool,
        typer.Option("--csr-only", help="Only make the key and CSR (the default without --cert)."),
    ] = False,
    rpc: Annotated[
        str | None, typer.Option("--rpc", envvar="PACSMESH_RPC_URL", help="JSON-RPC chain URL.")
    ] = None,
    ledger_dir: Annotated[
        Path | None,
        typer.Option(
            "--ledger-dir",
            help="Member key and deployment.json (default: DATA_DIR/ledger if it has a "
            "deployment, else DATA_DIR).",
        ),
    ] = None,
    dns: Annotated[list[str] | None, typer.Option("--dns", help="Extra DNS name.")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="Extra IP address.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Make this node's TLS key and CSR, or install its certificate and register it on chain."""
    from ledger.pki import fingerprint

    try:
        if cert is None or csr_only:
            made = _make_csr(data_dir, endpoint, dns or [], ip or [])
            text = (
                f"node key {made['key']} (0600) and CSR {made['csr']} written; have the CA run "
                f"`pacsmesh consortium sign-csr {made['csr']} --ca CA_DIR --out node.crt`, then "
                "`pacsmesh node enroll --cert node.crt --ca-cert ca.crt`"
            )
            typer.echo(json.dumps(made) if as_json else text)
            return
        issued, installed = _install(data_dir, cert, ca_cert)
        fp = fingerprint(issued)
        result = _register(ledger_dir_of(data_dir, ledger_dir), rpc, endpoint, fp)
    except LedgerError as exc:
        raise _fail(str(exc)) from None
    result |= {"cert": str(installed), "fingerprint": fp.hex(), "endpoint": endpoint}
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
    elif result["status"] == "registered":
        typer.echo(f"certificate {fp.hex()} registered for {result['hospital_id']} at {endpoint}")
    else:
        proposal = result["proposal"]
        typer.echo(
            f"certificate installed; update proposal {proposal['proposal_id']} is "
            f"{result['status']} (yes={proposal['yes_votes']} of {result['active_members']} "
            f"members): members vote with `pacsmesh consortium vote {proposal['proposal_id']} "
            "--yes`"
        )
