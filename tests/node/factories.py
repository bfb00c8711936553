"""Factories for real DICOM test data (pydicom datasets, Part-10 bytes)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.services.deid_table import annex_e_table, vr_of
from tests.conftest import SHARED_DATA

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def to_bytes(ds: Dataset) -> bytes:
    """A dataset as Part-10 bytes."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_ct(
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "PM-TEST-1",
    patient_name: str = "Test^Patient",
    study_date: str = "20240115",
    size: int = 64,
    seed: int = 0,
) -> Dataset:
    """A small, valid CT instance with random (but seeded) pixels."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.Modality = "CT"
    ds.AccessionNumber = "ACC-1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    return ds


def real_sample_files() -> list[Path]:
    """The real scanner files in ../shared/data."""
    return sorted(SHARED_DATA.glob("*.dcm"))


def pydicom_image_files() -> list[Path]:
    """pydicom's bundled test files that are Part-10 images (have the DICM prefix and Pixel
    Data). Files without a preamble are raw datasets, which STOW-RS does not accept."""
    out = []
    # pydicom's own wheel, read directly: get_testdata_files() would try to download more.
    for path in sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm")):
        if "truncated" in path.name:  # deliberately broken: see pydicom_truncated_files
            continue
        head = path.read_bytes()[:132]
        if head[128:132] != b"DICM":
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=False)
        except Exception:
            continue
        if "PixelData" in ds and ds.get("SOPInstanceUID") and ds.get("StudyInstanceUID"):
            out.append(path)
    return sorted(out)


def ct_small() -> Path:
    """pydicom's CT_small.dcm."""
    return Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


def pixel_needles(data: bytes) -> list[bytes]:
    """Samples of an instance's pixel bytes to look for on disk (non-constant slices)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    px = ds.PixelData if "PixelData" in ds else b""
    out = []
    for frac in (0.3, 0.6):
        start = int(len(px) * frac)
        chunk = bytes(px[start : start + 48])
        if len(chunk) == 48 and len(set(chunk)) > 8:
            out.append(chunk)
    return out


def pydicom_truncated_files() -> list[Path]:
    """pydicom's deliberately truncated fixtures: an archive must refuse them."""
    root = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in root.rglob("*truncated*.dcm") if p.read_bytes()[128:132] == b"DICM")


# A value per VR that a de-identifier could not produce by accident.
ANNEX_E_ORIGINALS = {
    "PN": "Doe^Jane^Q",
    "LO": "Orig LO value 7731",
    "SH": "ORIG SH 7731",
    "LT": "original long text 7731",
    "ST": "original short text 7731",
    "UT": "original unlimited text 7731",
    "UC": "original UC 7731",
    "CS": "ORIG7731",
    "AE": "ORIGAE7731",
    "DA": "19750321",
    "TM": "101112",
    "DT": "19750321101112",
    "AS": "047Y",
    "DS": "73.1",
    "IS": "7731",
    "US": 7731,
    "UR": "https://hospital.example/7731",
    "UI": "1.2.826.0.1.3680043.8.498.7731",
    "OB": b"\x01\x07\x07\x03",
    "UN": b"\x01\x07\x07\x03",
}


def annex_e_item() -> Dataset:
    item = Dataset()
    item.PatientName = "Inner^Name"  # a Z row: must be emptied inside any kept sequence
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"  # a U row
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # not listed: kept
    return item


def annex_e_dataset() -> tuple[Dataset, list[tuple[int, str]]]:
    """A dataset holding every Table E.1-1 attribute whose VR pydicom knows, and those rows.

    Every value is one a de-identifier could not produce by accident (ANNEX_E_ORIGINALS).
    """
    ds = Dataset()
    rows: list[tuple[int, str]] = []
    for tag, action in annex_e_table().rows():
        vr = vr_of(int(tag))
        if vr is None or tag.group == 0x0002:
            continue  # newer than pydicom's dictionary / file meta (checked separately)
        vr = vr.split(" or ")[0]
        if vr == "SQ":
            ds.add_new(tag, "SQ", Sequence([annex_e_item()]))
        elif vr in ANNEX_E_ORIGINALS:
            ds.add_new(tag, vr, ANNEX_E_ORIGINALS[vr])
        else:
            continue
        rows.append((int(tag), action))
    ds.add_new(0x60003000, "OB", b"\x01\x02")  # Overlay Data (60xx,3000): X
    ds.add_new(0x60024000, "LT", "overlay comment naming the patient")  # (60xx,4000): X
    ds.add_new(0x50020010, "US", 3)  # Curve data group (50xx,xxxx): X
    block = ds.private_block(0x0011, "PACSMESH TEST", create=True)
    block.add_new(0x01, "LO", "private patient id 7731")
    ds.BurnedInAnnotation = "NO"
    return ds, rows
