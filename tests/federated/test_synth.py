"""The synthetic chest X-ray generator: valid DICOM, labels, site skew, determinism."""

from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from federated.preprocess import presentation_array
from federated.synth import (
    DX_FOR_PRESENTATION,
    SynthError,
    site_prevalence,
    synthesize,
)
from federated.task import FINDINGS


def _rows(site: Path) -> list[dict[str, str]]:
    with (site / "labels.csv").open() as fh:
        return list(csv.DictReader(fh))


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_layout_and_labels(synth_sites: list[Path]) -> None:
    assert [s.name for s in synth_sites] == ["site-1", "site-2", "site-3"]
    for site in synth_sites:
        rows = _rows(site)
        assert len(rows) == 24
        assert len(list(site.glob("*.dcm"))) == 24
        for row in rows:
            assert (site / row["file"]).is_file()
            assert {row[f] for f in FINDINGS} <= {"0", "1"}
            ds = pydicom.dcmread(site / row["file"], stop_before_pixels=True)
            assert ds.SOPInstanceUID == row["sop_instance_uid"]
            assert ds.PatientID == row["patient_id"]


def test_dciodvfy_reports_no_errors_or_warnings_for_every_scanner_profile(tmp_path: Path) -> None:
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy, "dciodvfy (Debian dicom3tools) is needed: apt-get install dicom3tools"
    sites = synthesize(tmp_path, sites=5, per_site=2, seed=3, image_size=64)
    for site in sites:
        for path in sorted(site.glob("*.dcm")):
            result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
            report = result.stdout + result.stderr
            assert "DXImageForPresentation" in report
            assert "Error" not in report and "Warning" not in report, f"{path.name}: {report}"


def test_dicom_is_dx_for_presentation_with_obviously_fake_patients(
    synth_sites: list[Path],
) -> None:
    uids = set()
    for site in synth_sites:
        for path in site.glob("*.dcm"):
            ds = pydicom.dcmread(path)
            assert ds.SOPClassUID == DX_FOR_PRESENTATION
            assert ds.Modality == "DX" and ds.BodyPartExamined == "CHEST"
            assert ds.PresentationIntentType == "FOR PRESENTATION"
            assert str(ds.PatientName).startswith("SYNTHETIC^")
            assert ds.PatientID.startswith("SYN-")
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            uids |= {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}
            assert pydicom.uid.UID(ds.SOPInstanceUID).is_valid
    assert len(uids) == 3 * 3 * 24  # every UID unique


def test_sites_differ_in_scanner(synth_sites: list[Path]) -> None:
    first = [pydicom.dcmread(next(s.glob("*.dcm"))) for s in synth_sites]
    assert [d.PhotometricInterpretation for d in first] == [
        "MONOCHROME2",
        "MONOCHROME1",
        "MONOCHROME2",
    ]
    assert len({d.Rows for d in first}) == 3
    assert len({d.Manufacturer + d.ManufacturerModelName for d in first}) == 3
    # After inversion a MONOCHROME1 image has the same polarity: lungs darker than the spine.
    for ds in first:
        img = presentation_array(ds)
        n = img.shape[0]
        lung = img[int(0.35 * n) : int(0.5 * n), int(0.25 * n) : int(0.35 * n)].mean()
        spine = img[int(0.2 * n) : int(0.4 * n), int(0.48 * n) : int(0.52 * n)].mean()
        assert lung < spine - 0.1


def test_sites_differ_in_label_prevalence() -> None:
    prevalence = np.stack([site_prevalence(i) for i in range(3)])
    # Each site has three locally rare findings, and each finding is rare at one site.
    assert ((prevalence < 0.2).sum(axis=1) == 3).all()
    assert ((prevalence < 0.2).sum(axis=0) == 1).all()


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", sites=2, per_site=3, seed=5, image_size=48)
    b = synthesize(tmp_path / "b", sites=2, per_site=3, seed=5, image_size=48)
    c = synthesize(tmp_path / "c", sites=2, per_site=3, seed=6, image_size=48)
    assert [_digest(x) for x in a] == [_digest(x) for x in b]
    assert _digest(a[0]) != _digest(c[0])


def test_findings_change_the_image(tmp_path: Path) -> None:
    from federated.synth import render, site_scanner

    scanner = site_scanner(0, 128)
    normal = render(1, 0, 0, np.zeros(9, np.uint8), scanner).astype(float)
    for j, finding in enumerate(FINDINGS):
        labels = np.zeros(9, np.uint8)
        labels[j] = 1
        diseased = render(1, 0, 0, labels, scanner).astype(float)
        changed = np.abs(diseased - normal) > 0.05 * 4095
        assert changed.mean() > 0.002, f"{finding} is not drawn"


def test_hundreds_of_images_in_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    synthesize(tmp_path, sites=2, per_site=100, seed=0, image_size=128)
    assert time.monotonic() - started < 20


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SynthError):
        synthesize(tmp_path, sites=0, per_site=3, seed=0)
    with pytest.raises(SynthError):
        synthesize(tmp_path, sites=1, per_site=3, seed=0, image_size=8)
