"""The modality worklist: open imaging orders with their patients (PS3.4 Annex K).

Orders that are scheduled or in progress are on the worklist. Matching follows the C-FIND rules
of PS3.4 C.2.2.2: single values, `*`/`?` wildcards on strings, `a-b` / `a-` / `-b` date ranges;
patient names match case-insensitively, as in the archive's query service. This module knows
nothing of DICOM encodings: the DIMSE layer turns an identifier into a `WorklistQuery` and
`WorklistEntry` objects into response datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ColumnElement, Connection, and_, select

from node.errors import InvalidRequestError
from node.storage.workflow_index import ImagingOrder, Patient

# Order statuses a modality may still perform.
OPEN_STATUSES: Final = ("scheduled", "in-progress")
# PS3.3 C.4.10: Scheduled Procedure Step Status (0040,0020) for each order status.
SPS_STATUS: Final = {"scheduled": "SCHEDULED", "in-progress": "STARTED"}

_ORDER = ImagingOrder.__table__  # type: ignore[attr-defined]
_PATIENT = Patient.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class WorklistQuery:
    """Matching keys of a worklist query; None (or "") means universal matching."""

    modality: str | None = None
    station_ae: str | None = None
    date_range: tuple[str, str] | None = None  # (lower, upper) DA, "" for an open end
    patient_id: str | None = None
    patient_name: str | None = None  # may hold * and ? wildcards
    accession_number: str | None = None


@dataclass(frozen=True)
class WorklistEntry:
    """One scheduled procedure step: an open order and its patient."""

    accession_number: str
    study_uid: str
    status: str
    patient_id: str
    patient_issuer: str
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    modality: str | None
    station_ae: str | None
    scheduled_date: str | None
    scheduled_time: str | None
    requested_procedure_id: str | None
    requested_procedure_description: str | None
    procedure_code: str | None
    procedure_code_system: str | None
    procedure_code_meaning: str | None
    referring_physician: str | None
    priority: str | None
    reason: str | None


def parse_date_range(value: str) -> tuple[str, str]:
    """A DA matching value (PS3.4 C.2.2.2.5): `d`, `a-b`, `a-` or `-b`, as (lower, upper)."""
    lower, dash, upper = value.partition("-")
    if not dash:
        upper = lower
    for bound in (lower, upper):
        if bound and not (len(bound) == 8 and bound.isascii() and bound.isdigit()):
            raise InvalidRequestError(
                "ScheduledProcedureStepStartDate must be YYYYMMDD or a YYYYMMDD-YYYYMMDD range"
            )
    if not (lower or upper) or (lower and upper and lower > upper):
        raise InvalidRequestError("ScheduledProcedureStepStartDate range is empty or reversed")
    return lower, upper


def _like(column: ColumnElement[Any], pattern: str) -> ColumnElement[bool]:
    """C.2.2.2.4 wildcard matching through LIKE, escaping LIKE's own specials."""
    if "*" not in pattern and "?" not in pattern:
        return column == pattern
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def _given(value: str | None) -> str | None:
    # "*" alone is universal matching (C.2.2.2.4), as is an empty value.
    if value is None or not value.strip("*"):
        return None
    return value


def search_worklist(conn: Connection, query: WorklistQuery) -> list[WorklistEntry]:
    """Open orders matching the query, earliest scheduled first."""
    where: list[ColumnElement[bool]] = [_ORDER.c.status.in_(OPEN_STATUSES)]
    if (modality := _given(query.modality)) is not None:
        where.append(_like(_ORDER.c.modality, modality))
    if (station := _given(query.station_ae)) is not None:
        where.append(_like(_ORDER.c.scheduled_station_ae, station))
    if (accession := _given(query.accession_number)) is not None:
        where.append(_like(_ORDER.c.accession_number, accession))
    if (patient_id := _given(query.patient_id)) is not None:
        where.append(_like(_ORDER.c.patient_mrn, patient_id))
    if (name := _given(query.patient_name)) is not None:
        # PN matching is case-insensitive here as in QIDO (C.2.2.2.1 permits it).
        where.append(_like(_PATIENT.c.name_search, name.upper()))
    if query.date_range is not None:
        lower, upper = query.date_range
        if lower:
            where.append(_ORDER.c.scheduled_date >= lower)
        if upper:
            where.append(_ORDER.c.scheduled_date <= upper)
    joined = _ORDER.outerjoin(
        _PATIENT,
        and_(_PATIENT.c.mrn == _ORDER.c.patient_mrn, _PATIENT.c.issuer == _ORDER.c.patient_issuer),
    )
    stmt = (
        select(_ORDER, _PATIENT.c.name, _PATIENT.c.birth_date, _PATIENT.c.sex)
        .select_from(joined)
        .where(*where)
        .order_by(
            _ORDER.c.scheduled_date.asc().nulls_last(),
            _ORDER.c.scheduled_time.asc().nulls_last(),
            _ORDER.c.accession_number,
        )
    )
    return [_entry(row._mapping) for row in conn.execute(stmt)]


def _entry(row: Any) -> WorklistEntry:
    return WorklistEntry(
        accession_number=row["accession_number"],
        study_uid=row["study_uid"],
        status=row["status"],
        patient_id=row["patient_mrn"],
        patient_issuer=row["patient_issuer"],
        patient_name=row["name"],
        patient_birth_date=row["birth_date"],
        patient_sex=row["sex"],
        modality=row["modality"],
        station_ae=row["scheduled_station_ae"],
        scheduled_date=row["scheduled_date"],
        scheduled_time=row["scheduled_time"],
        requested_procedure_id=row["requested_procedure_id"],
        requested_procedure_description=row["requested_procedure_description"],
        procedure_code=row["procedure_code"],
        procedure_code_system=row["procedure_code_system"],
        procedure_code_meaning=row["procedure_code_meaning"],
        referring_physician=row["referring_physician"],
        priority=row["priority"],
        reason=row["reason"],
    )
