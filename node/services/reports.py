"""Radiology reports: the rules of a report's life and the message that tells the OCS.

A report is written preliminary, made final once, and from then on changes only by amendment;
every version is kept (`report_version`). When a version becomes final or amended, the ORU^R01
to the order system is queued in the same transaction (`outbox.enqueue`), so a report the
radiologist was told is final can never miss its message, and a failed write sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import Connection, Engine, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from node.errors import ConflictError, NodeError, NotFoundError
from node.services import outbox
from node.services.patients import PatientData
from node.storage.index import Study
from node.storage.workflow_index import ImagingOrder, Patient, Report, ReportVersion

REPORT_T: Final = cast(Table, Report.__table__)  # type: ignore[attr-defined]
VERSION_T: Final = cast(Table, ReportVersion.__table__)  # type: ignore[attr-defined]
STUDY_T: Final = cast(Table, Study.__table__)  # type: ignore[attr-defined]
ORDER_T: Final = cast(Table, ImagingOrder.__table__)  # type: ignore[attr-defined]
PATIENT_T: Final = cast(Table, Patient.__table__)  # type: ignore[attr-defined]

DEFAULT_CODE: Final = "18748-4"  # LOINC: Diagnostic imaging study
CREATE_STATUSES: Final = frozenset({"preliminary", "final"})
# What each status may become. final never goes back: it changes only by amendment.
TRANSITIONS: Final = {
    "preliminary": frozenset({"preliminary", "final", "cancelled"}),
    "final": frozenset({"amended"}),
    "amended": frozenset({"amended"}),
    "cancelled": frozenset[str](),
}
SENT_STATUSES: Final = frozenset({"final", "amended"})


class ReportRuleError(NodeError):
    """The report breaks a rule of the workflow (a status change, a wrong study or patient)."""

    http_status = 422
    fhir_code = "business-rule"


class ReportVersionConflictError(NodeError):
    """The client updated a version that is no longer the current one (If-Match)."""

    http_status = 412
    fhir_code = "conflict"


@dataclass(frozen=True)
class ReportContent:
    """What a radiologist (or a client on their behalf) writes into a report version."""

    status: str
    conclusion: str | None = None
    text: str | None = None
    author: str | None = None
    code: str | None = None
    study_uid: str | None = None  # from DiagnosticReport.imagingStudy
    accession_number: str | None = None  # from DiagnosticReport.basedOn
    patient_mrn: str | None = None  # from DiagnosticReport.subject, to check against the study


def _now() -> datetime:
    return datetime.now(UTC)


def create_report(engine: Engine, content: ReportContent) -> int:
    """Store a new report (preliminary or final); returns its key."""
    if content.status not in CREATE_STATUSES:
        raise ReportRuleError(f"a new report must be preliminary or final, not {content.status!r}")
    with engine.begin() as conn:
        study_uid, accession, mrn = _resolve_study(conn, content)
        issued = _now()
        key = conn.execute(
            insert(REPORT_T).values(
                study_uid=study_uid,
                accession_number=accession,
                patient_mrn=mrn,
                status=content.status,
                version=1,
                code=content.code or DEFAULT_CODE,
                conclusion=content.conclusion,
                text=content.text,
                author=content.author,
                issued=issued,
                created_at=issued,
                updated_at=issued,
            )
        ).inserted_primary_key
        assert key is not None
        report_key = int(key[0])
        _record_version(conn, report_key, 1, content, issued)
        if content.status in SENT_STATUSES:
            _queue_message(conn, report_key)
    return report_key


def update_report(
    engine: Engine, report_key: int, content: ReportContent, expected_version: int | None
) -> int:
    """Write the next version of a report; returns the new version number."""
    try:
        with engine.begin() as conn:
            current = conn.execute(
                select(REPORT_T).where(REPORT_T.c.report_key == report_key)
            ).first()
            if current is None:
                raise NotFoundError(f"no DiagnosticReport with id {report_key}")
            if expected_version is not None and expected_version != current.version:
                raise ReportVersionConflictError(
                    f"If-Match names version {expected_version}, "
                    f"but the current version is {current.version}"
                )
            if content.status not in TRANSITIONS.get(current.status, frozenset()):
                raise ReportRuleError(_transition_message(current.status, content.status))
            _check_same_subject(conn, current, content)
            version = current.version + 1
            issued = _now()
            changed = conn.execute(
                update(REPORT_T)
                .where(REPORT_T.c.report_key == report_key, REPORT_T.c.version == current.version)
                .values(
                    status=content.status,
                    version=version,
                    code=content.code or current.code,
                    conclusion=content.conclusion,
                    text=content.text,
                    author=content.author,
                    issued=issued,
                    updated_at=issued,
                )
            ).rowcount
            if changed != 1:
                raise ConflictError("the report was changed by another request; read it again")
            _record_version(conn, report_key, version, content, issued)
            if content.status in SENT_STATUSES:
                _queue_message(conn, report_key)
    except IntegrityError as exc:
        # Two updates raced for the same version number: the loser must re-read.
        raise ConflictError("the report was changed by another request; read it again") from exc
    return version


def _transition_message(old: str, new: str) -> str:
    if old in ("final", "amended"):
        return f"a {old} report cannot become {new}; change it with status 'amended'"
    if old == "cancelled":
        return "a cancelled report cannot be changed"
    return f"a {old} report cannot become {new}"


def _resolve_study(conn: Connection, content: ReportContent) -> tuple[str, str | None, str | None]:
    """(study UID, accession number, patient MRN) the new report is about."""
    order = None
    if content.accession_number is not None:
        order = conn.execute(
            select(ORDER_T).where(ORDER_T.c.accession_number == content.accession_number)
        ).first()
        if order is None:
            raise ReportRuleError("basedOn references a ServiceRequest this node does not hold")
    study_uid = content.study_uid
    if study_uid is None:
        if order is None:
            raise ReportRuleError("a report needs imagingStudy (or basedOn a matched order)")
        if order.matched_study_uid is None:
            raise ReportRuleError(
                "the order in basedOn has no study yet; name the study in imagingStudy"
            )
        study_uid = order.matched_study_uid
    elif order is not None and order.matched_study_uid not in (None, study_uid):
        raise ReportRuleError("basedOn and imagingStudy name different studies")
    study = conn.execute(select(STUDY_T).where(STUDY_T.c.study_uid == study_uid)).first()
    if study is None:
        raise ReportRuleError("imagingStudy references a study this archive does not hold")
    if content.patient_mrn is not None and content.patient_mrn != study.patient_id:
        raise ReportRuleError("subject is not the patient of the study")
    accession = order.accession_number if order is not None else study.accession_number
    return study_uid, accession, study.patient_id


def _check_same_subject(conn: Connection, current: Any, content: ReportContent) -> None:
    """An update may not move a report to another study, order or patient."""
    if content.study_uid is not None and content.study_uid != current.study_uid:
        raise ReportRuleError("imagingStudy cannot change in an update")
    if content.accession_number is not None and content.accession_number != (
        current.accession_number
    ):
        raise ReportRuleError("basedOn cannot change in an update")
    if content.patient_mrn is not None and content.patient_mrn != current.patient_mrn:
        raise ReportRuleError("subject cannot change in an update")


def _record_version(
    conn: Connection, report_key: int, version: int, content: ReportContent, issued: datetime
) -> None:
    conn.execute(
        insert(VERSION_T).values(
            report_key=report_key,
            version=version,
            status=content.status,
            conclusion=content.conclusion,
            text=content.text,
            author=content.author,
            issued=issued,
            recorded_at=issued,
        )
    )


def _queue_message(conn: Connection, report_key: int) -> None:
    """Queue the ORU^R01 for the report's current version (WORKFLOW.md "report" payload)."""
    outbox.enqueue(conn, "report", report_payload(conn, report_key))


def report_payload(conn: Connection, report_key: int) -> dict[str, Any]:
    """The outbox payload: the facts as they are now, in this transaction."""
    report = conn.execute(select(REPORT_T).where(REPORT_T.c.report_key == report_key)).one()
    order = None
    if report.accession_number:
        order = conn.execute(
            select(ORDER_T).where(ORDER_T.c.accession_number == report.accession_number)
        ).first()
    issuer = order.patient_issuer if order is not None else None
    patient_stmt = select(PATIENT_T).where(PATIENT_T.c.mrn == report.patient_mrn)
    if issuer is not None:
        patient_stmt = patient_stmt.where(PATIENT_T.c.issuer == issuer)
    patients = conn.execute(patient_stmt.limit(2)).all()
    if len(patients) == 1:
        p = patients[0]
        patient = PatientData(p.mrn, p.issuer, p.name, p.birth_date, p.sex)
    else:
        # No ADT for this patient (or an ambiguous MRN): the study's own header values.
        study = conn.execute(select(STUDY_T).where(STUDY_T.c.study_uid == report.study_uid)).first()
        patient = PatientData(
            report.patient_mrn,
            issuer or "",
            study.patient_name if study else None,
            study.patient_birth_date if study else None,
            study.patient_sex if study else None,
        )
    issued = report.issued
    if issued is not None and issued.tzinfo is None:
        issued = issued.replace(tzinfo=UTC)
    return {
        "accession_number": report.accession_number,
        "study_uid": report.study_uid,
        "patient": patient.as_payload(),
        "order": outbox.order_facts(order._mapping if order is not None else None),
        "report": {
            "report_key": report.report_key,
            "version": report.version,
            "status": report.status,
            "conclusion": report.conclusion,
            "text": report.text,
            "author": report.author,
            "issued": issued.astimezone(UTC).isoformat() if issued else None,
        },
    }
