"""Frame retrieval (PS3.18 §8.3.5.1.2): native slices, original fragments, decoded frames."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from node.api.dicomweb.media import negotiate_pixel_data
from node.errors import InvalidRequestError, NotAcceptableError, NotFoundError
from node.services.frames import all_frames, frames, parse_frame_list
from node.services.syntaxes import Representation
from tests.node.test_imaging_samples import (
    UNDECODABLE,
    decodable_names,
    make_image,
    read,
    reference_pixels,
    syntax,
)

OCTET = 'multipart/related; type="application/octet-stream"'
ANY = 'multipart/related; type="*/*"'
DECODED = Representation("application/octet-stream", "1.2.840.10008.1.2.1", True)


def frame_count(name: str) -> int:
    return int(read(name).get("NumberOfFrames") or 1)


def as_frames(name: str) -> np.ndarray[Any, Any]:
    """The reference pixels with a leading frame axis."""
    ref = reference_pixels(name)
    return ref if frame_count(name) > 1 else ref[None]


def decode_payload(payload: bytes, like: np.ndarray[Any, Any], bits: int) -> np.ndarray[Any, Any]:
    if bits == 1:
        bits_array = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")
        return bits_array[: like.size].reshape(like.shape)
    return np.frombuffer(payload, like.dtype.newbyteorder("<")).reshape(like.shape)


@pytest.mark.parametrize("name", decodable_names())
def test_octet_stream_frames_match_pixel_array(name: str) -> None:
    """Every frame as octet-stream equals the matching slice of pydicom's pixel_array."""
    ds = read(name)
    media = negotiate_pixel_data(OCTET, syntax(name))
    assert media.transfer_syntax == "1.2.840.10008.1.2.1"
    count = frame_count(name)
    parts = frames(ds, list(range(1, count + 1)), media)
    assert len(parts) == count
    expected = as_frames(name)
    for index, (payload, content_type) in enumerate(parts):
        assert content_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        if ds.PhotometricInterpretation == "YBR_FULL_422" and not UID(syntax(name)).is_compressed:
            # Native YBR_FULL_422 goes as stored: 2 bytes per pixel, subsampled chroma.
            size = ds.Rows * ds.Columns * 2
            assert payload == ds.PixelData[index * size : (index + 1) * size]
            continue
        got = decode_payload(payload, expected[index], int(ds.BitsAllocated))
        assert np.array_equal(got, expected[index])


@pytest.mark.parametrize("name", [n for n in decodable_names() if UID(syntax(n)).is_compressed])
def test_compressed_frames_go_as_stored_fragments(name: str) -> None:
    """Accepting any type returns each frame's original bitstream with its media type."""
    ds = read(name)
    media = negotiate_pixel_data(ANY, syntax(name))
    assert media.transfer_syntax == syntax(name)
    count = frame_count(name)
    parts = frames(ds, list(range(count, 0, -1)), media)
    stored = list(generate_frames(ds.PixelData, number_of_frames=count))
    assert [payload for payload, _ in parts] == stored[::-1]
    assert all(ct == f"{media.media_type}; transfer-syntax={syntax(name)}" for _, ct in parts)


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("SC_rgb_jpeg.dcm", "image/jpeg"),
        ("chest-cr-philips-j2k.dcm", "image/jp2"),
        ("examples_ybr_color.dcm", "image/jpeg"),
    ],
)
def test_fragments_open_as_images(name: str, media_type: str) -> None:
    """A JPEG or JPEG 2000 frame payload is a complete image a generic decoder opens."""
    ds = read(name)
    media = negotiate_pixel_data(f'multipart/related; type="{media_type}"', syntax(name))
    assert media.media_type == media_type
    ((payload, _),) = frames(ds, [1], media)
    image = Image.open(io.BytesIO(payload))
    assert image.size == (ds.Columns, ds.Rows)


def test_one_frame_of_a_multiframe_compressed_instance_is_decoded_alone() -> None:
    """Frame 17 of a 30-frame YBR JPEG decodes to the 17th slice of pixel_array."""
    ds = read("examples_ybr_color.dcm")
    ((payload, _),) = frames(ds, [17], DECODED)
    expected = as_frames("examples_ybr_color.dcm")[16]
    assert np.array_equal(decode_payload(payload, expected, 8), expected)


def test_native_multiframe_frames_in_request_order_with_repeats() -> None:
    """RT dose (15 native frames): frames come in the order asked, repeats allowed."""
    name = "rtdose.dcm"
    parts = frames(read(name), [15, 1, 15], DECODED)
    expected = as_frames(name)
    for (payload, _), number in zip(parts, [15, 1, 15], strict=True):
        assert np.array_equal(
            decode_payload(payload, expected[number - 1], 32), expected[number - 1]
        )


def test_all_frames_for_pixel_bulk_data() -> None:
    """The Pixel Data bulk resource of a 2-frame RLE image is its two fragments, in order."""
    ds = read("SC_rgb_rle_2frame.dcm")
    media = negotiate_pixel_data(None, syntax("SC_rgb_rle_2frame.dcm"))
    parts = all_frames(ds, media)
    assert [p for p, _ in parts] == list(generate_frames(ds.PixelData, number_of_frames=2))


def test_native_multiframe_rgb() -> None:
    """A generated 3-frame RGB image gives each frame's pixel-interleaved bytes."""
    pixels = np.arange(3 * 4 * 5 * 3, dtype=np.uint8).reshape(3, 4, 5, 3)
    ds = make_image(pixels, photometric="RGB")
    parts = frames(ds, [2, 3], DECODED)
    assert [payload for payload, _ in parts] == [pixels[1].tobytes(), pixels[2].tobytes()]


def test_one_bit_frames_that_do_not_start_on_a_byte() -> None:
    """3x3 1-bit frames (9 bits each) are unpacked and repacked from bit 0 (PS3.5 §8.1.1)."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, size=(4, 3, 3), dtype=np.uint8)
    ds = make_image(bits)
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelData = np.packbits(bits.ravel(), bitorder="little").tobytes()
    parts = frames(ds, [1, 2, 3, 4], DECODED)
    for (payload, _), frame in zip(parts, bits, strict=True):
        assert len(payload) == 2
        assert np.array_equal(decode_payload(payload, frame, 1), frame)


def test_float_pixel_data_frames() -> None:
    """Float Pixel Data frames come back as their little-endian float32 values."""
    values = np.linspace(-1.5, 2.5, 2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    ds = make_image(values.view(np.uint32))
    del ds.PixelData
    del ds.PixelRepresentation
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.tobytes()
    ((payload, _),) = frames(ds, [2], DECODED)
    assert np.array_equal(np.frombuffer(payload, "<f4").reshape(4, 5), values[1])


@pytest.mark.parametrize("numbers", [[0], [2], [1, 99]])
def test_frames_out_of_range_are_404(numbers: list[int]) -> None:
    """Frame 0 is a bad request; a frame past Number of Frames is not found."""
    expected = InvalidRequestError if 0 in numbers else NotFoundError
    with pytest.raises(expected):
        frames(read("CT_small.dcm"), numbers, DECODED)


def test_empty_frame_list_is_400() -> None:
    with pytest.raises(InvalidRequestError):
        frames(read("CT_small.dcm"), [], DECODED)


def test_instance_without_pixel_data_is_404() -> None:
    ds = read("CT_small.dcm")
    del ds.PixelData
    with pytest.raises(NotFoundError):
        frames(ds, [1], DECODED)


@pytest.mark.parametrize("name", sorted(set(UNDECODABLE) - {"meta_missing_tsyntax.dcm"}))
def test_undecodable_frames_are_406(name: str) -> None:
    """Frames of samples no plugin can decode are 406 when decoding is needed."""
    ds = read(name)
    with pytest.raises(NotAcceptableError):
        frames(ds, [1], DECODED)


def test_compressed_frames_cannot_be_sent_as_another_compressed_type() -> None:
    """Asking for a JPEG frame of a JPEG 2000 instance is 406 (no re-encoding)."""
    with pytest.raises(NotAcceptableError):
        negotiate_pixel_data(
            'multipart/related; type="image/jpeg"', syntax("MR_small_jp2klossless.dcm")
        )
    wrong = Representation("image/jpeg", "1.2.840.10008.1.2.4.50", True)
    with pytest.raises(NotAcceptableError):
        frames(read("MR_small_jp2klossless.dcm"), [1], wrong)


@pytest.mark.parametrize(
    ("text", "numbers"), [("1", [1]), ("1,2,3", [1, 2, 3]), ("3, 1", [3, 1]), ("7,7", [7, 7])]
)
def test_parse_frame_list(text: str, numbers: list[int]) -> None:
    assert parse_frame_list(text) == numbers


@pytest.mark.parametrize("text", ["", "0", "a", "1,,2", "-1", "1.5", "1;2", "١"])
def test_parse_frame_list_rejects(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_frame_list(text)
