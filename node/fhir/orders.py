"""FHIR ServiceRequest (R4 §12.16) from imaging orders (ORM^O01 / OMI^O23).

Ids: the accession number, which is the order's key. DICOM SH allows characters a FHIR id
does not, so every character outside `[A-Za-z0-9-]` (the dot included) is written `.XX`
(hex): the mapping is one-to-one and plain accession numbers stay readable.
"""

from __future__ import annotations

import re
from typing import Any, Final, cast

from sqlalchemy import ColumnElement, Connection, Table, or_, select

from node.errors import NotFoundError
from node.fhir.patients import V2_0203, patient_condition, patient_reference
from node.fhir.search import (
    Page,
    SearchRequest,
    date_condition,
    display_name,
    fhir_datetime,
    fhir_instant,
    run_page,
    split_or,
    token,
)
from node.storage.workflow_index import ImagingOrder

ORDER_T: Final = cast(Table, ImagingOrder.__table__)  # type: ignore[attr-defined]
SEARCH_PARAMS: Final = frozenset(
    {"_id", "identifier", "patient", "subject", "status", "occurrence", "code"}
    | {"accession", "modality"}  # pacsmesh parameters: the hospital's keys for an order
)
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
# DICOM coding scheme designators (PS3.16 §8) as FHIR code system URIs.
CODING_SCHEMES: Final = {
    "LN": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SRT": "http://snomed.info/sct",
    "DCM": DCM,
    "RADLEX": "http://radlex.org",
    "RADLEX-PB": "http://radlex.org",
}
# imaging_order.status -> ServiceRequest.status (R4 request-status).
STATUS: Final = {
    "scheduled": "active",
    "in-progress": "active",
    "completed": "completed",
    "cancelled": "revoked",
}
_ORDER_STATUSES: Final = {v: [k for k in STATUS if STATUS[k] == v] for v in STATUS.values()}
_PRIORITIES: Final = frozenset({"routine", "urgent", "asap", "stat"})
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9-]")


def order_id(accession: str) -> str:
    """The ServiceRequest id of an accession number."""
    return _UNSAFE.sub(lambda m: "".join(f".{b:02X}" for b in m.group().encode()), accession)


def accession_of(resource_id: str) -> str | None:
    """The accession number of a ServiceRequest id, or None when it cannot be one."""
    raw = bytearray()
    i = 0
    while i < len(resource_id):
        char = resource_id[i]
        if char == ".":
            pair = resource_id[i + 1 : i + 3]
            if not re.fullmatch(r"[0-9A-F]{2}", pair):
                return None
            raw.append(int(pair, 16))
            i += 3
        else:
            raw += char.encode()
            i += 1
    try:
        accession = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return accession if order_id(accession) == resource_id else None


def code_system(designator: str | None) -> str | None:
    """A coding scheme designator as a FHIR system URI, when it has a known one."""
    if not designator:
        return None
    if ":" in designator:
        return designator
    return CODING_SCHEMES.get(designator.upper())


def order_identifiers(row: Any) -> list[dict[str, Any]]:
    """Accession (ACSN), placer (PLAC) and filler (FILL) numbers (v2 table 0203 types)."""
    idents = []
    for type_code, value in (
        ("ACSN", row.accession_number),
        ("PLAC", row.placer_order_number),
        ("FILL", row.filler_order_number),
    ):
        if value:
            idents.append(
                {"type": {"coding": [{"system": V2_0203, "code": type_code}]}, "value": value}
            )
    return idents


def procedure_code(row: Any) -> dict[str, Any]:
    """The requested procedure as a CodeableConcept."""
    concept: dict[str, Any] = {}
    if row.procedure_code:
        coding: dict[str, Any] = {"code": row.procedure_code}
        system = code_system(row.procedure_code_system)
        if system:
            coding["system"] = system
        if row.procedure_code_meaning:
            coding["display"] = row.procedure_code_meaning
        concept["coding"] = [coding]
    text = row.requested_procedure_description or row.procedure_code_meaning
    if text:
        concept["text"] = text
    return concept or {"text": "imaging procedure"}


def order_resource(conn: Connection, row: Any) -> dict[str, Any]:
    """One imaging order as a FHIR ServiceRequest."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": order_id(row.accession_number),
        "meta": {"lastUpdated": fhir_instant(row.updated_at)},
        "identifier": order_identifiers(row),
        "status": STATUS.get(row.status, "unknown"),
        "intent": "order",
        "category": [
            {
                "coding": [{"system": "http://snomed.info/sct", "code": "363679005"}],
                "text": "Imaging",
            }
        ],
        "code": procedure_code(row),
        "subject": patient_reference(conn, row.patient_mrn, row.patient_issuer),
    }
    priority = (row.priority or "").lower()
    if priority in _PRIORITIES:
        resource["priority"] = priority
    if row.modality:
        resource["orderDetail"] = [{"coding": [{"system": DCM, "code": row.modality}]}]
    occurrence = fhir_datetime(row.scheduled_date, row.scheduled_time)
    if occurrence:
        resource["occurrenceDateTime"] = occurrence
    authored = fhir_instant(row.created_at)
    if authored:
        resource["authoredOn"] = authored
    requester = display_name(row.referring_physician)
    if requester:
        resource["requester"] = {"display": requester}
    if row.reason:
        resource["reasonCode"] = [{"text": row.reason}]
    return resource


def order_row(conn: Connection, accession: str) -> Any:
    """The imaging_order row of an accession number, or None."""
    return conn.execute(select(ORDER_T).where(ORDER_T.c.accession_number == accession)).first()


def read_order(conn: Connection, resource_id: str) -> dict[str, Any]:
    """The ServiceRequest with this id, or NotFoundError."""
    accession = accession_of(resource_id)
    row = order_row(conn, accession) if accession else None
    if row is None:
        raise NotFoundError(f"no ServiceRequest with id {resource_id}")
    return order_resource(conn, row)


def search_orders(conn: Connection, search: SearchRequest) -> Page:
    """ServiceRequests matching the search, one page."""
    where: list[ColumnElement[bool]] = []
    t = ORDER_T
    for values in split_or(search.values("_id")):
        accessions = [a for a in (accession_of(v) for v in values) if a is not None]
        where.append(t.c.accession_number.in_(accessions))
    for param in ("patient", "subject"):
        for values in split_or(search.values(param)):
            where.append(
                patient_condition(conn, values, param, t.c.patient_mrn, t.c.patient_issuer)
            )
    for values in split_or(search.values("identifier")):
        clauses = []
        for value in values:
            _system, code = token(value)
            clauses.append(
                or_(
                    t.c.accession_number == code,
                    t.c.placer_order_number == code,
                    t.c.filler_order_number == code,
                )
            )
        where.append(or_(*clauses))
    for values in split_or(search.values("status")):
        statuses = [s for v in values for s in _ORDER_STATUSES.get(v, [])]
        where.append(t.c.status.in_(statuses))
    for values in split_or(search.values("occurrence")):
        col = t.c.scheduled_date
        where.append(or_(*(date_condition(col, v, "occurrence") for v in values)))
    for values in split_or(search.values("code")):
        where.append(or_(*(_code_match(v) for v in values)))
    for values in split_or(search.values("accession")):
        where.append(t.c.accession_number.in_([token(v)[1] for v in values]))
    for values in split_or(search.values("modality")):
        where.append(t.c.modality.in_([token(v)[1] for v in values]))
    order = [t.c.scheduled_date.asc().nulls_last(), t.c.accession_number]
    total, rows = run_page(conn, t, where, order, search)
    return Page(total, [order_resource(conn, row) for row in rows])


def _code_match(value: str) -> ColumnElement[bool]:
    system, code = token(value)
    match = ORDER_T.c.procedure_code == code
    if system:
        designators = [k for k, v in CODING_SCHEMES.items() if v == system] + [system]
        match = match & ORDER_T.c.procedure_code_system.in_(designators)
    return match
