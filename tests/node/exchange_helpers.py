"""A two-hospital consortium in one test process, for the cross-hospital exchange tests.

Real parts throughout: one anvil chain with the contract suite; a consortium CA that issues each
node's certificate, registered on chain as the member's fingerprint; two node apps (A owns
studies, B asks for them), each with its own data directory, served by uvicorn over HTTPS with
the mutual-TLS protocols; two more registered members that never answer (C: nothing listens on
its port; D: a socket that accepts connections and never speaks TLS). A's registered endpoint
is a TCP proxy in front of it, which the broken-transfer test tells to cut the connection.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI
from sqlalchemy import select

from ledger import keystore
from ledger.chain import Chain, connect
from ledger.consent import ConsentClient, Purpose
from ledger.deploy import Deployment, MemberInfo, deploy_suite, save_deployment
from ledger.pki import (
    CertificateAuthority,
    cert_pem,
    create_ca,
    fingerprint,
    make_csr,
    new_key,
    sign_csr,
    write_private_key,
)
from node.app import create_app
from node.fhir.patients import PATIENT_T
from node.ledger_link import LedgerLink
from node.services.archive import Archive
from node.services.patient_links import sign_link, store_link
from node.services.patients import PatientData, upsert_patient
from node.services.store import store_bytes
from node.settings import NodeSettings
from node.tls.contexts import client_context, server_context
from node.tls.uvicorn_mtls import MtlsH11Protocol
from tests.ledger.conftest import Anvil, free_port
from tests.node.authhelpers import account_token
from tests.node.consent_helpers import signed_grant
from tests.node.factories import make_ct, to_bytes
from tests.node.opshelpers import CuttingProxy

keystore.DEFAULT_SCRYPT_N = 2**10
PASSPHRASE = b"exchange test CA passphrase"
PEER_TIMEOUT = 3.0


@dataclass
class NodeCert:
    cert: Path
    key: Path
    fingerprint: bytes


def issue(ca: CertificateAuthority, directory: Path, name: str) -> NodeCert:
    """A CA-signed certificate for 127.0.0.1 (server and client use)."""
    key = new_key()
    write_private_key(directory / f"{name}.key", key)
    cert = sign_csr(ca, make_csr(key, name, [], ["127.0.0.1"]))
    (directory / f"{name}.crt").write_bytes(cert_pem(cert))
    return NodeCert(directory / f"{name}.crt", directory / f"{name}.key", fingerprint(cert))


@dataclass
class ServedNode:
    """A node app served over HTTPS (mutual TLS optional), with what tests reach into."""

    name: str
    url: str
    app: FastAPI
    archive: Archive
    settings: NodeSettings
    cert: NodeCert

    @property
    def ledger(self) -> LedgerLink:
        link: LedgerLink | None = self.app.state.ledger
        assert link is not None, self.app.state.ledger_error
        return link

    @property
    def account(self) -> str:
        return self.ledger.account.lower()

    def token(self, role: str, subject: str | None = None) -> dict[str, str]:
        issued = account_token(self.settings, subject or f"{role}-{self.name}", role, 900)
        return {"Authorization": f"Bearer {issued.access_token}"}

    def audit_events(self) -> list[Any]:
        log = self.app.state.audit.log
        return [log.event(i) for i in range(log.size())]


@dataclass
class Network:
    anvil: Anvil
    ca_cert: Path
    certs: dict[str, NodeCert]
    deployment: Deployment
    relayer: Chain
    a: ServedNode
    b: ServedNode
    proxy: CuttingProxy
    member_accounts: dict[str, str]
    closers: list[Any] = field(default_factory=list)

    @property
    def consent(self) -> ConsentClient:
        return ConsentClient(self.relayer, self.deployment)

    def user_client(self) -> httpx.Client:
        """A user's HTTPS client: trusts the consortium CA, presents no certificate."""
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca_cert)), timeout=60)

    def peer_client(self, name: str) -> httpx.Client:
        """A node's client: presents `name`'s certificate (mutual TLS)."""
        c = self.certs[name]
        return httpx.Client(verify=client_context(c.cert, c.key, self.ca_cert), timeout=60)

    def wait_synced(self) -> None:
        """Until both nodes' consent caches have seen the chain's head block."""
        head = self.relayer.block_number()
        deadline = time.monotonic() + 30
        for node in (self.a, self.b):
            while node.ledger.cache.synced_block < head:
                assert time.monotonic() < deadline, f"{node.name}'s consent cache is stuck"
                time.sleep(0.05)

    def grant(
        self,
        patient: LocalAccount,
        study_uid: str | None,
        *,
        revoke: bool = False,
        purpose: Purpose = Purpose.TREATMENT,
    ) -> str:
        """The patient grants (or revokes) B access; relayed; both caches synced."""
        signed = signed_grant(
            self.consent, patient, self.b.ledger.account, purpose, study_uid, revoke=revoke
        )
        tx = self.consent.relay(signed)
        self.wait_synced()
        return tx


@dataclass
class Patient:
    """A patient of A (two studies there, one per `studies` entry), known at B as a local
    Patient too; the same address is linked at both hospitals."""

    account: LocalAccount
    address: str
    mrn: str
    studies: dict[str, list[bytes]]  # study UID -> the Part-10 bytes stored at A
    b_patient_id: int


def make_patient(
    net: Network, tag: str, instances: tuple[int, ...] = (1, 1), size: int = 64
) -> Patient:
    """A new patient with len(instances) studies at A, linked at A and at B."""
    account: LocalAccount = Account.create()
    mrn_a, mrn_b = f"A-{tag}", f"B-{tag}"
    studies: dict[str, list[bytes]] = {}
    for s, count in enumerate(instances):
        first = make_ct(patient_id=mrn_a, patient_name=f"Doe^{tag}", size=size, seed=s)
        series_uid = first.SeriesInstanceUID
        blobs = []
        for i in range(count):
            ds = make_ct(
                study_uid=first.StudyInstanceUID,
                series_uid=series_uid,
                patient_id=mrn_a,
                patient_name=f"Doe^{tag}",
                size=size,
                seed=100 * s + i,
            )
            ds.InstanceNumber = i + 1
            data = to_bytes(ds)
            store_bytes(net.a.archive, data)
            blobs.append(data)
        studies[first.StudyInstanceUID] = blobs
    store_link(
        net.a.archive.engine, sign_link(account, "hospital-a", mrn_a, "HOSP-A"), mrn_a, "HOSP-A"
    )
    with net.b.archive.engine.begin() as conn:
        upsert_patient(conn, PatientData(mrn_b, "HOSP-B", f"Doe^{tag}"))
    store_link(
        net.b.archive.engine, sign_link(account, "hospital-b", mrn_b, "HOSP-B"), mrn_b, "HOSP-B"
    )
    with net.b.archive.engine.connect() as conn:
        key: int = conn.execute(
            select(PATIENT_T.c.patient_key).where(PATIENT_T.c.mrn == mrn_b)
        ).scalar_one()
    return Patient(account, account.address.lower(), mrn_a, studies, int(key))


@contextmanager
def serve_node(
    name: str, data_dir: Path, port: int, cert: NodeCert, ca_cert: Path, anvil: Anvil
) -> Iterator[ServedNode]:
    """Run a node app over HTTPS on a loopback port, connected to the anvil chain."""
    settings = NodeSettings(
        data_dir=data_dir,
        host="127.0.0.1",
        port=port,
        tls_cert=cert.cert,
        tls_key=cert.key,
        tls_ca_cert=ca_cert,
        ledger_rpc=anvil.url,
        fsync=False,
        dimse_port=0,
        hl7_port=0,
        ae_title=f"NODE{name.upper()}",
        ledger_consent_refresh_seconds=0.2,
        network_peer_timeout_seconds=PEER_TIMEOUT,
        network_transfer_timeout_seconds=30,
    )
    archive = Archive.open(settings)
    app = create_app(settings, archive)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=MtlsH11Protocol,
        log_level="warning",
        lifespan="on",
        ssl_context_factory=lambda _cfg, _default: server_context(
            cert.cert, cert.key, ca_cert, require_client_cert=False
        ),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    try:
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, f"node {name} did not start"
            time.sleep(0.05)
        assert app.state.ledger is not None, app.state.ledger_error
        yield ServedNode(name, f"https://127.0.0.1:{port}", app, archive, settings, cert)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        archive.close()


@contextmanager
def two_hospitals(tmp: Path, anvil: Anvil) -> Iterator[Network]:
    """Hospitals A and B serving, C down, D silent; all four registered members."""
    ca = create_ca(tmp / "ca", PASSPHRASE)
    certs = {n: issue(ca, tmp, n) for n in ("a", "b", "c", "d", "stranger")}
    other_ca = create_ca(tmp / "other-ca", PASSPHRASE)
    certs["forged"] = issue(other_ca, tmp, "forged")
    ledger_dirs = {n: tmp / n / "ledger" for n in ("a", "b")}
    accounts = {n: keystore.ensure_node_account(d) for n, d in ledger_dirs.items()}
    accounts["c"] = Account.create()
    accounts["d"] = Account.create()
    for account in accounts.values():
        anvil.fund(account.address)
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers the handshake
    proxy = CuttingProxy(port_a)
    endpoints = {
        "a": f"https://127.0.0.1:{proxy.port}",
        "b": f"https://127.0.0.1:{port_b}",
        "c": f"https://127.0.0.1:{port_c}",
        "d": f"https://127.0.0.1:{silent.getsockname()[1]}",
    }
    # C's account deploys and relays patients' signed consents (relaying needs a member);
    # C's node itself never runs.
    relayer = connect(tmp / "relayer", anvil.url, account=accounts["c"])
    members = [
        MemberInfo(f"hospital-{n}", accounts[n].address, endpoints[n], certs[n].fingerprint)
        for n in ("a", "b", "c", "d")
    ]
    deployment = deploy_suite(relayer, members, 3600)
    for d in ledger_dirs.values():
        save_deployment(d, deployment)
    try:
        with (
            serve_node("a", tmp / "a", port_a, certs["a"], tmp / "ca" / "ca.crt", anvil) as a,
            serve_node("b", tmp / "b", port_b, certs["b"], tmp / "ca" / "ca.crt", anvil) as b,
        ):
            yield Network(
                anvil,
                tmp / "ca" / "ca.crt",
                certs,
                deployment,
                relayer,
                a,
                b,
                proxy,
                {n: acc.address.lower() for n, acc in accounts.items()},
            )
    finally:
        proxy.close()
        silent.close()
        relayer.close()
