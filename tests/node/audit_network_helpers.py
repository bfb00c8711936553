"""A small consortium for the cross-node audit tests: member nodes over HTTPS on one anvil chain.

Each node is the real app (auth on, audit log, ledger link, anchoring worker) served by uvicorn
over TLS with a certificate from a consortium CA, registered on chain with its real URL as its
endpoint. Transfer audit events are written through each node's NodeAudit exactly as the
shared vocabulary says (docs/security-audit.md, "Transfers").
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from typer.testing import CliRunner

from ledger import audit_transfers as transfers
from ledger import keystore
from ledger.anchor import AnchorWorker, AuditAnchorClient
from ledger.audit_cli import audit_app
from ledger.audit_events import (
    Agent,
    AuditEvent,
    Outcome,
    ParticipantRole,
    Purpose,
)
from ledger.pki import cert_pem, create_ca, make_csr, new_key, sign_csr, write_private_key
from node.app import create_app
from node.ledger_link import LedgerLink
from node.services.archive import Archive
from node.services.audit import NodeAudit
from node.settings import NodeSettings
from tests.node.authhelpers import account_token

keystore.DEFAULT_SCRYPT_N = 2**10  # fast key files in tests only
CA_PASSPHRASE = b"correct horse battery staple"


@dataclass(frozen=True)
class Tls:
    """The consortium CA and one server certificate for 127.0.0.1 that every node serves."""

    ca_cert: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> Tls:
    """A consortium CA and a loopback server certificate it signed."""
    ca = create_ca(directory / "ca", CA_PASSPHRASE)
    key = new_key()
    write_private_key(directory / "node.key", key)
    cert = sign_csr(ca, make_csr(key, "node", [], ["127.0.0.1"]))
    (directory / "node.crt").write_bytes(cert_pem(cert))
    return Tls(directory / "ca" / "ca.crt", directory / "node.crt", directory / "node.key")


@dataclass
class MemberNode:
    """A running member node."""

    hospital_id: str
    url: str
    settings: NodeSettings
    app: FastAPI

    @property
    def audit(self) -> NodeAudit:
        audit: NodeAudit = self.app.state.audit
        return audit

    @property
    def link(self) -> LedgerLink:
        link: LedgerLink | None = self.app.state.ledger
        assert link is not None, self.app.state.ledger_error
        return link

    @property
    def account(self) -> str:
        return self.link.account.lower()

    def auditor_token(self) -> str:
        """A token this node signs for a local auditor."""
        return account_token(self.settings, "auditor-1", "auditor", 3600).access_token

    def record(self, event: AuditEvent) -> int:
        """Record an event in the node's audit log; its leaf index."""
        return self.audit.record(event)

    def anchor(self) -> None:
        """Anchor the node's log on chain now, as its background worker would."""
        client = AuditAnchorClient(self.link.chain, self.link.deployment)
        worker = AnchorWorker(self.audit.log, client, every_events=1, every_seconds=3600.0)
        assert worker.run_once(force=True) is not None, worker.last_error

    @property
    def audit_db(self) -> Path:
        return self.settings.data_dir / "audit.sqlite"


@contextmanager
def serve_member_node(
    hospital_id: str, data_dir: Path, ledger_dir: Path, port: int, rpc: str, tls: Tls
) -> Iterator[MemberNode]:
    """Run a node with bearer tokens on, over HTTPS, linked to the chain, on this port."""
    settings = NodeSettings(
        data_dir=data_dir,
        port=port,
        fsync=False,
        dimse_port=0,
        hl7_port=0,
        tls_cert=tls.cert,
        tls_key=tls.key,
        ledger_data_dir=ledger_dir,
        ledger_rpc=rpc,
        # The test anchors when it wants to (MemberNode.anchor); the worker stays idle.
        audit_anchor_every_events=10**9,
        audit_anchor_every_seconds=10.0**6,
    )
    archive = Archive.open(settings)
    app = create_app(settings, archive)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            ssl_certfile=str(tls.cert),
            ssl_keyfile=str(tls.key),
            log_level="warning",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    try:
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "node did not start"
            time.sleep(0.05)
        yield MemberNode(hospital_id, f"https://127.0.0.1:{port}", settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        archive.close()


def new_transfer_id() -> str:
    return uuid.uuid4().hex


def owner_event(
    owner: MemberNode,
    requester: MemberNode,
    transfer_id: str,
    patient: str,
    study_uid: str,
    consent: str | None,
    outcome: Outcome = Outcome.SUCCESS,
) -> AuditEvent:
    """The owner's event of one transfer (it streamed the study out; or, without a consent,
    refused it), as the exchange writes it."""
    return transfers.owner_event(
        source=owner.audit.source, owner=owner.account, requester=requester.account,
        requester_host="127.0.0.1", patient=patient, study_uid=study_uid,
        transfer_id=transfer_id, consent=consent, purpose=Purpose.TREATMENT, outcome=outcome,
    )  # fmt: skip


def requester_event(
    requester: MemberNode,
    owner: MemberNode,
    transfer_id: str,
    patient: str,
    study_uid: str,
    consent: str,
    outcome: Outcome = Outcome.SUCCESS,
) -> AuditEvent:
    """The requester's event of one transfer (it received and stored the study)."""
    user = Agent(
        who="user:dr-house",
        role=ParticipantRole.CLINICIAN,
        requestor=True,
        network_address="127.0.0.1",
    )
    return transfers.requester_event(
        source=requester.audit.source, user=user, owner=owner.account,
        requester=requester.account, patient=patient, study_uid=study_uid,
        transfer_id=transfer_id, consent=consent, purpose=Purpose.TREATMENT, outcome=outcome,
    )  # fmt: skip


_runner = CliRunner()


def run_verify(*args: str) -> tuple[int, str]:
    """`pacsmesh audit verify …`: its exit code and what it printed."""
    result = _runner.invoke(audit_app, ["verify", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout


def findings(report: dict[str, Any]) -> list[tuple[str, str, list[int], str | None]]:
    """(kind, node, entries, transfer id) of each finding."""
    return [(f["kind"], f["node"], f["entries"], f.get("transfer_id")) for f in report["findings"]]


@contextmanager
def tampered(db: Path, *statements: tuple[str, tuple[Any, ...]]) -> Iterator[None]:
    """Run SQL against a node's audit database (as an attacker with file access), then undo it."""
    with sqlite3.connect(db) as conn:
        saved = conn.execute("SELECT leaf_index, body FROM audit_entries").fetchall()
        for sql, params in statements:
            conn.execute(sql, params)
    try:
        yield
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM audit_entries WHERE leaf_index < ?", (len(saved),))
            conn.executemany("INSERT INTO audit_entries (leaf_index, body) VALUES (?, ?)", saved)
