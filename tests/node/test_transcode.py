"""Transcoding for WADO-RS: every sample comes back pixel-identical in the syntaxes offered."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

from node.errors import NotAcceptableError
from node.services.transcode import transcode
from tests.node.test_imaging_samples import (
    UNDECODABLE,
    decodable_names,
    make_image,
    read,
    reference_pixels,
    shared_names,
    syntax,
)

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def reread(data: bytes) -> Dataset:
    """Parse transcoded bytes as a client would, and check they form a consistent instance."""
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(data))
    syntax_uid = ds.file_meta.TransferSyntaxUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    if not syntax_uid.is_compressed:
        expected = get_expected_length(ds, "bytes")
        # Stored padding after the last frame (MR_small_padded.dcm) is kept as it was.
        assert len(ds.PixelData) >= expected
        assert "PlanarConfiguration" not in ds or ds.SamplesPerPixel > 1
    return ds


@pytest.mark.parametrize("target", [EXPLICIT, IMPLICIT])
@pytest.mark.parametrize("name", decodable_names())
def test_native_targets_are_pixel_identical(name: str, target: str) -> None:
    """Every decodable sample, transcoded to Explicit or Implicit VR LE, has the same pixels."""
    original = read(name)
    out = reread(transcode(original, target))
    assert out.file_meta.TransferSyntaxUID == target
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert out.get("StudyInstanceUID") == original.get("StudyInstanceUID")
    decoded = out.pixel_array
    expected = reference_pixels(name)
    assert decoded.shape == expected.shape
    assert np.array_equal(decoded, expected)
    if syntax(name) != EXPLICIT and not UID(syntax(name)).is_compressed:
        # A native re-encoding keeps the photometric interpretation as stored.
        assert out.PhotometricInterpretation == original.PhotometricInterpretation


def attributes_json(ds: Dataset) -> dict[str, object]:
    """DICOM JSON of everything but pixel data and retired group lengths."""
    doc = ds.to_json_dict(suppress_invalid_tags=True)
    return {k: v for k, v in doc.items() if not k.startswith("7FE0") and not k.endswith("0000")}


@pytest.mark.parametrize("target", [EXPLICIT, IMPLICIT])
@pytest.mark.parametrize(
    "name",
    [
        n
        for n in decodable_names()
        if not UID(syntax(n)).is_compressed and syntax(n) != "1.2.840.10008.1.2.2"
    ],
)
def test_attributes_survive_native_transcoding(name: str, target: str) -> None:
    """Every attribute, private ones and sequences included, reads back the same."""
    original = read(name)
    out = reread(transcode(original, target))
    ours, theirs = attributes_json(out), attributes_json(original)
    if target == IMPLICIT:
        # Implicit VR cannot carry a VR: private and unknown elements come back as UN.
        ours = {k: v for k, v in ours.items() if int(k[:4], 16) % 2 == 0}
        theirs = {k: v for k, v in theirs.items() if int(k[:4], 16) % 2 == 0}
    assert ours == theirs


@pytest.mark.parametrize(
    ("name", "target"),
    [(name, RLE) for name in shared_names()]
    + [("mr-j2k-lossless.dcm", DEFLATED), ("mr-j2k-lossless.dcm", J2K_LOSSLESS)],
)
def test_shared_samples_in_every_offered_syntax(name: str, target: str) -> None:
    """The real scanner files round-trip through RLE; deflate and JPEG 2000 lossless too."""
    out = reread(transcode(read(name), target))
    assert out.file_meta.TransferSyntaxUID == target
    assert np.array_equal(out.pixel_array, reference_pixels(name))


@pytest.mark.parametrize(
    "name",
    ["SC_rgb_rle_2frame.dcm", "MR_small_jpeg_ls_lossless.dcm", "examples_ybr_color.dcm"],
)
def test_rle_target_from_compressed_colour_and_multiframe(name: str) -> None:
    """RLE encoding of decoded JPEG-LS, multi-frame RLE and 30-frame YBR JPEG is lossless."""
    out = reread(transcode(read(name), RLE))
    assert np.array_equal(out.pixel_array, reference_pixels(name))
    assert int(out.get("NumberOfFrames", 1)) == int(read(name).get("NumberOfFrames", 1))


def test_lossless_decompression_reproduces_stored_pixels_exactly() -> None:
    """A lossless JPEG 2000 CR decompresses to the same pixels its RLE re-encoding holds."""
    name = "extremity-cr-j2k-lossless.dcm"
    native = reread(transcode(read(name), EXPLICIT))
    rle = reread(transcode(read(name), RLE))
    assert np.array_equal(native.pixel_array, rle.pixel_array)
    assert native.PhotometricInterpretation == "MONOCHROME1"


def test_ybr_jpeg_is_delivered_as_rgb() -> None:
    """A YBR_FULL_422 JPEG decodes to RGB, and the attributes say so (PS3.3 C.7.6.3.1.2)."""
    original = read("SC_rgb_dcmtk_+eb+cy+np.dcm")
    assert original.PhotometricInterpretation == "YBR_FULL_422"
    out = reread(transcode(original, EXPLICIT))
    assert out.PhotometricInterpretation == "RGB"
    assert out.PlanarConfiguration == 0
    assert out.LossyImageCompression == "01"
    assert np.array_equal(out.pixel_array, reference_pixels("SC_rgb_dcmtk_+eb+cy+np.dcm"))


def test_jpeg2000_ybr_rct_is_delivered_as_rgb() -> None:
    """A JPEG 2000 colour image (YBR_RCT) decodes to RGB pixels described as RGB."""
    out = reread(transcode(read("GDCMJ2K_TextGBR.dcm"), EXPLICIT))
    assert out.PhotometricInterpretation == "RGB"
    assert np.array_equal(out.pixel_array, reference_pixels("GDCMJ2K_TextGBR.dcm"))


def test_lossy_source_keeps_its_lossy_flag() -> None:
    """The lossy chest CR keeps Lossy Image Compression and its ratio after decompression."""
    original = read("chest-cr-philips-j2k.dcm")
    out = reread(transcode(original, EXPLICIT))
    assert out.get("LossyImageCompression") == original.get("LossyImageCompression")
    assert out.get("LossyImageCompressionRatio") == original.get("LossyImageCompressionRatio")


def test_stale_group_lengths_are_dropped() -> None:
    """Retired group lengths (693_J2KI has them) are dropped; the file meta one is kept."""
    original = read("693_J2KI.dcm")
    assert any(tag.element == 0 for tag in original.keys())  # noqa: SIM118
    out = reread(transcode(original, RLE))
    assert not any(tag.element == 0 for tag in out.keys())  # noqa: SIM118
    assert "FileMetaInformationGroupLength" in out.file_meta


def test_big_endian_source_becomes_little_endian() -> None:
    """The retired big-endian syntax is re-encoded with its words swapped, pixels unchanged."""
    out = reread(transcode(read("MR_small_bigendian.dcm"), EXPLICIT))
    assert out.pixel_array.dtype.byteorder in ("<", "=")
    assert np.array_equal(out.pixel_array, reference_pixels("MR_small_bigendian.dcm"))


def test_one_bit_big_endian_source() -> None:
    """A 1-bit big-endian segmentation-like image keeps its packed bits."""
    out = reread(transcode(read("liver_expb_1frame.dcm"), EXPLICIT))
    assert np.array_equal(out.pixel_array, reference_pixels("liver_expb_1frame.dcm"))


def test_caller_dataset_is_not_changed() -> None:
    """Transcoding leaves the caller's dataset as it was: syntax, pixels and attributes."""
    original = read("SC_rgb_jpeg_dcmtk.dcm")
    before = {elem.tag: (elem.VR, elem.value) for elem in original}
    transcode(original, RLE)
    assert original.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert {elem.tag: (elem.VR, elem.value) for elem in original} == before
    assert original.PhotometricInterpretation == "YBR_FULL"


def test_synthetic_multiframe_signed_image() -> None:
    """A generated 3-frame signed 12-bit image survives Implicit VR and RLE unchanged."""
    pixels = np.arange(3 * 8 * 10, dtype=np.int16).reshape(3, 8, 10) - 120
    ds = make_image(pixels, bits_stored=12, signed=True, RescaleSlope=1, RescaleIntercept=-1024)
    for target in (IMPLICIT, RLE):
        out = reread(transcode(ds, target))
        assert np.array_equal(out.pixel_array, pixels)
        assert out.NumberOfFrames == 3


@pytest.mark.parametrize(
    "target",
    ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.2", "1.2.3.4"],
)
def test_targets_not_offered_are_406(target: str) -> None:
    """Lossy JPEG, JPEG-LS, big endian and unknown UIDs are not produced: NotAcceptableError."""
    with pytest.raises(NotAcceptableError, match="not offered"):
        transcode(read("CT_small.dcm"), target)


@pytest.mark.parametrize("name", sorted(UNDECODABLE))
def test_undecodable_samples_are_406(name: str) -> None:
    """Every sample whose pixels cannot be decoded or trusted gives 406, never a crash."""
    with pytest.raises(NotAcceptableError) as info:
        transcode(read(name), EXPLICIT)
    assert info.value.http_status == 406
    assert info.value.message


def test_reasons_do_not_echo_attribute_values() -> None:
    """A 406 reason never repeats a stored value (it could be personal data)."""
    ds = read("badVR.dcm")
    with pytest.raises(NotAcceptableError) as info:
        transcode(ds, EXPLICIT)
    assert "1A" not in info.value.message
    assert "Image Pixel attributes are invalid" in info.value.message


def test_encoder_limits_are_406() -> None:
    """A 16x16 CT is below the JPEG 2000 encoder's minimum size: 406 with the reason."""
    with pytest.raises(NotAcceptableError, match="cannot be encoded"):
        transcode(read("liver_1frame.dcm"), RLE)
