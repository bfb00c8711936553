"""One patient per study: the store path refuses an instance whose patient differs from the
patient its study is filed under, on SQLite and PostgreSQL, through the real store service."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from node.services import patients
from node.services.archive import Archive
from node.services.store import REASON_PATIENT_MISMATCH, StoreFailure, store_bytes
from node.storage.index import Instance, Study
from tests.node.conftest import store_concurrently
from tests.node.factories import make_ct, to_bytes

STUDY = Study.__table__  # type: ignore[attr-defined]
INSTANCE = Instance.__table__  # type: ignore[attr-defined]
MISMATCH = "the study is already filed under a different patient"


def _instance(study: Dataset, patient_id: str, seed: int, issuer: str | None = None) -> Dataset:
    ds = make_ct(seed=seed, study_uid=study.StudyInstanceUID, patient_id=patient_id)
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    return ds


def _refusal(archive: Archive, ds: Dataset) -> StoreFailure:
    with pytest.raises(StoreFailure) as refused:
        store_bytes(archive, to_bytes(ds))
    return refused.value


def _filed(archive: Archive, study_uid: str) -> tuple[set[str], int, int, str | None]:
    """The study's instances, its instance and series counters, and its Patient ID."""
    with archive.engine.connect() as conn:
        sops = conn.execute(
            select(INSTANCE.c.sop_instance_uid).where(INSTANCE.c.study_uid == study_uid)
        )
        row = conn.execute(
            select(STUDY.c.number_of_instances, STUDY.c.number_of_series, STUDY.c.patient_id).where(
                STUDY.c.study_uid == study_uid
            )
        ).one()
        return set(sops.scalars()), *row


def _blobs(archive: Archive) -> list[str]:
    return sorted(archive.blobs.names()) + sorted(p.name for p in archive.blobs.tmp_dir.iterdir())


def test_another_patients_instance_is_refused_and_leaves_nothing(archive: Archive) -> None:
    first = make_ct(seed=1, patient_id="MRN-A")
    store_bytes(archive, to_bytes(first))
    blobs = _blobs(archive)
    intruder = _instance(first, "MRN-B", seed=2)

    refused = _refusal(archive, intruder)

    assert (refused.code, refused.reason) == (REASON_PATIENT_MISMATCH, MISMATCH)
    assert refused.sop_instance_uid == intruder.SOPInstanceUID
    assert "MRN" not in refused.reason
    # Not indexed, counters untouched, its sealed blob gone: nothing of it remains.
    assert _filed(archive, first.StudyInstanceUID) == ({first.SOPInstanceUID}, 1, 1, "MRN-A")
    assert _blobs(archive) == blobs


def test_a_new_series_of_another_patient_is_refused_too(archive: Archive) -> None:
    first = make_ct(seed=3, patient_id="MRN-A")
    store_bytes(archive, to_bytes(first))
    same_series = _instance(first, "MRN-B", seed=4)
    same_series.SeriesInstanceUID = first.SeriesInstanceUID
    assert _refusal(archive, same_series).reason == MISMATCH
    assert _refusal(archive, _instance(first, "", seed=5)).reason == MISMATCH
    assert _filed(archive, first.StudyInstanceUID) == ({first.SOPInstanceUID}, 1, 1, "MRN-A")


def test_the_same_patient_is_filed_even_with_corrected_demographics(archive: Archive) -> None:
    first = make_ct(seed=6, patient_id="MRN-A", patient_name="Lee^Ana")
    store_bytes(archive, to_bytes(first))
    corrected = make_ct(
        seed=7, study_uid=first.StudyInstanceUID, patient_id="MRN-A", patient_name="Lee^Anna"
    )
    store_bytes(archive, to_bytes(corrected))
    sops, instances, _, patient_id = _filed(archive, first.StudyInstanceUID)
    assert sops == {first.SOPInstanceUID, corrected.SOPInstanceUID}
    assert (instances, patient_id) == (2, "MRN-A")


def test_an_issuer_that_differs_is_another_patient_a_missing_one_is_not(
    archive: Archive,
) -> None:
    first = _instance(make_ct(seed=8), "MRN-A", seed=8, issuer="HOSP-A")
    store_bytes(archive, to_bytes(first))

    # The same number from another assigning authority is someone else.
    assert _refusal(archive, _instance(first, "MRN-A", seed=9, issuer="HOSP-B")).reason == (
        MISMATCH
    )
    # A modality that omits the issuer sends the same patient.
    without = _instance(first, "MRN-A", seed=10)
    assert store_bytes(archive, to_bytes(without)).created
    assert _filed(archive, first.StudyInstanceUID)[0] == {
        first.SOPInstanceUID,
        without.SOPInstanceUID,
    }


def test_instances_under_a_merged_mrn_stay_with_the_study(archive: Archive) -> None:
    first = make_ct(seed=11, patient_id="OLD7")
    store_bytes(archive, to_bytes(first))
    with archive.engine.begin() as conn:
        patients.upsert_patient(conn, patients.PatientData("OLD7", "HOSP"))
        patients.merge_patients(conn, patients.PatientData("NEW7", "HOSP"), "OLD7", "HOSP")
    # The modality still had the old MRN, the next one already the surviving MRN.
    late = _instance(first, "OLD7", seed=12, issuer="HOSP")
    store_bytes(archive, to_bytes(late))
    current = _instance(first, "NEW7", seed=13, issuer="HOSP")
    store_bytes(archive, to_bytes(current))
    sops, instances, _, patient_id = _filed(archive, first.StudyInstanceUID)
    assert sops == {first.SOPInstanceUID, late.SOPInstanceUID, current.SOPInstanceUID}
    assert (instances, patient_id) == (3, "NEW7")
    # A patient merged into nobody on the study is still someone else.
    assert _refusal(archive, _instance(first, "MRN-Z", seed=14)).reason == MISMATCH


def test_first_instances_of_several_patients_at_once_file_only_one(archive: Archive) -> None:
    study = make_ct(seed=15)
    parts = [to_bytes(_instance(study, f"MRN-{i}", seed=16 + i)) for i in range(6)]
    raised = store_concurrently(archive, parts)
    assert [str(e) for e in raised] == [MISMATCH] * 5
    assert all(isinstance(e, StoreFailure) for e in raised)
    sops, instances, _, _ = _filed(archive, study.StudyInstanceUID)
    assert (len(sops), instances) == (1, 1)
    assert len(_blobs(archive)) == 1
