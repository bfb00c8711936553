"""Patients as the order system registers them: register/update (ADT A01/A04/A08) and merge
(ADT A40). The order system is the source of truth; the node keeps what worklists, matching and
FHIR need. Every function runs inside the caller's transaction, so one HL7 message is one
transaction and a rejected message leaves nothing behind."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, insert, select, update

from node.errors import NotFoundError
from node.storage.index import Study
from node.storage.workflow_index import ImagingOrder, Patient

PATIENT: Table = Patient.__table__  # type: ignore[attr-defined]
ORDER: Table = ImagingOrder.__table__  # type: ignore[attr-defined]
STUDY: Table = Study.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PatientData:
    """A patient's demographics in DICOM forms (PN name, DA birth date, M/F/O/U sex)."""

    mrn: str
    issuer: str = ""
    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None

    def as_payload(self) -> dict[str, Any]:
        """The outbox payload's "patient" object."""
        return {
            "mrn": self.mrn,
            "issuer": self.issuer,
            "name": self.name,
            "birth_date": self.birth_date,
            "sex": self.sex,
        }


@dataclass(frozen=True)
class MergeResult:
    """What ADT^A40 moved from the prior MRN to the surviving one."""

    orders_moved: int
    studies_moved: int


def _now() -> datetime:
    return datetime.now(UTC)


def get_patient(conn: Connection, mrn: str, issuer: str = "") -> PatientData | None:
    """The registered patient with this MRN (and issuer), if any."""
    row = conn.execute(
        select(PATIENT).where(and_(PATIENT.c.mrn == mrn, PATIENT.c.issuer == issuer))
    ).first()
    if row is None:
        return None
    return PatientData(row.mrn, row.issuer, row.name, row.birth_date, row.sex)


def upsert_patient(conn: Connection, patient: PatientData) -> bool:
    """Register a patient or update their demographics; True when the record is new.

    ADT A08 for a patient the node has never seen registers them: the order system is the
    source of truth, and refusing would only lose the update. Demographics a message leaves
    empty are kept (an order's PID often carries only the identifier)."""
    values: dict[str, Any] = {
        "name": patient.name,
        "name_search": patient.name.upper() if patient.name else None,
        "birth_date": patient.birth_date,
        "sex": patient.sex,
    }
    values = {k: v for k, v in values.items() if v is not None}
    values["updated_at"] = _now()
    done = conn.execute(
        update(PATIENT)
        .where(and_(PATIENT.c.mrn == patient.mrn, PATIENT.c.issuer == patient.issuer))
        .values(**values)
    )
    if done.rowcount:
        return False
    conn.execute(insert(PATIENT).values(mrn=patient.mrn, issuer=patient.issuer, **values))
    return True


def filed_under(patient: PatientData) -> dict[str, Any]:
    """The study index values that file a study under this patient (a name it lacks is kept).

    For ADT^A40 and reconciliation: later instances must then carry this patient (or an MRN
    merged into it) to join the study."""
    values: dict[str, Any] = {"patient_id": patient.mrn, "patient_issuer": patient.issuer or None}
    if patient.name:
        values.update(patient_name=patient.name, patient_name_search=patient.name.upper())
    return values


def merge_patients(
    conn: Connection, surviving: PatientData, prior_mrn: str, prior_issuer: str = ""
) -> MergeResult:
    """ADT^A40: the prior MRN is merged into the surviving one; orders and studies follow.

    The archive's index rows move to the surviving MRN so queries find the studies under it;
    the stored objects keep the identifiers they were acquired with (their headers are sealed)."""
    prior = get_patient(conn, prior_mrn, prior_issuer)
    upsert_patient(conn, surviving)
    orders = conn.execute(
        update(ORDER)
        .where(and_(ORDER.c.patient_mrn == prior_mrn, ORDER.c.patient_issuer == prior_issuer))
        .values(patient_mrn=surviving.mrn, patient_issuer=surviving.issuer, updated_at=_now())
    ).rowcount
    # Studies are found by MRN alone: within one node an MRN is the patient's key.
    studies = conn.execute(
        update(STUDY).where(STUDY.c.patient_id == prior_mrn).values(**filed_under(surviving))
    ).rowcount
    if prior is None and not orders and not studies:
        raise NotFoundError("MRG-1 names a patient this node does not know")
    if prior is not None:
        conn.execute(
            update(PATIENT)
            .where(and_(PATIENT.c.mrn == prior_mrn, PATIENT.c.issuer == prior_issuer))
            .values(merged_into_mrn=surviving.mrn, updated_at=_now())
        )
    return MergeResult(orders, studies)


def surviving_mrn(conn: Connection, mrn: str) -> str:
    """Follow A40 merges from an MRN to the record that survives (bounded against cycles)."""
    seen = {mrn}
    current = mrn
    for _ in range(16):
        nxt = conn.execute(
            select(PATIENT.c.merged_into_mrn).where(PATIENT.c.mrn == current)
        ).scalar()
        if not nxt or nxt in seen:
            return current
        seen.add(nxt)
        current = nxt
    return current


def same_patient(
    conn: Connection, filed: tuple[str | None, str | None], arriving: tuple[str | None, str | None]
) -> bool:
    """Whether two (Patient ID, Issuer of Patient ID) pairs name one patient of this node.

    The IDs must be equal, or be MRNs that ADT^A40 merged into one record. An issuer missing
    on either side is unknown, not different: modalities often omit it, and studies indexed
    before the issuer was kept have none."""
    filed_id, filed_issuer = (_stripped(v) for v in filed)
    arriving_id, arriving_issuer = (_stripped(v) for v in arriving)
    if filed_id == arriving_id:
        return not (filed_issuer and arriving_issuer and filed_issuer != arriving_issuer)
    if filed_id is None or arriving_id is None:
        return False
    return surviving_mrn(conn, filed_id) == surviving_mrn(conn, arriving_id)


def _stripped(value: str | None) -> str | None:
    # PS3.5 6.2: leading and trailing spaces of LO values are not significant.
    return (value or "").strip() or None
