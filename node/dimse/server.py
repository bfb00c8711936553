"""The node's DIMSE service: one pynetdicom AE on settings.host:settings.dimse_port.

`start_dimse(settings, archive)` binds every handler to its dependencies (the archive, the known
AEs, this node's title) and starts a threaded, non-blocking server; `DimseService.stop` shuts it
down. Each association runs in its own thread, as pynetdicom's servers do.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
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

from node.dimse.association import KnownAEs, handle_requested
from node.dimse.find import PATIENT_ROOT_LEVELS, STUDY_ROOT_LEVELS, handle_find
from node.dimse.retrieve import handle_get, handle_move
from node.dimse.store import handle_store
from node.dimse.transport import LowLatencyAssociationServer
from node.dimse.worklist import handle_worklist
from node.services.archive import Archive
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
    """A running DIMSE listener."""

    server: ThreadedAssociationServer
    ae: AE

    @property
    def port(self) -> int:
        """The port actually bound (settings may ask for 0 in tests of this module)."""
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop accepting, end open associations, release the port."""
        self.server.shutdown()
        self.ae.shutdown()


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


def start_dimse(settings: NodeSettings, archive: Archive) -> DimseService:
    """Start the DIMSE listener in background threads; returns at once."""
    # pynetdicom logs request identifiers (patient names and IDs) at INFO: never let them through.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    known = KnownAEs(settings.remote_aes)
    ae = build_ae(settings)
    title = settings.ae_title
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, handle_requested, [known]),
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_C_STORE, handle_store, [archive, known]),
        (evt.EVT_C_FIND, _route_find, [archive, title]),
        (evt.EVT_C_GET, handle_get, [archive]),
        (evt.EVT_C_MOVE, handle_move, [archive, known]),
    ]
    # start_server(block=False) with our server class: make_server is pynetdicom's hook for it.
    server = ae.make_server(
        (settings.host, settings.dimse_port),
        evt_handlers=handlers,
        server_class=LowLatencyAssociationServer,
    )
    thread = threading.Thread(target=server.serve_forever, name="dimse-acceptor", daemon=True)
    thread.start()
    service = DimseService(server, ae)
    log.info("DIMSE listening as %s on %s:%d", title, settings.host, service.port)
    return service


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
