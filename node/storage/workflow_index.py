"""The imaging workflow's tables: patients, orders, reports, the HL7 outbox, reconciliation.

The order system (OCS/HIS) is the source of truth for patients and orders; the node keeps what
the worklist, matching, reports and FHIR need. As in the archive index, the attributes used for
matching (MRN, name, birth date) are held in the clear in the index database, which is the
node's private store; they never appear in logs or error messages.

Dates and times follow DICOM's string forms (DA `YYYYMMDD`, TM `HHMMSS`) because the worklist
matches on them exactly as the archive index does for studies.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def _now() -> datetime:
    return datetime.now(UTC)


class Patient(SQLModel, table=True):
    """A patient as the order system registered them (ADT A01/A04/A08; merged by A40)."""

    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("mrn", "issuer", name="uq_patient_mrn_issuer"),)

    patient_key: int | None = Field(default=None, primary_key=True)
    mrn: str = Field(max_length=64, index=True)  # PID-3.1, DICOM PatientID
    issuer: str = Field(default="", max_length=64)  # PID-3.4, DICOM IssuerOfPatientID
    name: str | None = Field(default=None)  # DICOM PN form: Family^Given^Middle^Prefix^Suffix
    name_search: str | None = Field(default=None, index=True)  # upper-cased, for matching
    birth_date: str | None = Field(default=None, max_length=8)  # DA
    sex: str | None = Field(default=None, max_length=1)  # M, F, O, U
    # Set when ADT^A40 merged this record into another; the surviving MRN holds the orders.
    merged_into_mrn: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class ImagingOrder(SQLModel, table=True):
    """An imaging order (ORM^O01 / OMI^O23): one requested procedure, one accession number.

    Status follows the order's life: scheduled (on the worklist) → in-progress → completed
    (a study was matched to it), or cancelled. `study_uid` is the Study Instance UID the node
    assigns for the worklist, so a modality that copies it produces a study that matches.
    """

    __tablename__ = "imaging_order"
    __table_args__ = (Index("ix_imaging_order_status_date", "status", "scheduled_date"),)

    accession_number: str = Field(primary_key=True, max_length=16)  # DICOM SH
    placer_order_number: str | None = Field(default=None, max_length=64)  # ORC-2
    filler_order_number: str | None = Field(default=None, max_length=64)  # ORC-3
    patient_mrn: str = Field(max_length=64, index=True)
    patient_issuer: str = Field(default="", max_length=64)
    status: str = Field(default="scheduled", max_length=16, index=True)
    priority: str | None = Field(default=None, max_length=16)  # routine, stat, ...
    modality: str | None = Field(default=None, max_length=16, index=True)
    requested_procedure_id: str | None = Field(default=None, max_length=16)
    requested_procedure_description: str | None = Field(default=None)
    procedure_code: str | None = Field(default=None, max_length=64)
    procedure_code_system: str | None = Field(default=None, max_length=64)
    procedure_code_meaning: str | None = Field(default=None)
    scheduled_station_ae: str | None = Field(default=None, max_length=16)
    scheduled_date: str | None = Field(default=None, max_length=8)  # DA
    scheduled_time: str | None = Field(default=None, max_length=6)  # TM
    referring_physician: str | None = Field(default=None)  # PN form
    reason: str | None = Field(default=None)
    study_uid: str = Field(max_length=64, unique=True)  # assigned for the worklist
    matched_study_uid: str | None = Field(default=None, max_length=64, index=True)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class Report(SQLModel, table=True):
    """A radiology report on one study (FHIR DiagnosticReport); its current version."""

    __tablename__ = "report"

    report_key: int | None = Field(default=None, primary_key=True)
    study_uid: str = Field(max_length=64, index=True)
    accession_number: str | None = Field(default=None, max_length=16, index=True)
    patient_mrn: str | None = Field(default=None, max_length=64, index=True)
    # FHIR DiagnosticReport.status: preliminary, final, amended, cancelled, entered-in-error
    status: str = Field(max_length=16)
    version: int = 1
    code: str | None = Field(default=None, max_length=64)  # LOINC, e.g. 18748-4
    conclusion: str | None = Field(default=None, sa_column=Column(Text))
    text: str | None = Field(default=None, sa_column=Column(Text))  # the narrative
    author: str | None = Field(default=None)  # the radiologist (PN form or user name)
    issued: datetime | None = None
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class ReportVersion(SQLModel, table=True):
    """Every version a report has had: amendments keep the history."""

    __tablename__ = "report_version"

    report_key: int = Field(foreign_key="report.report_key", primary_key=True)
    version: int = Field(primary_key=True)
    status: str = Field(max_length=16)
    conclusion: str | None = Field(default=None, sa_column=Column(Text))
    text: str | None = Field(default=None, sa_column=Column(Text))
    author: str | None = Field(default=None)
    issued: datetime | None = None
    recorded_at: datetime = Field(default_factory=_now)


class Observation(SQLModel, table=True):
    """A coded finding on a study (FHIR Observation): a radiologist's or an AI model's."""

    __tablename__ = "observation"

    observation_key: int | None = Field(default=None, primary_key=True)
    study_uid: str = Field(max_length=64, index=True)
    report_key: int | None = Field(default=None, foreign_key="report.report_key", index=True)
    patient_mrn: str | None = Field(default=None, max_length=64, index=True)
    status: str = Field(default="final", max_length=16)
    code: str = Field(max_length=64)
    code_system: str = Field(max_length=128)
    display: str | None = Field(default=None)
    value_quantity: float | None = None  # e.g. a calibrated probability
    value_string: str | None = Field(default=None)
    method: str | None = Field(default=None)  # e.g. the model version hash for AI findings
    effective: datetime = Field(default_factory=_now)


class OutboundMessage(SQLModel, table=True):
    """An HL7 message to the order system, kept until the receiver acknowledges it.

    `payload` is a JSON snapshot of the facts at the time of the event (the order, the report),
    so a message says what was true when it happened even if it is delivered after a restart.
    """

    __tablename__ = "hl7_outbox"
    __table_args__ = (Index("ix_hl7_outbox_due", "status", "next_attempt_at"),)

    message_key: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)  # "order-status" | "report"
    payload: str = Field(sa_column=Column(Text, nullable=False))
    # pending → delivered (AA), or rejected (AE/AR: the receiver refused it; an admin decides)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=_now)
    last_error: str | None = Field(default=None)
    created_at: datetime = Field(default_factory=_now)
    delivered_at: datetime | None = None


class ReconciliationItem(SQLModel, table=True):
    """A study that arrived but could not be matched to an order; an admin resolves it."""

    __tablename__ = "reconciliation"

    study_uid: str = Field(primary_key=True, max_length=64)
    # no-order | patient-mismatch | order-cancelled | order-already-matched
    reason: str = Field(max_length=32)
    accession_number: str | None = Field(default=None, max_length=16)
    created_at: datetime = Field(default_factory=_now)
    resolved_at: datetime | None = None
    resolved_accession: str | None = Field(default=None, max_length=16)
    resolved_by: str | None = Field(default=None, max_length=64)
