"""The archive index: studies, series and instances, with the attributes queries match on.

Personal attributes needed for matching (name, ID, dates) live here in the clear, as in any
PACS index; everything else of an instance's header is kept only as encrypted metadata
(`Instance.metadata_enc`, sealed with the study's data key), so the database holds no full
DICOM header in plaintext. Counters and ModalitiesInStudy are maintained on write so that
study-level queries never aggregate at read time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, Index, LargeBinary, text
from sqlmodel import Field, SQLModel

UNRECORDED_BURNED_IN = "burned_in_annotation IS NULL AND rows IS NOT NULL"


def _now() -> datetime:
    return datetime.now(UTC)


class Study(SQLModel, table=True):
    """One study: PS3.18 study-level query attributes plus maintained counters."""

    __tablename__ = "study"

    study_uid: str = Field(primary_key=True, max_length=64)
    patient_id: str | None = Field(default=None, index=True)
    # IssuerOfPatientID (0010,0021): with the Patient ID, the patient a study is filed under.
    # NULL where the objects carried none (and for studies indexed before migration 0008).
    patient_issuer: str | None = Field(default=None)
    # PN as received (components separated by ^, groups by =) and an upper-cased copy for
    # case-insensitive matching (PS3.4 C.2.2.2.1 permits it for PN).
    patient_name: str | None = Field(default=None)
    patient_name_search: str | None = Field(default=None, index=True)
    patient_birth_date: str | None = Field(default=None)
    patient_sex: str | None = Field(default=None)
    study_date: str | None = Field(default=None, index=True)
    study_time: str | None = Field(default=None)
    accession_number: str | None = Field(default=None, index=True)
    study_id: str | None = Field(default=None)
    study_description: str | None = Field(default=None)
    referring_physician_name: str | None = Field(default=None)
    modalities_in_study: str = Field(default="")  # sorted, backslash-joined
    number_of_series: int = 0
    number_of_instances: int = 0
    created_at: datetime = Field(default_factory=_now)


class Series(SQLModel, table=True):
    """One series of a study."""

    __tablename__ = "series"

    series_uid: str = Field(primary_key=True, max_length=64)
    study_uid: str = Field(foreign_key="study.study_uid", max_length=64, index=True)
    modality: str | None = Field(default=None, index=True)
    series_number: int | None = None
    series_description: str | None = Field(default=None)
    series_date: str | None = Field(default=None)
    series_time: str | None = Field(default=None)
    body_part_examined: str | None = Field(default=None)
    performed_procedure_step_start_date: str | None = Field(default=None)
    performed_procedure_step_start_time: str | None = Field(default=None)
    number_of_instances: int = 0


class Instance(SQLModel, table=True):
    """One stored SOP instance and where its encrypted blob lives."""

    __tablename__ = "instance"
    __table_args__ = (
        Index("ix_instance_series_number", "series_uid", "instance_number"),
        # Images whose burned-in declaration is not recorded yet (stored before migration
        # 0007): the training view finds them per study without scanning, and the index
        # empties as it records them.
        Index(
            "ix_instance_burned_in_unrecorded",
            "study_uid",
            sqlite_where=text(UNRECORDED_BURNED_IN),
            postgresql_where=text(UNRECORDED_BURNED_IN),
        ),
    )

    sop_instance_uid: str = Field(primary_key=True, max_length=64)
    series_uid: str = Field(foreign_key="series.series_uid", max_length=64)
    study_uid: str = Field(foreign_key="study.study_uid", max_length=64, index=True)
    sop_class_uid: str = Field(max_length=64)
    instance_number: int | None = None
    transfer_syntax_uid: str = Field(max_length=64)
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    bits_allocated: int | None = None
    photometric_interpretation: str | None = Field(default=None)
    # Burned In Annotation (0028,0301) is YES: text in the pixels, never served for training.
    # NULL only for an instance stored before the index recorded it (migration 0007).
    burned_in_annotation: bool | None = Field(default=None)
    size_bytes: int  # plaintext Part-10 size
    content_sha256: str = Field(max_length=64)  # of the plaintext, for the duplicate policy
    blob_name: str = Field(max_length=64, unique=True)
    # DICOM JSON of the header (bulk values replaced by references), sealed with the study DEK.
    metadata_enc: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=_now)


class StudyKey(SQLModel, table=True):
    """A study's data-encryption key, wrapped by the node's key-encryption key.

    Deleting this row destroys the only usable copy of the key: crypto-shredding.
    """

    __tablename__ = "study_key"

    study_uid: str = Field(primary_key=True, max_length=64)
    wrapped_dek: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    kek_id: str = Field(max_length=32)


class NodeMeta(SQLModel, table=True):
    """Small key/value facts about this archive (the KEK fingerprint, the schema's birth)."""

    __tablename__ = "node_meta"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=512)


# The workflow tables and local user accounts share this metadata: importing the index
# registers every table.
from node.storage import (  # noqa: E402
    links_index,  # noqa: F401
    transfers_index,  # noqa: F401
    users_index,  # noqa: F401
    workflow_index,  # noqa: F401
)
