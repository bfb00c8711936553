"""De-identification by the PS3.15 Annex E Basic Profile, on real files and on datasets that
carry every attribute of Table E.1-1."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from node.services.deid import (
    DeidentificationRefusedError,
    DeidOptions,
    deidentify,
)
from tests.conftest import SHARED_DATA
from tests.node.factories import ANNEX_E_ORIGINALS, annex_e_dataset, annex_e_item, make_ct

SECRET = b"consortium-training-secret-0001"
OTHER_SECRET = b"another-node-secret-000000000002"


def test_every_annex_e_attribute_loses_its_original_value() -> None:
    ds, rows = annex_e_dataset()
    assert len(rows) > 550  # the whole table, not a sample
    original = copy.deepcopy(ds)
    report = deidentify(ds, SECRET)

    for tag, action in rows:
        before = original[tag]
        if action in ("X", "X/Z", "X/D", "X/Z/D"):
            assert tag not in ds, f"{Tag(tag)} ({action}) survived"
        elif action in ("Z", "Z/D"):
            assert tag in ds and ds[tag].is_empty, f"{Tag(tag)} ({action}) not emptied"
        elif action == "D":
            assert tag in ds and not ds[tag].is_empty, f"{Tag(tag)} (D) lost its dummy"
            if before.VR == "SQ":
                assert len(ds[tag].value) == 1 and len(ds[tag].value[0]) == 0
            else:
                assert ds[tag].value != before.value, f"{Tag(tag)} (D) kept its value"
        elif action == "U":
            assert str(ds[tag].value).startswith("2.25."), f"{Tag(tag)} (U) kept its UID"
        elif action == "X/Z/U*":
            item = ds[tag].value[0]
            assert item["PatientName"].is_empty
            assert item.ReferencedSOPInstanceUID != "1.2.826.0.1.3680043.8.498.99"
            assert item.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        else:
            pytest.fail(f"unknown action {action}")
    for gone in (0x60003000, 0x60024000, 0x50020010):
        assert gone not in ds
    assert not any(elem.tag.is_private for elem in ds.iterall())
    assert report.private_removed == 2  # the private creator and its element
    assert ds.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100"]
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    # No original text of any VR is left anywhere, nested sequences included.
    leftovers = {str(v) for v in ANNEX_E_ORIGINALS.values()}
    for elem in ds.iterall():
        if elem.VR != "SQ":
            assert str(elem.value) not in leftovers, f"{elem.tag} kept an original value"


def test_kept_unlisted_sequences_are_cleaned_inside() -> None:
    ds = make_ct()
    outer = Dataset()
    outer.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.5"  # U row, nested in an unlisted SQ
    outer.ReferencedInstanceSequence = Sequence([annex_e_item()])
    ds.ReferencedSeriesSequence = Sequence([outer])
    deidentify(ds, SECRET)
    item = ds.ReferencedSeriesSequence[0]
    assert item.SeriesInstanceUID.startswith("2.25.")
    assert item.ReferencedInstanceSequence[0]["PatientName"].is_empty


def _real_files() -> list[Path]:
    return sorted(SHARED_DATA.glob("*.dcm"))


@pytest.mark.parametrize("path", _real_files(), ids=lambda p: p.name)
def test_real_file_still_parses_with_unchanged_pixels(path: Path) -> None:
    ds = pydicom.dcmread(path)
    pixels = ds.PixelData
    study, sop = ds.StudyInstanceUID, ds.SOPInstanceUID
    ds.add_new(0x00091010, "LO", "vendor private")
    deidentify(ds, SECRET)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    again = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert again.PixelData == pixels
    assert again.StudyInstanceUID != study and again.StudyInstanceUID.startswith("2.25.")
    assert again.file_meta.MediaStorageSOPInstanceUID == again.SOPInstanceUID != sop
    assert again.PatientIdentityRemoved == "YES"
    assert "PatientBirthDate" not in again or again.PatientBirthDate == ""
    assert not any(elem.tag.is_private for elem in again.iterall())


def test_relations_between_instances_of_one_study_survive() -> None:
    first = pydicom.dcmread(SHARED_DATA / "chest-cr-philips-j2k.dcm")
    second = copy.deepcopy(first)
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = (
        first.SOPInstanceUID + ".2"
    )
    other_series = copy.deepcopy(first)
    other_series.SeriesInstanceUID = first.SeriesInstanceUID + ".9"
    other_series.SOPInstanceUID = first.SOPInstanceUID + ".3"
    ref = Dataset()
    ref.ReferencedSOPClassUID = first.SOPClassUID
    ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
    other_series.SourceImageSequence = Sequence([ref])
    for ds in (first, second, other_series):
        deidentify(ds, SECRET)
    assert first.StudyInstanceUID == second.StudyInstanceUID == other_series.StudyInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID != other_series.SeriesInstanceUID
    assert len({first.SOPInstanceUID, second.SOPInstanceUID, other_series.SOPInstanceUID}) == 3
    assert other_series.SourceImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID


def test_same_secret_same_output_other_secret_other_uids() -> None:
    source = make_ct(seed=3)
    a, b, c = copy.deepcopy(source), copy.deepcopy(source), copy.deepcopy(source)
    deidentify(a, SECRET)
    deidentify(b, SECRET)
    deidentify(c, OTHER_SECRET)
    assert a == b
    assert a.StudyInstanceUID != c.StudyInstanceUID
    assert a.SOPInstanceUID != c.SOPInstanceUID


def _patient_with_characteristics() -> Dataset:
    ds = make_ct(study_date="20240115")
    ds.PatientSex = "F"
    ds.PatientAge = "047Y"
    ds.PatientWeight = "61.5"
    ds.PatientBirthDate = "19770412"
    ds.SeriesDate = "20240115"
    ds.AcquisitionDateTime = "20240115101112"
    return ds


def test_basic_profile_removes_dates_and_characteristics() -> None:
    ds = _patient_with_characteristics()
    deidentify(ds, SECRET)
    assert ds["StudyDate"].is_empty  # Z
    assert "SeriesDate" not in ds and "AcquisitionDateTime" not in ds  # X/D, X/Z/D
    assert ds["PatientSex"].is_empty  # Z
    assert "PatientAge" not in ds and "PatientWeight" not in ds  # X


def test_options_retain_dates_and_characteristics() -> None:
    ds = _patient_with_characteristics()
    options = DeidOptions(retain_full_dates=True, retain_patient_characteristics=True)
    deidentify(ds, SECRET, options)
    assert ds.StudyDate == ds.SeriesDate == "20240115"
    assert ds.AcquisitionDateTime == "20240115101112"
    assert ds["PatientBirthDate"].is_empty  # identifies the patient, not the care episode
    assert (ds.PatientSex, ds.PatientAge, ds.PatientWeight) == ("F", "047Y", 61.5)
    assert ds["PatientName"].is_empty and ds["PatientID"].is_empty
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113106", "113108"]
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_burned_in_annotation_is_refused_untouched() -> None:
    ds = make_ct()
    ds.BurnedInAnnotation = "YES"
    before = copy.deepcopy(ds)
    with pytest.raises(DeidentificationRefusedError, match="burned-in"):
        deidentify(ds, SECRET)
    assert ds == before


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        deidentify(make_ct(), b"short")
