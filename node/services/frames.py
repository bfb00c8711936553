"""Frame pixel data for WADO-RS `frames/{list}` and pixel bulk data (PS3.18 §8.3.5.1.2, §8.7.3.3).

Native pixel data is sliced straight from the stored value (no decoding); a compressed instance
either sends its original frame fragments (the compressed media type negotiated) or decodes only
the frames asked for. Output bytes are little endian (the octet-stream default syntax).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame

from node.errors import InvalidRequestError, NotAcceptableError, NotFoundError
from node.services.pixels import (
    DECODE_ERRORS_ALL,
    DOUBLE_FLOAT_PIXEL_DATA_TAG,
    FLOAT_PIXEL_DATA_TAG,
    PIXEL_DATA_TAG,
    check_frame_numbers,
    check_native_pixel_data,
    decode,
    is_big_endian,
    native_bytes,
    number_of_frames,
    short_reason,
    transfer_syntax,
)
from node.services.syntaxes import (
    APPLICATION_OCTET_STREAM,
    EXPLICIT_VR_LITTLE_ENDIAN,
    Representation,
)

# Guard against a URL naming millions of frames (each part costs a copy of a frame).
MAX_FRAMES_PER_REQUEST = 10_000


def parse_frame_list(text: str) -> list[int]:
    """Parse the `{frames}` path segment: comma-separated 1-based numbers (PS3.18 §8.3.5.1.2)."""
    items = text.split(",")
    if not text.strip() or len(items) > MAX_FRAMES_PER_REQUEST:
        raise InvalidRequestError("the frame list must name 1 to 10000 frame numbers")
    numbers: list[int] = []
    for item in items:
        item = item.strip()
        if not item.isdigit() or not item.isascii():
            raise InvalidRequestError(f"frame number {item[:20]!r} is not a positive integer")
        number = int(item)
        if number < 1:
            raise InvalidRequestError("frame numbers start at 1")
        numbers.append(number)
    return numbers


def frames(ds: Dataset, numbers: list[int], media: Representation) -> list[tuple[bytes, str]]:
    """The requested 1-based frames as (payload, Content-Type) in the negotiated representation.

    Raises InvalidRequestError for an empty list, NotFoundError for a frame the instance does
    not have or an instance without pixel data, NotAcceptableError when pixels cannot be decoded.
    """
    if not numbers:
        raise InvalidRequestError("the frame list is empty")
    if any(number < 1 for number in numbers):
        raise InvalidRequestError("frame numbers start at 1")
    stored = transfer_syntax(ds)
    if PIXEL_DATA_TAG not in ds:
        if FLOAT_PIXEL_DATA_TAG in ds or DOUBLE_FLOAT_PIXEL_DATA_TAG in ds:
            return _float_frames(ds, numbers, media)
        raise NotFoundError("the instance has no pixel data")
    total = check_frame_numbers(ds, numbers)
    content_type = media.content_type
    if stored.is_compressed and media.transfer_syntax == stored:
        return [(_fragment(ds, number - 1, total), content_type) for number in numbers]
    if media.transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN:
        raise NotAcceptableError(f"frames stored as {stored} cannot be sent as {content_type}")
    if stored.is_compressed or is_big_endian(stored):
        return [(native_bytes(decode(ds, number - 1)), content_type) for number in numbers]
    return [(payload, content_type) for payload in _native_frames(ds, numbers, total)]


def all_frames(ds: Dataset, media: Representation) -> list[tuple[bytes, str]]:
    """Every frame, for the Pixel Data BulkDataURI (PS3.18 §8.7.3.3.2: one part per frame)."""
    return frames(ds, list(range(1, number_of_frames(ds) + 1)), media)


def _fragment(ds: Dataset, index: int, total: int) -> bytes:
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return bytes(
            get_frame(ds.PixelData, index, extended_offsets=extended, number_of_frames=total)
        )
    except DECODE_ERRORS_ALL as exc:
        raise NotAcceptableError(
            f"frame {index + 1} cannot be read from the encapsulated pixel data: "
            f"{short_reason(exc)}"
        ) from exc


def frame_bits(ds: Dataset) -> int:
    """Bits per frame of native Pixel Data, YBR_FULL_422 subsampling included."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1))
    bits_allocated = int(ds.BitsAllocated)
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        # PS3.3 C.7.6.3.1.2: two luminance and one pair of chroma values per two pixels.
        return rows * columns * 2 * bits_allocated
    return rows * columns * samples * bits_allocated


def _native_frames(ds: Dataset, numbers: list[int], total: int) -> list[bytes]:
    """Slice frames from native little-endian Pixel Data without decoding it."""
    check_native_pixel_data(ds)
    try:
        length = frame_bits(ds)
    except DECODE_ERRORS_ALL as exc:
        raise NotAcceptableError(
            f"Image Pixel attributes are invalid: {short_reason(exc)}"
        ) from exc
    data = memoryview(ds.PixelData)
    out: list[bytes] = []
    for number in numbers:
        start = (number - 1) * length
        if start % 8 == 0 and length % 8 == 0:
            out.append(bytes(data[start // 8 : (start + length) // 8]))
        else:
            out.append(_bit_frame(data, start, length))
    return out


def _bit_frame(data: memoryview, start_bit: int, length_bits: int) -> bytes:
    """One frame of 1-bit pixels not aligned on a byte, repacked from bit 0 (PS3.5 §8.1.1)."""
    first_byte = start_bit // 8
    last_byte = (start_bit + length_bits + 7) // 8
    chunk = np.frombuffer(data[first_byte:last_byte], dtype=np.uint8)
    bits = np.unpackbits(chunk, bitorder="little")
    offset = start_bit - first_byte * 8
    return np.packbits(bits[offset : offset + length_bits], bitorder="little").tobytes()


def _float_frames(
    ds: Dataset, numbers: list[int], media: Representation
) -> list[tuple[bytes, str]]:
    """Frames of Float or Double Float Pixel Data, always native (PS3.5 §A.1)."""
    if media.media_type != APPLICATION_OCTET_STREAM:
        raise NotAcceptableError("float pixel data is only available as octet-stream")
    total = check_frame_numbers(ds, numbers)
    arr = decode(ds).array
    arr = arr.reshape((total, -1))
    little = arr.dtype.newbyteorder("<")
    content_type = Representation(
        APPLICATION_OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, media.multipart
    ).content_type
    return [(arr[number - 1].astype(little).tobytes(), content_type) for number in numbers]
