"""FHIR Patient (R4 §8.1) from the patient table the order system fills (ADT)."""

from __future__ import annotations

import re
from typing import Any, Final, cast

from sqlalchemy import ColumnElement, Connection, Table, false, func, or_, select

from node.errors import NotFoundError
from node.fhir.search import (
    FHIR_ID,
    Page,
    SearchRequest,
    date_condition,
    fhir_date,
    human_name,
    like_escape,
    reference_id,
    run_page,
    split_or,
    token,
)
from node.storage.workflow_index import Patient

PATIENT_T: Final = cast(Table, Patient.__table__)  # type: ignore[attr-defined]
SEARCH_PARAMS: Final = frozenset({"_id", "identifier", "name", "birthdate", "gender"})
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
_OID: Final = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_GENDER: Final = {"M": "male", "F": "female", "O": "other", "U": "unknown"}
_SEX: Final = {v: k for k, v in _GENDER.items()}


def identifier_system(issuer: str | None) -> str | None:
    """Identifier.system for an issuer of patient IDs (PID-3.4 / IssuerOfPatientID).

    An issuer that is already a URI is used as is, an OID becomes `urn:oid:`; a bare
    assigning-authority name is not a URI, so it goes in `assigner.display` instead.
    """
    if not issuer:
        return None
    if _OID.fullmatch(issuer):
        return f"urn:oid:{issuer}"
    if ":" in issuer and " " not in issuer:
        return issuer
    return None


def mrn_identifier(mrn: str, issuer: str | None) -> dict[str, Any]:
    """The medical record number as a FHIR Identifier (type MR)."""
    ident: dict[str, Any] = {
        "use": "usual",
        "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
        "value": mrn,
    }
    system = identifier_system(issuer)
    if system:
        ident["system"] = system
    if issuer:
        ident["assigner"] = {"display": issuer}
    return ident


def patient_resource(conn: Connection, row: Any) -> dict[str, Any]:
    """One patient row as a FHIR Patient."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(row.patient_key),
        "identifier": [mrn_identifier(row.mrn, row.issuer)],
        "active": row.merged_into_mrn is None,
    }
    names = human_name(row.name)
    if names:
        resource["name"] = [{**names[0], "use": "official"}]
    if row.sex in _GENDER:
        resource["gender"] = _GENDER[row.sex]
    birth = fhir_date(row.birth_date)
    if birth:
        resource["birthDate"] = birth
    if row.merged_into_mrn:
        # ADT^A40 merged this record away: R4 Patient.link type replaced-by names the survivor.
        survivor = patient_reference(conn, row.merged_into_mrn, row.issuer)
        resource["link"] = [{"other": survivor, "type": "replaced-by"}]
    return resource


def read_patient(conn: Connection, patient_id: str) -> dict[str, Any]:
    """The Patient with this id, or NotFoundError."""
    row = _row(conn, patient_id)
    if row is None:
        raise NotFoundError(f"no Patient with id {patient_id}")
    return patient_resource(conn, row)


def _row(conn: Connection, patient_id: str) -> Any:
    if not patient_id.isdigit():
        return None
    return conn.execute(select(PATIENT_T).where(PATIENT_T.c.patient_key == int(patient_id))).first()


def patient_mrn(conn: Connection, patient_id: str) -> tuple[str, str] | None:
    """(MRN, issuer) of the Patient with this id, for `patient=` searches on other types."""
    row = _row(conn, patient_id)
    return None if row is None else (row.mrn, row.issuer)


def patient_reference(conn: Connection, mrn: str | None, issuer: str | None) -> dict[str, Any]:
    """A Reference to the patient with this MRN.

    A literal `Patient/{id}` when exactly one patient row has the MRN (and issuer, when
    known); otherwise (no ADT for this patient yet, or an MRN two issuers share) a logical
    reference by identifier, which R4 §2.3.0.3 allows and which never points at the wrong
    person.
    """
    if not mrn:
        return {"display": "unknown patient"}
    stmt = select(PATIENT_T.c.patient_key).where(PATIENT_T.c.mrn == mrn)
    if issuer is not None:
        stmt = stmt.where(PATIENT_T.c.issuer == issuer)
    keys: list[int] = list(conn.execute(stmt.limit(2)).scalars())
    if len(keys) == 1:
        return {"reference": f"Patient/{keys[0]}", "type": "Patient"}
    return {"type": "Patient", "identifier": mrn_identifier(mrn, issuer)}


def search_patients(conn: Connection, search: SearchRequest) -> Page:
    """Patients matching the search, one page."""
    where: list[ColumnElement[bool]] = []
    for values in split_or(search.values("_id")):
        keys = [int(v) for v in values if v.isdigit()]
        where.append(PATIENT_T.c.patient_key.in_(keys) if keys else false())
    for values in split_or(search.values("identifier")):
        where.append(or_(*(_identifier_match(v) for v in values)))
    for values in split_or(search.values("name")):
        where.append(or_(*(_name_match(v) for v in values)))
    for values in split_or(search.values("birthdate")):
        col = PATIENT_T.c.birth_date
        where.append(or_(*(date_condition(col, v, "birthdate") for v in values)))
    for values in split_or(search.values("gender")):
        where.append(PATIENT_T.c.sex.in_([_SEX.get(v, "?") for v in values]))
    order = [PATIENT_T.c.patient_key]
    total, rows = run_page(conn, PATIENT_T, where, order, search)
    return Page(total, [patient_resource(conn, row) for row in rows])


def _identifier_match(value: str) -> ColumnElement[bool]:
    system, code = token(value)
    match = PATIENT_T.c.mrn == code
    if system is None:
        return match
    if system == "":
        return match & (PATIENT_T.c.issuer == "")
    # The system may be the one this node emits (urn:oid:..., a URI issuer) or the bare
    # assigning-authority name a client knows from HL7 v2.
    issuer = system.removeprefix("urn:oid:") if system.startswith("urn:oid:") else system
    return match & (PATIENT_T.c.issuer == issuer)


def _name_match(value: str) -> ColumnElement[bool]:
    """R4 string search: case-insensitive, matching the start of any part of the name."""
    word = like_escape(value.upper().strip())
    col = func.coalesce(PATIENT_T.c.name_search, func.upper(PATIENT_T.c.name))
    starts = [f"{word}%", f"%^{word}%", f"% {word}%"]
    return or_(*(col.like(p, escape="\\") for p in starts))


def valid_id(value: str) -> bool:
    """Whether a string is a FHIR id (R4 §2.24.0.1 id datatype)."""
    return FHIR_ID.fullmatch(value) is not None


def patient_condition(
    conn: Connection, values: list[str], param: str, mrn_col: Any, issuer_col: Any | None
) -> ColumnElement[bool]:
    """`patient=` / `subject=`: rows whose MRN (and issuer) is one of these Patients'."""
    clauses: list[ColumnElement[bool]] = []
    for value in values:
        found = patient_mrn(conn, reference_id(value, "Patient", param))
        if found is not None:
            clause = mrn_col == found[0]
            if issuer_col is not None:
                clause = clause & (issuer_col == found[1])
            clauses.append(clause)
    return or_(*clauses) if clauses else false()
