"""FHIR Observation (R4 §9.3.3) from coded findings: a radiologist's or an AI model's."""

from __future__ import annotations

from typing import Any, Final, cast

from sqlalchemy import ColumnElement, Connection, Table, or_, select

from node.errors import NotFoundError
from node.fhir.orders import code_system
from node.fhir.patients import patient_condition, patient_reference
from node.fhir.search import (
    Page,
    SearchRequest,
    fhir_instant,
    reference_id,
    run_page,
    split_or,
    token,
)
from node.storage.workflow_index import Observation

OBSERVATION_T: Final = cast(Table, Observation.__table__)  # type: ignore[attr-defined]
SEARCH_PARAMS: Final = frozenset({"_id", "patient", "subject", "code", "derived-from", "status"})
_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"


def observation_resource(conn: Connection, row: Any) -> dict[str, Any]:
    """One finding as a FHIR Observation."""
    coding: dict[str, Any] = {"code": row.code}
    system = code_system(row.code_system)
    if system:
        coding["system"] = system
    if row.display:
        coding["display"] = row.display
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(row.observation_key),
        "status": row.status,
        "category": [{"coding": [{"system": _CATEGORY, "code": "imaging"}]}],
        "code": {"coding": [coding]},
        "subject": patient_reference(conn, row.patient_mrn, None),
        "derivedFrom": [{"reference": f"ImagingStudy/{row.study_uid}"}],
    }
    effective = fhir_instant(row.effective)
    if effective:
        resource["effectiveDateTime"] = effective
    if row.value_quantity is not None:
        resource["valueQuantity"] = {"value": row.value_quantity}
    elif row.value_string is not None:
        resource["valueString"] = row.value_string
    if row.method:
        resource["method"] = {"text": row.method}
    return resource


def read_observation(conn: Connection, resource_id: str) -> dict[str, Any]:
    """The Observation with this id, or NotFoundError."""
    row = None
    if resource_id.isdigit():
        row = conn.execute(
            select(OBSERVATION_T).where(OBSERVATION_T.c.observation_key == int(resource_id))
        ).first()
    if row is None:
        raise NotFoundError(f"no Observation with id {resource_id}")
    return observation_resource(conn, row)


def search_observations(conn: Connection, search: SearchRequest) -> Page:
    """Observations matching the search, one page."""
    t = OBSERVATION_T
    where: list[ColumnElement[bool]] = []
    for values in split_or(search.values("_id")):
        where.append(t.c.observation_key.in_([int(v) for v in values if v.isdigit()]))
    for param in ("patient", "subject"):
        for values in split_or(search.values(param)):
            where.append(patient_condition(conn, values, param, t.c.patient_mrn, None))
    for values in split_or(search.values("code")):
        where.append(or_(*(_code(v) for v in values)))
    for values in split_or(search.values("derived-from")):
        uids = [reference_id(v, "ImagingStudy", "derived-from") for v in values]
        where.append(t.c.study_uid.in_(uids))
    for values in split_or(search.values("status")):
        where.append(t.c.status.in_(values))
    total, rows = run_page(conn, t, where, [t.c.observation_key], search)
    return Page(total, [observation_resource(conn, row) for row in rows])


def _code(value: str) -> ColumnElement[bool]:
    system, code = token(value)
    match = OBSERVATION_T.c.code == code
    if system:
        match = match & (OBSERVATION_T.c.code_system == system)
    return match
