"""Fuzzing the image services with generated images, some of them inconsistent: every call
either succeeds or raises one of the node's typed errors (a 4xx), never anything else."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from node.api.dicomweb.media import negotiate_pixel_data
from node.errors import NodeError
from node.services.dicom_json import to_dicom_json
from node.services.frames import frames
from node.services.render import render, thumbnail
from node.services.transcode import transcode
from tests.node.test_imaging_samples import make_image

PHOTOMETRIC = ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "HSV"]


@st.composite
def images(draw: st.DrawFn) -> pydicom.Dataset:
    """A small native image; with some probability an attribute or the data is wrong."""
    bits = draw(st.sampled_from([8, 16, 32]))
    samples = draw(st.sampled_from([1, 3]))
    frames_count = draw(st.integers(1, 3))
    rows, columns = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits]
    shape = (
        (frames_count, rows, columns, samples) if samples == 3 else (frames_count, rows, columns)
    )
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 2 ** min(bits, 16), size=shape).astype(dtype)
    photometric = "RGB" if samples == 3 else "MONOCHROME2"
    ds = make_image(pixels, photometric=photometric)
    if frames_count == 1:
        ds.NumberOfFrames = 1
    corruption = draw(
        st.sampled_from(["none", "photometric", "rows", "truncate", "bits", "frames"])
    )
    if corruption == "photometric":
        ds.PhotometricInterpretation = draw(st.sampled_from(PHOTOMETRIC))
    elif corruption == "rows":
        ds.Rows = ds.Rows + draw(st.integers(1, 5))
    elif corruption == "truncate":
        ds.PixelData = ds.PixelData[: draw(st.integers(0, max(len(ds.PixelData) - 2, 0)))]
    elif corruption == "bits":
        ds.BitsStored = draw(st.sampled_from([0, 1, 12, 33]))
    elif corruption == "frames":
        ds.NumberOfFrames = draw(st.sampled_from([0, 5, 100]))
    if draw(st.booleans()):
        ds.WindowCenter = draw(st.floats(-1e6, 1e6, allow_nan=False))
        ds.WindowWidth = draw(st.floats(-10, 1e6, allow_nan=False))
    return ds


def attempt(action: object) -> object:
    assert callable(action)
    try:
        return action()
    except NodeError as exc:
        assert 400 <= exc.http_status < 500, exc
        assert exc.message
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images(), st.integers(1, 4))
def test_generated_images_never_crash_the_services(ds: pydicom.Dataset, frame: int) -> None:
    data = attempt(lambda: transcode(ds, "1.2.840.10008.1.2"))
    if isinstance(data, bytes):
        assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == ds.SOPInstanceUID
    media = negotiate_pixel_data(None, "1.2.840.10008.1.2.1")
    attempt(lambda: frames(ds, [frame], media))
    png = attempt(
        lambda: render(ds, frame=frame, media_type="image/png", window=(10, 20, "LINEAR"))
    )
    if isinstance(png, bytes):
        assert Image.open(io.BytesIO(png)).size == (ds.Columns, ds.Rows)
    attempt(lambda: thumbnail(ds))
    attempt(lambda: transcode(ds, "1.2.840.10008.1.2.5"))
    to_dicom_json(ds, bulkdata_uri=str)
