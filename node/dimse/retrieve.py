"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3): send stored instances as C-STORE sub-operations.

What to send is found by the archive's query service (a DICOM retrieve identifier is a list of
unique keys, PS3.4 C.4.2.2.1); the bytes come from the retrieve service and are sent as stored,
in their stored transfer syntax. C-MOVE destinations must be known AEs (settings.remote_aes);
one configured with `tls = true` is reached over DICOM TLS, its certificate verified.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any, Final

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context

from node.dimse import identifiers
from node.dimse.association import KnownAEs, normalise_title
from node.dimse.status import failure
from node.dimse.tls import OutboundTls
from node.errors import InvalidRequestError, NodeError, NotAcceptableError
from node.services import retrieve
from node.services.archive import Archive
from node.services.query import QueryLevel, parse_query, search
from node.services.syntaxes import TRANSCODE_TARGETS
from node.services.transcode import transcode
from node.storage import records
from node.storage.records import InstanceRow

log = logging.getLogger("pacsmesh.dimse")

PENDING: Final = 0xFF00
IDENTIFIER_DOES_NOT_MATCH: Final = 0xA900
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
UNABLE_TO_PROCESS: Final = 0xC000
# A sub-operation whose instance could not be read: pynetdicom counts a pending result that is
# not a dataset as a failed sub-operation (and goes on with the others).
_UNREADABLE: Final = "unreadable"
# PS3.8 §9.3.2.2: presentation context IDs are odd numbers 1-255.
_MAX_CONTEXTS: Final = 128
_LITTLE_ENDIAN_NATIVE: Final = frozenset({str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)})

# The unique keys of each level (PS3.4 C.4.2.2.1); the keys of the levels above narrow them.
_UNIQUE_KEYS: Final = {
    "PATIENT": ("PatientID",),
    "STUDY": ("PatientID", "StudyInstanceUID"),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
_OWN_KEY: Final = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


def instances_to_send(archive: Archive, identifier: Dataset) -> list[InstanceRow]:
    """The stored instances a retrieve identifier names. Raises NodeError if it names none."""
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in _UNIQUE_KEYS:
        raise InvalidRequestError("QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE")
    params = [("SOPInstanceUID", "")]
    for keyword in _UNIQUE_KEYS[level]:
        value = identifiers.text_value(identifier[keyword]) if keyword in identifier else ""
        if value and ("*" in value or "?" in value):
            raise InvalidRequestError(f"{keyword} must not hold wildcards in a retrieve")
        if value:
            params.append((keyword, value))
    if not any(k == _OWN_KEY[level] for k, _ in params):
        raise InvalidRequestError(f"a {level} retrieve needs {_OWN_KEY[level]}")
    query = parse_query(QueryLevel.INSTANCE, params)
    with archive.engine.connect() as conn:
        results = search(conn, query, base_url="", load_metadata=lambda _uids: {})
        sop_uids = [r["00080018"]["Value"][0] for r in results]
        return records.find_instances(conn, sop_uids)


def _as_sent(ds: Dataset, accepted: dict[str, set[str]] | None) -> Dataset:
    """The dataset in a transfer syntax the peer accepted for its SOP class.

    As stored when the peer accepted that syntax (pynetdicom itself moves between the native
    little-endian syntaxes); otherwise transcoded to an accepted syntax the node can produce.
    `accepted` None: the accepted contexts are not known; the dataset goes as stored.
    """
    if accepted is None:
        return ds
    stored = str(ds.file_meta.TransferSyntaxUID)
    offered = accepted.get(str(ds.SOPClassUID), set())
    if stored in offered or (stored in _LITTLE_ENDIAN_NATIVE and offered & _LITTLE_ENDIAN_NATIVE):
        return ds
    for target in sorted(offered & TRANSCODE_TARGETS):
        return pydicom.dcmread(io.BytesIO(transcode(ds, target)))
    raise NotAcceptableError("no accepted transfer syntax for this instance")


def _datasets(
    archive: Archive, rows: list[InstanceRow], accepted: dict[str, set[str]] | None = None
) -> Iterator[tuple[int, Any]]:
    for row in rows:
        try:
            # Unaccessed elements stay raw in pydicom, so the C-STORE carries the stored bytes.
            ds: Dataset = pydicom.dcmread(io.BytesIO(retrieve.read_instance(archive, row)))
            ds = _as_sent(ds, accepted)
        except Exception as exc:
            log.error("retrieve: an instance could not be sent (%s)", type(exc).__name__)
            yield PENDING, _UNREADABLE
            continue
        yield PENDING, ds


def _accepted_storage(event: Event) -> dict[str, set[str]]:
    """SOP class -> transfer syntaxes the C-GET requestor accepts C-STOREs in (its SCP role)."""
    accepted: dict[str, set[str]] = {}
    for cx in event.assoc.accepted_contexts:
        if cx.as_scu and cx.abstract_syntax is not None:
            accepted.setdefault(str(cx.abstract_syntax), set()).update(
                str(ts) for ts in cx.transfer_syntax
            )
    return accepted


def storage_contexts(rows: list[InstanceRow]) -> list[PresentationContext]:
    """Presentation contexts to propose to a C-MOVE destination for these instances.

    Per SOP class: the stored syntaxes, and a separate native one (Explicit, Implicit VR Little
    Endian) so that a destination refusing a compressed syntax still gets a transcoded copy.
    """
    syntaxes: dict[str, set[str]] = {}
    for row in rows:
        syntaxes.setdefault(row.sop_class_uid, set()).add(row.transfer_syntax_uid)
    contexts = []
    native: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    for sop_class, stored in sorted(syntaxes.items()):
        compressed = sorted(stored - _LITTLE_ENDIAN_NATIVE)
        if compressed:
            contexts.append(build_context(sop_class, compressed))
        contexts.append(build_context(sop_class, native))
    return contexts[:_MAX_CONTEXTS]


def _move_association_contexts(event: Event, host: str, port: int) -> dict[str, set[str]] | None:
    """What the C-MOVE destination accepted, from the association pynetdicom opened to it.

    pynetdicom does not hand the sub-association to the handler; it is found among the AE's
    associations by the destination's address. None when it cannot be told apart (then the
    instances go as stored).
    """
    found = [
        a
        for a in event.assoc.ae.active_associations
        if a.is_requestor and a.remote.get("address") == host and a.remote.get("port") == port
    ]
    if len(found) != 1:
        return None
    accepted: dict[str, set[str]] = {}
    for cx in found[0].accepted_contexts:
        if cx.abstract_syntax is not None:
            accepted.setdefault(str(cx.abstract_syntax), set()).update(
                str(ts) for ts in cx.transfer_syntax
            )
    return accepted


def _move_datasets(
    event: Event, archive: Archive, rows: list[InstanceRow], host: str, port: int
) -> Iterator[tuple[int, Any]]:
    # Runs once pynetdicom has associated with the destination (after the count was yielded).
    accepted = _move_association_contexts(event, host, port)
    yield from _datasets(archive, rows, accepted)


def handle_get(event: Event, archive: Archive) -> Iterator[Any]:
    """EVT_C_GET: the count of sub-operations, then each instance to send back."""
    try:
        rows = instances_to_send(archive, event.identifier)
    except Exception as exc:
        # The count must come first: one (failed) sub-operation carries the error status.
        yield 1
        yield _refusal(exc, "C-GET"), None
        return
    yield len(rows)
    yield from _cancellable(event, _datasets(archive, rows, _accepted_storage(event)))


def handle_move(
    event: Event, archive: Archive, known: KnownAEs, outbound: OutboundTls | None = None
) -> Iterator[Any]:
    """EVT_C_MOVE: the destination, the count of sub-operations, then each instance."""
    title = event.move_destination or ""
    destination = known.get(title)
    tls_args = outbound.tls_args(title) if outbound is not None else None
    if destination is None or (destination.tls and tls_args is None):
        log.warning("C-MOVE refused: move destination is not a known AE")
        yield None, None  # pynetdicom answers 0xA801, Move Destination unknown
        return
    # An identifier the service refuses raises here, before the first yield: pynetdicom then
    # answers 0xC514 (Unable to process) without associating with the destination.
    rows = instances_to_send(archive, event.identifier)
    # A TLS destination whose certificate does not verify is never associated with: A801.
    options: dict[str, Any] = {"contexts": storage_contexts(rows)}
    if tls_args is not None:
        options["tls_args"] = tls_args
    yield destination.host, destination.port, options
    try:
        yield len(rows)
    except GeneratorExit:
        # pynetdicom stops here when it could not associate (it answers A801) and logs why
        # only at its own level: say it where operators look. An AE title is no personal data.
        if rows:
            hint = " over DICOM TLS (check its certificate and tls_ca_cert)" if tls_args else ""
            log.warning(
                "C-MOVE: could not associate with destination %s at %s:%d%s",
                normalise_title(title),
                destination.host,
                destination.port,
                hint,
            )
        raise
    yield from _cancellable(
        event, _move_datasets(event, archive, rows, destination.host, destination.port)
    )


def _refusal(exc: Exception, what: str) -> Dataset:
    if isinstance(exc, NodeError):
        return failure(IDENTIFIER_DOES_NOT_MATCH, exc.message)
    log.error("%s failed: %s", what, type(exc).__name__, exc_info=exc)
    return failure(UNABLE_TO_PROCESS, "the retrieve could not be processed")


def _cancellable(
    event: Event, results: Iterator[tuple[int, Any]]
) -> Iterator[tuple[int | Dataset, Any]]:
    for result in results:
        if event.is_cancelled:
            yield 0xFE00, None  # PS3.4 C.4.2.1.5: cancelled
            return
        yield result
