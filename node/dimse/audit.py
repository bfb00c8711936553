"""Audited DIMSE handlers: each operation's event is durable before its final response is sent.

Wrappers around the node's pynetdicom handlers (`start_dimse` binds them when the node has an
audit trail). The calling AE title and the peer's address are the requesting agent; the
patient, study, instances and accession come from the identifier or the objects moved. For
C-FIND, C-MOVE and C-GET the event is committed when the final status is known, before the
handler returns it (or returns, letting pynetdicom send the final response): matches and
sub-operations already sent are covered by it, since the association cannot be acknowledged
as complete before then.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any, Final

import pydicom
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from node.services.audit import NodeAudit, audit_dimse

_PENDING: Final = (0xFF00, 0xFF01)
# The destination could not be associated with (unreachable, or its TLS certificate refused):
# pynetdicom answers A801, as for an unknown destination.
_MOVE_DESTINATION_UNREACHABLE: Final = 0xA801
_UNABLE_TO_PROCESS: Final = 0xC000
_MAX_OBJECTS: Final = 500  # entities per event stay well under the log's 1024
_HEADER_TAGS: Final = [0x00080050, 0x00100020, 0x00100021, 0x0020000D]


def _status(value: Any) -> int:
    return int(value.Status) if isinstance(value, Dataset) else int(value)


def _peer(event: Event) -> tuple[str, str | None]:
    requestor = event.assoc.requestor
    title = str(requestor.ae_title or "").strip() or "unknown"
    return title, getattr(requestor, "address", None)


def _text(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None:
        return None
    value = str(ds.get(keyword, "") or "").strip()
    return value if value and "*" not in value and "?" not in value else None


def _query_text(ds: Dataset) -> str:
    # The identifier's canonical text, hashed by audit_dimse: equal queries give equal hashes.
    try:
        return json.dumps(ds.to_json_dict(), sort_keys=True)
    except Exception:
        return repr(sorted(str(e.tag) for e in ds))


def store(event: Event, handler: Any, args: list[Any], audit: NodeAudit) -> int | Dataset:
    """EVT_C_STORE through `handler`, then its event (PS3.15 A.5.3.3, action C)."""
    result: int | Dataset = handler(event, *args)
    title, host = _peer(event)
    header: Dataset | None = None
    try:
        header = pydicom.dcmread(
            io.BytesIO(event.encoded_dataset()),
            stop_before_pixels=True,
            specific_tags=_HEADER_TAGS,
            force=True,
        )
    except Exception:  # an undecodable object: its refusal is still recorded
        header = None
    sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
    study = _text(header, "StudyInstanceUID")
    audit_dimse(
        audit,
        "C-STORE",
        _status(result),
        calling_ae=title,
        peer_host=host,
        study_uids=[study] if study else [],
        sop_instance_uids=[sop] if sop else [],
        patient_id=_text(header, "PatientID"),
        issuer=_text(header, "IssuerOfPatientID"),
        accession=_text(header, "AccessionNumber"),
    )
    return result


def find(event: Event, inner: Iterator[Any], service: str, audit: NodeAudit) -> Iterator[Any]:
    """EVT_C_FIND (Q/R or worklist) through `inner`, recorded before the final status."""
    identifier: Dataset = event.identifier
    title, host = _peer(event)

    def record(status: int) -> None:
        study = _text(identifier, "StudyInstanceUID")
        audit_dimse(
            audit,
            service,
            status,
            calling_ae=title,
            peer_host=host,
            study_uids=[study] if study else [],
            patient_id=_text(identifier, "PatientID"),
            issuer=_text(identifier, "IssuerOfPatientID"),
            accession=_text(identifier, "AccessionNumber"),
            query=_query_text(identifier),
        )

    for item in inner:
        status = _status(item[0])
        if status not in _PENDING:
            record(status)
            yield item
            return
        yield item
    record(0x0000)


def retrieve(event: Event, inner: Iterator[Any], service: str, audit: NodeAudit) -> Iterator[Any]:
    """EVT_C_GET / EVT_C_MOVE through `inner`: the instances sent, recorded before the end.

    pynetdicom stops reading the handler, without a final yield, when there is nothing to send
    and when it cannot associate with the C-MOVE destination (it answers 0000 and A801); the
    handler is then closed, and the event is recorded there with that status.
    """
    identifier: Dataset = event.identifier
    title, host = _peer(event)
    studies: dict[str, None] = {}
    instances: dict[str, None] = {}
    patient = _text(identifier, "PatientID")
    count: int | None = None
    sub_operations = 0
    recorded = False

    def record(status: int) -> None:
        nonlocal recorded
        recorded = True
        audit_dimse(
            audit,
            service,
            status,
            calling_ae=title,
            peer_host=host,
            study_uids=list(studies) or [s for s in [_text(identifier, "StudyInstanceUID")] if s],
            sop_instance_uids=list(instances)[:_MAX_OBJECTS],
            patient_id=patient,
            issuer=_text(identifier, "IssuerOfPatientID"),
            query=_query_text(identifier),
        )

    try:
        for item in inner:
            if isinstance(item, int) and not isinstance(item, bool):
                count = item
            elif isinstance(item, tuple) and len(item) == 2:
                if item[0] is None:  # C-MOVE destination unknown: pynetdicom answers 0xA801
                    record(0xA801)
                    yield item
                    return
                status = _status(item[0])
                if status not in _PENDING:
                    record(status)
                    yield item
                    return
                sub_operations += 1
                ds = item[1]
                if isinstance(ds, Dataset):
                    study, sop = _text(ds, "StudyInstanceUID"), _text(ds, "SOPInstanceUID")
                    if study:
                        studies[study] = None
                    if sop and len(instances) < _MAX_OBJECTS:
                        instances[sop] = None
                    patient = patient or _text(ds, "PatientID")
            yield item
        record(0x0000)
    except GeneratorExit:
        if not recorded:
            record(_abandoned_status(service, count, sub_operations))
        raise


def _abandoned_status(service: str, count: int | None, sub_operations: int) -> int:
    """The status pynetdicom answered when it stopped reading the handler early."""
    if count == 0:
        return 0x0000  # nothing matched: success, no sub-operations
    if service == "C-MOVE" and count is not None and sub_operations == 0:
        return _MOVE_DESTINATION_UNREACHABLE
    return _UNABLE_TO_PROCESS  # the association went away during the sub-operations
