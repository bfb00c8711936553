"""DICOM TLS (PS3.15 B.12): DCMTK and pynetdicom clients against the node's TLS listener.

One node serves plain DIMSE and DICOM TLS; certificates come from a hospital CA made with the
project's PKI helpers, plus a rogue CA nobody configured. Clients with a CA-issued certificate
echo, store, find and move; everyone else is refused during the handshake, and every refusal
that was a TLS attempt is in the audit trail.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)
from typer.testing import CliRunner

from ledger import pki
from ledger.audit_events import uid_hash
from node.cli import app as cli_app
from node.dimse.server import start_dimse
from node.services.archive import Archive
from node.settings import NodeSettings, RemoteAE
from tests.node.audit_helpers import audit_search, leaf_event, verify_proof
from tests.node.conftest import NO_AUTH_ENV, RunningNode, free_port, start_node
from tests.node.dimse_helpers import ARCHIVE_AE, MODALITY_AE, NODE_AE, WORKSTATION_AE, dcmtk
from tests.node.factories import make_ct

TLS_WS_AE = "TLSWS"  # a workstation with tls = true: reached over TLS, refused on the plain port
ROGUE_WS_AE = "ROGUEWS"  # tls = true, but its storage SCP shows a certificate from another CA
PASSPHRASE = b"correct horse battery staple"


@dataclass
class Identity:
    cert: Path
    key: Path


@dataclass
class Pki:
    ca: Path
    node: Identity
    modality: Identity
    rogue: Identity  # issued by a CA the node does not trust


def _issue(ca: pki.CertificateAuthority, out: Path, name: str) -> Identity:
    key = pki.new_key()
    csr = pki.make_csr(key, name, [], ["127.0.0.1"])
    cert = pki.sign_csr(ca, csr)
    identity = Identity(out / f"{name}.crt", out / f"{name}.key")
    identity.cert.write_bytes(pki.cert_pem(cert))
    pki.write_private_key(identity.key, key)
    return identity


def make_pki(out: Path) -> Pki:
    """A hospital CA issuing the node's and a modality's certificates; a rogue CA issuing one."""
    hospital = pki.create_ca(out / "hospital-ca", PASSPHRASE, name="hospital imaging CA")
    rogue = pki.create_ca(out / "rogue-ca", PASSPHRASE, name="rogue CA")
    return Pki(
        ca=out / "hospital-ca" / pki.CA_CERT_FILE,
        node=_issue(hospital, out, "node"),
        modality=_issue(hospital, out, "modality"),
        rogue=_issue(rogue, out, "rogue"),
    )


@dataclass
class StorageScp:
    """A pynetdicom storage SCP speaking DICOM TLS: what a TLS C-MOVE destination is."""

    ae: AE
    port: int
    received: list[str] = field(default_factory=list)
    client_certs: list[bytes] = field(default_factory=list)

    def stop(self) -> None:
        self.ae.shutdown()


def start_storage_scp(port: int, identity: Identity, ca: Path) -> StorageScp:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(identity.cert), str(identity.key))
    ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED  # the node must show its certificate too
    ae = AE(ae_title="STORESCP")
    ae.supported_contexts = StoragePresentationContexts
    scp = StorageScp(ae, port)
    lock = threading.Lock()

    def on_store(event: evt.Event) -> int:
        transport = event.assoc.dul.socket
        sock = transport.socket if transport is not None else None
        with lock:
            scp.received.append(str(getattr(event.request, "AffectedSOPInstanceUID", "")))
            if isinstance(sock, ssl.SSLSocket):
                scp.client_certs.append(sock.getpeercert(binary_form=True) or b"")
        return 0x0000

    ae.start_server(
        ("127.0.0.1", port),
        block=False,
        ssl_context=ctx,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    return scp


@dataclass
class TlsNode:
    node: RunningNode
    dimse_port: int
    tls_port: int
    pki: Pki
    scp: StorageScp
    rogue_scp: StorageScp
    tmp: Path


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    tmp = tmp_path_factory.mktemp("dimse-tls")
    certs = make_pki(tmp / "pki")
    scp = start_storage_scp(free_port(), certs.modality, certs.ca)
    rogue_scp = start_storage_scp(free_port(), certs.rogue, certs.ca)
    dimse_port, tls_port = free_port(), free_port()
    env: dict[str, str] = {"NODE_FSYNC": "false"}
    for title, role, port, tls in (
        (MODALITY_AE, "modality", free_port(), False),
        (WORKSTATION_AE, "workstation", free_port(), False),
        (ARCHIVE_AE, "archive", free_port(), False),
        (TLS_WS_AE, "workstation", scp.port, True),
        (ROGUE_WS_AE, "workstation", rogue_scp.port, True),
    ):
        env[f"NODE_REMOTE_AES__{title}__HOST"] = "127.0.0.1"
        env[f"NODE_REMOTE_AES__{title}__PORT"] = str(port)
        env[f"NODE_REMOTE_AES__{title}__ROLE"] = role
        env[f"NODE_REMOTE_AES__{title}__TLS"] = str(tls).lower()
    args = [
        "--dimse-port", str(dimse_port),
        "--dimse-tls-port", str(tls_port),
        "--dimse-tls-cert", str(certs.node.cert),
        "--dimse-tls-key", str(certs.node.key),
        "--dimse-tls-ca-cert", str(certs.ca),
    ]  # fmt: skip
    node = start_node(tmp / "node", None, env=env, args=args)
    yield TlsNode(node, dimse_port, tls_port, certs, scp, rogue_scp, tmp)
    node.stop()
    scp.stop()
    rogue_scp.stop()
    # Both listeners shut down without cutting the rest of the shutdown short (the audit log
    # and the archive are closed after them).
    assert node.process.returncode in (0, -15), node.log()  # uvicorn re-raises its SIGTERM
    assert "Traceback" not in node.log() and "shutdown failed" not in node.log(), node.log()


def tls_args(who: Identity | None, ca: Path) -> list[str]:
    """DCMTK's TLS options: a client certificate (or none: anonymous TLS), trusting `ca`."""
    if who is None:
        return ["+tla", "+cf", str(ca)]
    return ["+tls", str(who.key), str(who.cert), "+cf", str(ca)]


def echo(calling: str, port: int, *tls: str) -> subprocess.CompletedProcess[str]:
    return dcmtk("echoscu", *tls, "-aet", calling, "-aec", NODE_AE, "127.0.0.1", str(port))


def store(node: TlsNode, calling: str, ds: Dataset, *tls: str) -> subprocess.CompletedProcess[str]:
    path = node.tmp / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dcmtk(
        "storescu", *tls, "-aet", calling, "-aec", NODE_AE, "127.0.0.1", str(node.tls_port),
        str(path),
    )  # fmt: skip


def study_count(node: TlsNode, study_uid: str) -> int:
    r = httpx.get(
        f"{node.node.dicomweb}/studies", params={"StudyInstanceUID": study_uid}, timeout=30
    )
    assert r.status_code in (200, 204), r.text
    return 0 if r.status_code == 204 else len(r.json())


def dimse_events(node: TlsNode, calling: str) -> list[dict[str, Any]]:
    events = [leaf_event(e) for e in audit_search(node.node.url, "agent-role=110153")]
    return [e for e in events if e["agents"][0]["who"] == f"ae:{calling}"]


def test_echo_store_and_find_over_tls_with_a_ca_issued_certificate(tls_node: TlsNode) -> None:
    mine = tls_args(tls_node.pki.modality, tls_node.pki.ca)
    ok = echo(MODALITY_AE, tls_node.tls_port, *mine)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Received Echo Response (Success)" in ok.stdout + ok.stderr

    ds = make_ct(patient_id="TLS-PAT-1", seed=11)
    stored = store(tls_node, ARCHIVE_AE, ds, *mine)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert "Received Store Response (Success)" in stored.stdout + stored.stderr
    assert study_count(tls_node, ds.StudyInstanceUID) == 1

    out = tls_node.tmp / "found"
    out.mkdir()
    found = dcmtk(
        "findscu", *mine, "-S", "-X", "-od", str(out), "-aet", WORKSTATION_AE, "-aec", NODE_AE,
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=TLS-PAT-1", "-k", "StudyInstanceUID",
        "127.0.0.1", str(tls_node.tls_port),
    )  # fmt: skip
    assert found.returncode == 0, found.stdout + found.stderr
    responses = list(out.glob("rsp*.dcm"))
    assert len(responses) == 1, found.stdout + found.stderr

    # The TLS path is audited like the plain one: the store, named by its AE and address.
    (event,) = [e for e in dimse_events(tls_node, ARCHIVE_AE) if e["event_type"] == "110104"]
    assert event["action"] == "C" and event["outcome"] == 0
    assert {e["ref"] for e in event["entities"] if e["kind"] == "study"} == {
        uid_hash(ds.StudyInstanceUID)
    }
    assert event["agents"][0]["network_address"] == "127.0.0.1"
    assert "TLS-PAT-1" not in tls_node.node.log()


def test_tls_port_refuses_clients_without_a_trusted_certificate(tls_node: TlsNode) -> None:
    ca, port = tls_node.pki.ca, tls_node.tls_port
    refused = {
        "no-client-certificate": echo(MODALITY_AE, port, *tls_args(None, ca)),
        "certificate-not-trusted": echo(MODALITY_AE, port, *tls_args(tls_node.pki.rogue, ca)),
        "not-tls": echo(MODALITY_AE, port),  # plain DICOM on the TLS port
    }
    for reason, result in refused.items():
        assert result.returncode != 0, (reason, result.stdout + result.stderr)
        assert "Received Echo Response" not in result.stdout + result.stderr, reason

    # Nothing a refused client sends is stored.
    ds = make_ct(patient_id="TLS-PAT-2", seed=12)
    sent = store(tls_node, ARCHIVE_AE, ds, *tls_args(tls_node.pki.rogue, ca))
    assert sent.returncode != 0
    assert study_count(tls_node, ds.StudyInstanceUID) == 0

    # Each refusal is a Security Alert (node authentication failed), with its reason and the
    # peer's address, proven in the audit log.
    alerts = audit_search(tls_node.node.url, "type=110113")
    reasons: dict[str, int] = {}
    for resource in alerts:
        verify_proof(resource)
        event = leaf_event(resource)
        assert event["agents"][0]["who"] == "anonymous"
        assert event["agents"][0]["network_address"] == "127.0.0.1"
        assert event["outcome"] == 4
        for entity in event["entities"]:
            reasons[entity["ref"]] = reasons.get(entity["ref"], 0) + 1
    assert reasons["dicom-tls:no-client-certificate"] >= 1
    assert reasons["dicom-tls:certificate-not-trusted"] >= 2  # the echo and the store
    assert reasons["dicom-tls:not-tls"] >= 1


def _handshake(node: TlsNode, configure: Any) -> tuple[str | None, str]:
    """(TLS version, cipher) a client configured by `configure(ctx)` gets, or (None, error)."""
    ctx = ssl.create_default_context(cafile=str(node.pki.ca))
    ctx.load_cert_chain(str(node.pki.modality.cert), str(node.pki.modality.key))
    configure(ctx)
    try:
        with (
            socket.create_connection(("127.0.0.1", node.tls_port)) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            cipher = tls.cipher()
            return tls.version(), cipher[0] if cipher else ""
    except ssl.SSLError as exc:
        return None, str(exc.reason)


def test_tls_profile_is_bcp_195(tls_node: TlsNode) -> None:
    # PS3.15 B.12: TLS 1.3 preferred when offered, TLS 1.2 supported, nothing older.
    assert _handshake(tls_node, lambda ctx: None)[0] == "TLSv1.3"

    def tls12(ctx: ssl.SSLContext) -> None:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    version, cipher = _handshake(tls_node, tls12)
    assert version == "TLSv1.2" and "GCM" in cipher and cipher.startswith("ECDHE"), cipher

    def tls11(ctx: ssl.SSLContext) -> None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")

    assert _handshake(tls_node, tls11)[0] is None

    def cbc_only(ctx: ssl.SSLContext) -> None:
        tls12(ctx)
        ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")

    assert _handshake(tls_node, cbc_only)[0] is None  # RFC 9325: AEAD suites only


def test_a_silent_connection_does_not_hold_up_the_tls_port(tls_node: TlsNode) -> None:
    # A client that connects and never starts its handshake (a stalled device, a slowloris)
    # waits in its own thread; everyone else is still served meanwhile.
    with socket.create_connection(("127.0.0.1", tls_node.tls_port)) as silent:
        ok = echo(MODALITY_AE, tls_node.tls_port, *tls_args(tls_node.pki.modality, tls_node.pki.ca))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert silent.fileno() != -1


def test_ae_allow_list_still_applies_over_tls(tls_node: TlsNode) -> None:
    mine = tls_args(tls_node.pki.modality, tls_node.pki.ca)
    # A trusted certificate does not make an unknown AE title known.
    stranger = echo("STRANGER", tls_node.tls_port, *mine)
    out = stranger.stdout + stranger.stderr
    assert stranger.returncode != 0
    assert "Association Rejected" in out and "Calling AE Title Not Recognized" in out, out

    # An AE configured with tls = true associates over TLS only: its title is refused in the
    # clear, so nobody can borrow it without its certificate.
    plain = echo(TLS_WS_AE, tls_node.dimse_port)
    assert "Calling AE Title Not Recognized" in plain.stdout + plain.stderr
    over_tls = echo(TLS_WS_AE, tls_node.tls_port, *mine)
    assert over_tls.returncode == 0, over_tls.stdout + over_tls.stderr

    # The plain port still serves the AEs that are not marked tls.
    legacy = echo(MODALITY_AE, tls_node.dimse_port)
    assert legacy.returncode == 0, legacy.stdout + legacy.stderr


def _move(tls_node: TlsNode, destination: str, study_uid: str) -> list[int]:
    """C-MOVE over DICOM TLS from pynetdicom (DCMTK's movescu has no TLS); the statuses."""
    ctx = ssl.create_default_context(cafile=str(tls_node.pki.ca))
    ctx.load_cert_chain(str(tls_node.pki.modality.cert), str(tls_node.pki.modality.key))
    ae = AE(ae_title=TLS_WS_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(
        "127.0.0.1", tls_node.tls_port, ae_title=NODE_AE, tls_args=(ctx, "127.0.0.1")
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    statuses = []
    # The association is released only once the node has finished the C-MOVE, its audit
    # event included (both run in the association's thread).
    try:
        for status, _ in assoc.send_c_move(
            identifier, destination, StudyRootQueryRetrieveInformationModelMove
        ):
            if status is not None and "Status" in status:
                statuses.append(int(status.Status))
    finally:
        assoc.release()
    return statuses


def test_c_move_to_a_tls_destination(tls_node: TlsNode) -> None:
    mine = tls_args(tls_node.pki.modality, tls_node.pki.ca)
    ds = make_ct(patient_id="TLS-PAT-3", seed=13)
    assert store(tls_node, ARCHIVE_AE, ds, *mine).returncode == 0

    statuses = _move(tls_node, TLS_WS_AE, ds.StudyInstanceUID)
    assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
    assert tls_node.scp.received == [ds.SOPInstanceUID]
    # A study the node does not hold: success, nothing sent (and still audited below).
    assert _move(tls_node, TLS_WS_AE, "1.2.826.0.1.3680043.8.498.1")[-1] == 0x0000
    assert tls_node.scp.received == [ds.SOPInstanceUID]
    # The node showed its own certificate to the destination.
    node_der = ssl.PEM_cert_to_DER_cert(tls_node.pki.node.cert.read_text())
    assert tls_node.scp.client_certs == [node_der]

    # A destination whose certificate the hospital CA did not issue gets nothing: A801.
    statuses = _move(tls_node, ROGUE_WS_AE, ds.StudyInstanceUID)
    assert statuses[-1] == 0xA801, [hex(s) for s in statuses]
    assert tls_node.rogue_scp.received == []
    # The operator is told which destination failed, and that TLS is where to look.
    assert f"could not associate with destination {ROGUE_WS_AE}" in tls_node.node.log()

    moves = [e for e in dimse_events(tls_node, TLS_WS_AE) if e["action"] == "R"]
    assert sorted(e["outcome"] for e in moves) == [0, 0, 8], moves
    assert "TLS-PAT-3" not in tls_node.node.log()


def test_optional_client_certificates_admit_anonymous_tls_only(
    tls_node: TlsNode, tmp_path: Path
) -> None:
    certs = tls_node.pki
    settings = NodeSettings(
        data_dir=tmp_path / "node",
        dimse_port=0,  # TLS only
        dimse_tls_port=free_port(),
        dimse_tls_cert=certs.node.cert,
        dimse_tls_key=certs.node.key,
        dimse_tls_ca_cert=certs.ca,
        dimse_tls_client_cert="optional",
        remote_aes={MODALITY_AE: RemoteAE(host="127.0.0.1", port=104, role="modality")},
    )
    archive = Archive.open(settings)
    service = start_dimse(settings, archive)
    try:
        assert service.port is None and service.tls_port == settings.dimse_tls_port
        anonymous = echo(MODALITY_AE, settings.dimse_tls_port, *tls_args(None, certs.ca))
        assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
        # A certificate that is shown must still be the hospital CA's.
        rogue = echo(MODALITY_AE, settings.dimse_tls_port, *tls_args(certs.rogue, certs.ca))
        assert rogue.returncode != 0
        assert "Received Echo Response" not in rogue.stdout + rogue.stderr
    finally:
        service.stop()
        archive.close()


def _serve(tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`pacsmesh node serve` in-process: these configurations fail before anything listens."""
    argv = ["node", "serve", "--data-dir", str(tmp / "d"), "--port", str(free_port())]
    environment = {**NO_AUTH_ENV, **(env or {})}
    result = CliRunner().invoke(cli_app, [*argv, "--hl7-port", "0", *args], env=environment)
    return result.exit_code, result.output


def test_serve_refuses_an_incomplete_or_unreadable_tls_configuration(
    tls_node: TlsNode, tmp_path: Path
) -> None:
    certs = tls_node.pki
    port = str(free_port())
    identity = ["--dimse-tls-cert", str(certs.node.cert), "--dimse-tls-key", str(certs.node.key)]
    code, out = _serve(tmp_path, "--dimse-tls-port", port, *identity)
    assert code == 2 and "dimse_tls_port needs dimse_tls_ca_cert" in out, out

    missing = tmp_path / "nowhere" / "ca.crt"
    code, out = _serve(
        tmp_path, "--dimse-tls-port", port, *identity, "--dimse-tls-ca-cert", str(missing)
    )
    assert code == 2 and f"cannot read CA file {missing}" in out, out

    code, out = _serve(
        tmp_path, "--dimse-tls-port", port, "--dimse-tls-cert", str(certs.node.cert),
        "--dimse-tls-key", str(certs.modality.key), "--dimse-tls-ca-cert", str(certs.ca),
    )  # fmt: skip
    assert code == 2 and "not a PEM certificate and its private key" in out, out

    code, out = _serve(
        tmp_path, "--dimse-port", port, "--dimse-tls-port", port, *identity,
        "--dimse-tls-ca-cert", str(certs.ca),
    )  # fmt: skip
    assert code == 2 and "dimse_tls_port must differ" in out, out

    # A remote AE marked tls needs a CA to check it against, and the node an identity.
    code, out = _serve(
        tmp_path, "--dimse-port", port,
        env={"NODE_REMOTE_AES__PACS2__HOST": "10.0.0.9", "NODE_REMOTE_AES__PACS2__PORT": "2762",
             "NODE_REMOTE_AES__PACS2__TLS": "true"},
    )  # fmt: skip
    assert code == 2 and "remote AE PACS2 has tls = true" in out, out
