"""The sample corpus the imaging tests share: ../shared/data plus pydicom's own image files.

Files are read once per test session (bytes cached); each test parses a fresh Dataset from
those bytes, so no test sees another's cached pixels or edits. Reference pixel arrays are
decoded once and cached too.
"""

from __future__ import annotations

import io
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from node.services.pixels import transfer_syntax
from tests.conftest import SHARED_DATA

# pydicom samples with Pixel Data that no installed plugin (or pydicom itself) can decode, and
# why. The services answer each with 406, never a 500; test_undecodable_samples_are_known
# keeps this list honest.
UNDECODABLE = {
    "JPEG-lossy.dcm": "corrupt JPEG Extended 12-bit stream; libjpeg rejects it (GDCM tolerates)",
    "JPEG2000-embedded-sequence-delimiter.dcm": "stray delimiter in fragment; no header",
    "MR_truncated.dcm": "Pixel Data shorter than Rows x Columns x Bits Allocated",
    "badVR.dcm": "Number of Frames is '1A'",
    "meta_missing_tsyntax.dcm": "no Transfer Syntax UID in the file meta information",
    "nested_priv_SQ.dcm": "Pixel Data without an Image Pixel module",
}


@cache
def sample_bytes() -> dict[str, bytes]:
    """Name → Part-10 bytes of every sample with pixel data (shared data names first)."""
    samples: dict[str, bytes] = {}
    paths = sorted(SHARED_DATA.glob("*.dcm")) + sorted(Path(p) for p in get_testdata_files())
    for path in paths:
        if not path.is_file() or path.name in samples:
            continue
        data = path.read_bytes()
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, ValueError, OSError):
            continue  # not a Part-10 file (dumps, JSON, files without meta): not stored
        if "PixelData" in ds:
            samples[path.name] = data
    return samples


@cache
def dicom_file_bytes() -> dict[str, bytes]:
    """Name → bytes of every Part-10 sample, with or without pixel data, charset files too."""
    files: dict[str, bytes] = dict(sample_bytes())
    paths = sorted(Path(p) for p in get_testdata_files()) + sorted(
        Path(p) for p in get_charset_files()
    )
    for path in paths:
        if not path.is_file() or path.name in files:
            continue
        data = path.read_bytes()
        try:
            pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, ValueError, OSError):
            continue
        files[path.name] = data
    return files


def shared_names() -> list[str]:
    """The real scanner files from ../shared/data."""
    return sorted(p.name for p in SHARED_DATA.glob("*.dcm"))


def read(name: str) -> Dataset:
    """A fresh Dataset of sample `name`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(dicom_file_bytes()[name]))


def decodable_names() -> list[str]:
    """Samples whose pixel data pydicom decodes."""
    return sorted(name for name in sample_bytes() if name not in UNDECODABLE)


@cache
def reference_pixels(name: str) -> np.ndarray[Any, Any]:
    """`ds.pixel_array` of the original sample, decoded once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read(name).pixel_array


def syntax(name: str) -> str:
    """The stored transfer syntax of sample `name`."""
    return str(transfer_syntax(read(name)))


def make_image(
    pixels: np.ndarray[Any, Any],
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    signed: bool = False,
    **attributes: Any,
) -> Dataset:
    """A real Secondary Capture dataset holding `pixels` natively (frames, rows, cols[, spp])."""
    if pixels.ndim == 2 or (pixels.ndim == 3 and photometric == "RGB"):
        pixels = pixels[None]
    frames, rows, columns = pixels.shape[:3]
    samples = pixels.shape[3] if pixels.ndim == 4 else 1
    bits = pixels.dtype.itemsize * 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    return ds


def test_corpus_covers_every_syntax_family() -> None:
    """The corpus holds native, JPEG, JPEG-LS, JPEG 2000 and RLE sources, and the shared files."""
    syntaxes = {syntax(name) for name in decodable_names()}
    for uid in (
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    ):
        assert uid in syntaxes, uid
    assert set(shared_names()) <= set(decodable_names())
    assert len(shared_names()) == 4


def test_undecodable_samples_are_known() -> None:
    """Exactly the listed samples fail to decode in pydicom; every other one decodes."""
    failing = set()
    for name in sample_bytes():
        try:
            reference_pixels(name)
        except Exception:
            failing.add(name)
    assert failing == set(UNDECODABLE)
