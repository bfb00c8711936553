"""Preprocessing: rescale, windowing and VOI LUT, MONOCHROME1 inversion, resize, normalise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from federated.preprocess import (
    ImageDecodeError,
    dataset_to_input,
    normalize,
    presentation_array,
    resize,
    to_model_input,
    window,
)


def _ds(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


RAMP = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (8, 1))  # 8 x 64, 0..4032


def test_monochrome1_is_inverted_to_the_monochrome2_polarity() -> None:
    mono2 = presentation_array(_ds(RAMP))
    mono1 = presentation_array(_ds(4095 - RAMP, "MONOCHROME1"))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    assert mono2[0, 0] == 0.0 and mono2[0, -1] == 1.0  # bright = high attenuation


def test_window_center_width_clips_outside_the_window() -> None:
    ds = _ds(RAMP)
    ds.WindowCenter = 1024
    ds.WindowWidth = 1024
    img = presentation_array(ds)
    columns = RAMP[0]
    assert (img[0, columns <= 512] == 0).all()
    assert (img[0, columns >= 1536] == 1).all()
    inside = (columns > 600) & (columns < 1400)
    assert np.all(np.diff(img[0, inside]) > 0)  # monotonic within the window
    # PS3.3 C.11.2.1.2.1 linear function, checked at the centre
    assert window(np.array([1024.0]), 1024, 1024)[0] == pytest.approx(0.5, abs=1e-3)


def test_voi_lut_sequence_is_applied() -> None:
    ds = _ds(RAMP)
    lut = pydicom.Dataset()
    # A LUT that saturates half-way: first mapped value 0, 2048 entries, 16-bit output.
    lut.LUTDescriptor = [2048, 0, 16]
    lut.LUTData = list(np.linspace(0, 65535, 2048).astype(np.uint16))
    ds.VOILUTSequence = pydicom.Sequence([lut])
    img = presentation_array(ds)
    columns = RAMP[0]
    assert (img[0, columns >= 2048] == 1).all()
    assert img[0, 16] == pytest.approx(1024 / 2047, abs=0.01)


def test_rescale_slope_is_applied_before_windowing() -> None:
    ds = _ds(RAMP)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1000
    ds.WindowCenter = 1000  # in rescaled units: stored 1000 is the centre
    ds.WindowWidth = 400
    img = presentation_array(ds)
    stored = RAMP[0]
    assert (img[0, stored <= 896] == 0).all() and (img[0, stored >= 1104] == 1).all()


def test_resize_normalise_and_model_input() -> None:
    img = np.random.default_rng(0).random((300, 200)).astype(np.float32)
    small = resize(img, 64)
    assert small.shape == (64, 64) and small.dtype == np.float32
    assert resize(np.ones((16, 16), np.float32), 32).shape == (32, 32)
    x = to_model_input(img, 48)
    assert x.shape == (48, 48)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-4
    assert (normalize(np.full((8, 8), 0.3, np.float32)) == 0).all()
    # Shrinking averages (box filter): a dot 4 px wide survives as a quarter-intensity pixel.
    dot = np.zeros((64, 64), np.float32)
    dot[8:12, 8:12] = 1
    assert resize(dot, 8).max() == pytest.approx(0.25, abs=1e-6)


def test_bad_images_are_typed_errors() -> None:
    no_pixels = pydicom.Dataset()
    no_pixels.Modality = "DX"
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        presentation_array(no_pixels)
    colour = _ds(RAMP)
    colour.PhotometricInterpretation = "RGB"
    with pytest.raises(ImageDecodeError, match="greyscale"):
        presentation_array(colour)
    truncated = _ds(RAMP)
    truncated.PixelData = truncated.PixelData[:100]
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        presentation_array(truncated)
    with pytest.raises(ImageDecodeError):
        resize(np.zeros((2, 2, 2), np.float32), 4)


def test_real_chest_cr_in_jpeg_2000(shared_data: Path) -> None:
    ds = pydicom.dcmread(shared_data / "chest-cr-philips-j2k.dcm")
    img = presentation_array(ds)
    assert img.shape == (ds.Rows, ds.Columns)
    assert img.min() >= 0 and img.max() <= 1 and img.std() > 0.05
    x = dataset_to_input(ds, 64)
    assert x.shape == (64, 64) and np.isfinite(x).all()
