"""Index fixtures for the query tests: both database backends, filled from real pydicom datasets.

The rows are built the way the store service builds them (counters, ModalitiesInStudy, the
upper-cased name twin); the encrypted header is replaced by opaque bytes, and the headers are
served to the query service by a loader over the datasets' own DICOM JSON.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from pydicom import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import Connection, Engine, select, update

from node.storage.db import open_index
from node.storage.index import Instance, Series, Study

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL_TEMPLATE = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def make_dataset(
    *,
    patient_name: str,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    modality: str = "CT",
    study_date: str | None = None,
    study_time: str | None = None,
    accession: str = "",
    study_description: str = "",
    referring: str = "",
    series_number: int = 1,
    instance_number: int = 1,
    sop_class_uid: str = CTImageStorage,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """A real DICOM dataset with the identifying attributes an archive indexes."""
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    if study_date is not None:
        ds.StudyDate = study_date
    if study_time is not None:
        ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyDescription = study_description
    ds.ReferringPhysicianName = referring
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.InstanceNumber = instance_number
    ds.Rows = 16
    ds.Columns = 16
    ds.BitsAllocated = 16
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Manufacturer = "pacsmesh-tests"
    ds.InstitutionName = "General Hospital"
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    return ds


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value not in (None, "") else None


def index_dataset(conn: Connection, ds: Dataset) -> None:
    """Insert a dataset's study/series/instance rows, maintaining counters as the store does."""
    study_t, series_t = Study.__table__, Series.__table__  # type: ignore[attr-defined]
    study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    known_study = select(study_t.c.study_uid).where(study_t.c.study_uid == study_uid)
    if conn.execute(known_study).first() is None:
        name = _text(ds, "PatientName")
        conn.execute(
            study_t.insert().values(
                study_uid=study_uid,
                patient_id=_text(ds, "PatientID"),
                patient_name=name,
                patient_name_search=name.upper() if name else None,
                patient_birth_date=_text(ds, "PatientBirthDate"),
                patient_sex=_text(ds, "PatientSex"),
                study_date=_text(ds, "StudyDate"),
                study_time=_text(ds, "StudyTime"),
                accession_number=_text(ds, "AccessionNumber"),
                study_id=_text(ds, "StudyID"),
                study_description=_text(ds, "StudyDescription"),
                referring_physician_name=_text(ds, "ReferringPhysicianName"),
                modalities_in_study="",
                number_of_series=0,
                number_of_instances=0,
                created_at=_now(),
            )
        )
    known_series = select(series_t.c.series_uid).where(series_t.c.series_uid == series_uid)
    if conn.execute(known_series).first() is None:
        conn.execute(
            series_t.insert().values(
                series_uid=series_uid,
                study_uid=study_uid,
                modality=_text(ds, "Modality"),
                series_number=ds.get("SeriesNumber"),
                series_description=_text(ds, "SeriesDescription"),
                body_part_examined=_text(ds, "BodyPartExamined"),
                number_of_instances=0,
            )
        )
        modalities: str = conn.execute(
            select(study_t.c.modalities_in_study).where(study_t.c.study_uid == study_uid)
        ).scalar_one()
        joined = set(filter(None, modalities.split("\\"))) | {str(ds.Modality)}
        conn.execute(
            update(study_t)
            .where(study_t.c.study_uid == study_uid)
            .values(
                modalities_in_study="\\".join(sorted(joined)),
                number_of_series=study_t.c.number_of_series + 1,
            )
        )
    conn.execute(
        Instance.__table__.insert().values(  # type: ignore[attr-defined]
            sop_instance_uid=str(ds.SOPInstanceUID),
            series_uid=series_uid,
            study_uid=study_uid,
            sop_class_uid=str(ds.SOPClassUID),
            instance_number=ds.get("InstanceNumber"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            rows=ds.get("Rows"),
            columns=ds.get("Columns"),
            number_of_frames=ds.get("NumberOfFrames"),
            bits_allocated=ds.get("BitsAllocated"),
            photometric_interpretation=_text(ds, "PhotometricInterpretation"),
            size_bytes=1000,
            content_sha256=secrets.token_hex(32),
            blob_name=uuid.uuid4().hex,
            metadata_enc=os.urandom(32),  # opaque, as sealed metadata is to the query service
            created_at=_now(),
        )
    )
    conn.execute(
        update(series_t)
        .where(series_t.c.series_uid == series_uid)
        .values(number_of_instances=series_t.c.number_of_instances + 1)
    )
    conn.execute(
        update(study_t)
        .where(study_t.c.study_uid == study_uid)
        .values(number_of_instances=study_t.c.number_of_instances + 1)
    )


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class HeaderStore:
    """The decrypted headers, as the store service's metadata loader would return them."""

    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)

    def add(self, ds: Dataset) -> None:
        self.headers[str(ds.SOPInstanceUID)] = ds.to_json_dict()

    def load(self, sop_instance_uids: list[str]) -> dict[str, dict[str, Any]]:
        self.calls.append(list(sop_instance_uids))
        return {uid: self.headers[uid] for uid in sop_instance_uids if uid in self.headers}


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def index_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """A migrated, empty index on each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("index") / "index.sqlite"
        engine = open_index(f"sqlite:///{path}")
        yield engine
        engine.dispose()
        return
    name = f"pacsmesh_qido_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = open_index(PG_URL_TEMPLATE.format(name=name))
    try:
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
