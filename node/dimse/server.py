"""The node's DIMSE service: one pynetdicom AE on settings.host, plain and/or DICOM TLS.

`start_dimse(settings, archive)` binds every handler to its dependencies (the archive, the known
AEs, this node's title) and starts threaded, non-blocking servers: the plain listener on
`dimse_port` and the DICOM TLS listener (PS3.15 B.12, node/dimse/tls.py) on `dimse_tls_port`,
either of which 0 turns off. Both serve the same AE with the same handlers and policy; the TLS
one also checks client certificates. `DimseService.stop` shuts them down. Each association
runs in its own thread, as pynetdicom's servers do.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from node.dimse import audit as audited
from node.dimse.association import KnownAEs, handle_requested
from node.dimse.find import PATIENT_ROOT_LEVELS, STUDY_ROOT_LEVELS, handle_find
from node.dimse.retrieve import handle_get, handle_move
from node.dimse.store import handle_store
from node.dimse.tls import OutboundTls, server_context
from node.dimse.transport import LowLatencyAssociationServer, TlsAssociationServer
from node.dimse.worklist import handle_worklist
from node.services.archive import Archive
from node.services.audit import NodeAudit, audit_tls_refusal
from node.settings import NodeSettings

log = logging.getLogger("pacsmesh.dimse")

_UNCOMPRESSED: Final = [
    UID("1.2.840.10008.1.2.1"),  # Explicit VR Little Endian
    UID("1.2.840.10008.1.2"),  # Implicit VR Little Endian (PS3.5 §10.1: the default)
    UID("1.2.840.10008.1.2.1.99"),  # Deflated Explicit VR Little Endian
    UID("1.2.840.10008.1.2.2"),  # Explicit VR Big Endian (retired, still sent by old devices)
]
# PS3.8 §9.3.2.2: the acceptor picks one syntax per context; pynetdicom takes the first of its
# own list that the peer proposed. Compressed first, so that an SCU proposing a compressed syntax
# with the native ones (getscu +xv) is answered in it and gets stored objects unchanged; then
# Explicit before Implicit VR, which keeps VRs the data dictionary does not know.
_STORAGE_SYNTAXES: Final = [
    *(ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _UNCOMPRESSED),
    *_UNCOMPRESSED,
]
_QUERY_RETRIEVE: Final = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    ModalityWorklistInformationFind,
)
# Large objects arrive as many P-DATA PDUs: a larger maximum PDU means fewer of them.
MAX_PDU: Final = 1 << 20


@dataclass
class DimseService:
    """The running DIMSE listeners (plain, TLS, or both) of the node's one AE."""

    ae: AE
    server: ThreadedAssociationServer | None = None
    tls_server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int | None:
        """The plain port actually bound, None when that listener is off."""
        return None if self.server is None else int(self.server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The DICOM TLS port actually bound, None when that listener is off."""
        return None if self.tls_server is None else int(self.tls_server.server_address[1])

    def stop(self) -> None:
        """End open associations, stop accepting, release the ports."""
        self.ae.shutdown()  # every server _serve registered with it


def build_ae(settings: NodeSettings) -> AE:
    """The AE with every presentation context the node accepts."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = MAX_PDU
    ae.maximum_associations = 32
    ae.require_called_aet = True  # PS3.8 §9.3.4: reason 7, called AE title not recognized
    ae.add_supported_context(Verification, _UNCOMPRESSED[:2])
    for context in AllStoragePresentationContexts:
        # Every syntax is stored as received, compressed ones included (PS3.4 B.4.1). Both
        # roles: the peer's SCU role for C-STORE, its SCP role for C-GET sub-operations.
        assert context.abstract_syntax is not None
        ae.add_supported_context(
            context.abstract_syntax, _STORAGE_SYNTAXES, scu_role=True, scp_role=True
        )
    for sop_class in _QUERY_RETRIEVE:
        ae.add_supported_context(sop_class, _UNCOMPRESSED)
    return ae


def start_dimse(
    settings: NodeSettings, archive: Archive, audit: NodeAudit | None = None
) -> DimseService:
    """Start the DIMSE listener in background threads; returns at once.

    With `audit`, every C-STORE, C-FIND, worklist query, C-MOVE and C-GET is recorded in the
    node's audit trail before its final response (node/dimse/audit.py).
    """
    # pynetdicom logs request identifiers (patient names and IDs) at INFO: never let them through.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    known = KnownAEs(settings.remote_aes)
    outbound = OutboundTls(settings)  # loads every TLS file now: a bad one stops the start
    ae = build_ae(settings)
    title = settings.ae_title
    handlers: list[Any] = [
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_C_STORE, handle_store, [archive, known]),
        (evt.EVT_C_FIND, _route_find, [archive, title]),
        (evt.EVT_C_GET, handle_get, [archive]),
        (evt.EVT_C_MOVE, handle_move, [archive, known, outbound]),
    ]
    if audit is not None:
        handlers[1:] = [
            (evt.EVT_C_STORE, audited.store, [handle_store, [archive, known], audit]),
            (evt.EVT_C_FIND, _audited_find, [archive, title, audit]),
            (evt.EVT_C_GET, _audited_get, [archive, audit]),
            (evt.EVT_C_MOVE, _audited_move, [archive, known, outbound, audit]),
        ]
    if not settings.dimse_tls_port:
        for name, remote in settings.remote_aes.items():
            if remote.tls:
                log.warning(
                    "AE %s has tls = true but the DICOM TLS port is off: it can be a C-MOVE "
                    "destination, but cannot associate with this node",
                    name.upper(),
                )
    service = DimseService(ae)
    try:
        if settings.dimse_port:
            # start_server(block=False) with our server class: make_server is pynetdicom's hook.
            service.server = ae.make_server(
                (settings.host, settings.dimse_port),
                evt_handlers=[(evt.EVT_REQUESTED, handle_requested, [known, False]), *handlers],
                server_class=LowLatencyAssociationServer,
            )
            _serve(ae, service.server, "dimse-acceptor")
            log.info("DIMSE listening as %s on %s:%d", title, settings.host, service.port)
        if settings.dimse_tls_port:
            refused = None if audit is None else partial(_record_refusal, audit)
            service.tls_server = ae.make_server(
                (settings.host, settings.dimse_tls_port),
                ssl_context=server_context(settings),
                evt_handlers=[(evt.EVT_REQUESTED, handle_requested, [known, True]), *handlers],
                server_class=TlsAssociationServer,
                refused=refused,
            )
            _serve(ae, service.tls_server, "dimse-tls-acceptor")
            log.info("DICOM TLS listening as %s on %s:%d", title, settings.host, service.tls_port)
    except BaseException:
        service.stop()
        raise
    return service


def _serve(ae: AE, server: ThreadedAssociationServer, name: str) -> None:
    # As AE.start_server does, and make_server does not: register the server with its AE, or
    # server.shutdown() raises (it removes itself from that list) and AE.shutdown misses it.
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()


def _record_refusal(audit: NodeAudit, peer: str, reason: str, probe: bool) -> None:
    """A refused TLS handshake is a failed node authentication: audited unless a bare probe."""
    if not probe:
        audit_tls_refusal(audit, peer, reason)


def _handle_echo(_event: evt.Event) -> int:
    """EVT_C_ECHO (PS3.4 A.4): Success."""
    return 0x0000


def _route_find(event: evt.Event, archive: Archive, ae_title: str):  # type: ignore[no-untyped-def]
    """EVT_C_FIND: one event for every FIND model; the request's SOP class picks the handler."""
    sop_class = event.request.AffectedSOPClassUID
    if sop_class == ModalityWorklistInformationFind:
        yield from handle_worklist(event, archive)
    elif sop_class == PatientRootQueryRetrieveInformationModelFind:
        yield from handle_find(event, archive, ae_title, PATIENT_ROOT_LEVELS)
    else:
        yield from handle_find(event, archive, ae_title, STUDY_ROOT_LEVELS)


def _audited_find(event: evt.Event, archive: Archive, ae_title: str, audit: NodeAudit):  # type: ignore[no-untyped-def]
    """EVT_C_FIND, recorded in the audit trail before its final status."""
    service = (
        "MWL" if event.request.AffectedSOPClassUID == ModalityWorklistInformationFind else "C-FIND"
    )
    yield from audited.find(event, _route_find(event, archive, ae_title), service, audit)


def _audited_get(event: evt.Event, archive: Archive, audit: NodeAudit):  # type: ignore[no-untyped-def]
    """EVT_C_GET, recorded in the audit trail before its final response."""
    yield from audited.retrieve(event, handle_get(event, archive), "C-GET", audit)


def _audited_move(  # type: ignore[no-untyped-def]
    event: evt.Event, archive: Archive, known: KnownAEs, outbound: OutboundTls, audit: NodeAudit
):
    """EVT_C_MOVE, recorded in the audit trail before its final response."""
    moves = handle_move(event, archive, known, outbound)
    yield from audited.retrieve(event, moves, "C-MOVE", audit)
