"""Shared pixel-data access for the WADO-RS image services: syntax, frame geometry, decoding.

Every pydicom failure while decoding becomes `NotAcceptableError` (406) with a short technical
reason: a stored instance whose pixels no installed decoder can read is not a server fault.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ExplicitVRBigEndian

from node.errors import NotAcceptableError, NotFoundError

PIXEL_DATA_TAG = 0x7FE00010
FLOAT_PIXEL_DATA_TAG = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA_TAG = 0x7FE00009
PIXEL_DATA_TAGS = frozenset({PIXEL_DATA_TAG, FLOAT_PIXEL_DATA_TAG, DOUBLE_FLOAT_PIXEL_DATA_TAG})

# Bytes per word of the binary VRs whose values change with byte order (PS3.5 §7.3).
WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}

# Decoder failures surface as several exception types; none of them is a server fault.
DECODE_ERRORS = (RuntimeError, ValueError, AttributeError, KeyError, TypeError, IndexError)
DECODE_ERRORS_ALL = (*DECODE_ERRORS, NotImplementedError)


# A quoted value, closed or cut off at the end of the message (Python truncates long reprs).
_QUOTED = re.compile(r"'[^']*(?:'|$)|\"[^\"]*(?:\"|$)")


def short_reason(exc: BaseException) -> str:
    """The first line of an exception message, for a 406 reason that stays readable.

    Quoted text is masked: pydicom quotes the offending value, which could be personal data.
    """
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return _QUOTED.sub("'…'", lines[0])[:200]


def transfer_syntax(ds: Dataset) -> UID:
    """The instance's Transfer Syntax UID from its file meta information."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if not uid:
        raise NotAcceptableError("the stored instance has no Transfer Syntax UID")
    return UID(str(uid))


def is_big_endian(ts: UID) -> bool:
    """Whether native data in `ts` is big endian (only the retired Explicit VR Big Endian)."""
    return ts == ExplicitVRBigEndian


def number_of_frames(ds: Dataset) -> int:
    """Number of Frames (0028,0008), 1 when absent or empty."""
    try:
        value = ds.get("NumberOfFrames")
        return max(int(value), 1) if value not in (None, "") else 1
    except DECODE_ERRORS as exc:
        raise NotAcceptableError(f"Number of Frames is invalid: {short_reason(exc)}") from exc


def check_frame_numbers(ds: Dataset, numbers: list[int]) -> int:
    """Check 1-based frame numbers against the instance; return its frame count."""
    total = number_of_frames(ds)
    for number in numbers:
        if number < 1 or number > total:
            raise NotFoundError(f"frame {number} does not exist; the instance has {total}")
    return total


def has_pixel_data(ds: Dataset) -> bool:
    """Whether the instance carries any of the three pixel data elements."""
    return any(tag in ds for tag in PIXEL_DATA_TAGS)


def check_native_pixel_data(ds: Dataset) -> int:
    """Check native Pixel Data against its Image Pixel attributes; return the expected length.

    A truncated value or inconsistent attributes cannot be transcoded or framed: 406.
    """
    try:
        expected = int(get_expected_length(ds, "bytes"))
        actual = len(ds.PixelData)
    except DECODE_ERRORS as exc:
        raise NotAcceptableError(
            f"Image Pixel attributes are invalid: {short_reason(exc)}"
        ) from exc
    if actual < expected:
        raise NotAcceptableError(
            f"Pixel Data holds {actual} bytes but its Image Pixel attributes need {expected}"
        )
    return expected


@dataclass(frozen=True)
class Decoded:
    """Decoded pixels and the image pixel description that matches them."""

    array: np.ndarray[Any, Any]
    photometric_interpretation: str
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    number_of_frames: int


def decode(ds: Dataset, index: int | None = None) -> Decoded:
    """Decode all frames (index None) or one 0-based frame, colour converted to RGB.

    YBR photometric interpretations come back as RGB (pydicom's `as_rgb`), matching what
    `ds.pixel_array` returns, so transcoded and rendered output agree with pydicom.
    """
    ts = transfer_syntax(ds)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise NotAcceptableError(f"no pixel data decoder for transfer syntax {ts}") from exc
    if not decoder.is_available:
        raise NotAcceptableError(f"no installed plugin decodes transfer syntax {ts}")
    try:
        # pydicom annotates **kwargs as one DecodeOptions, so pass the options as a mapping.
        options: dict[str, Any] = {"as_rgb": True}
        arr, meta = decoder.as_array(ds, index=index, **options)
    except DECODE_ERRORS_ALL as exc:
        raise NotAcceptableError(f"pixel data cannot be decoded: {short_reason(exc)}") from exc
    return Decoded(
        array=arr,
        photometric_interpretation=str(meta["photometric_interpretation"]),
        samples_per_pixel=int(meta["samples_per_pixel"]),
        bits_allocated=int(meta["bits_allocated"]),
        bits_stored=int(meta.get("bits_stored", meta["bits_allocated"])),
        pixel_representation=int(meta.get("pixel_representation", 0)),
        number_of_frames=int(meta["number_of_frames"]),
    )


def native_bytes(decoded: Decoded) -> bytes:
    """Decoded pixels as native little-endian Pixel Data bytes (bit-packed when 1 bit)."""
    arr = decoded.array
    if decoded.bits_allocated == 1:
        return np.packbits(arr.astype(np.uint8, copy=False).ravel(), bitorder="little").tobytes()
    little = arr.dtype.newbyteorder("<")
    return arr.astype(little, copy=False).tobytes()


def swap_words(value: bytes, vr: str) -> bytes:
    """Byte-swap a binary value of `vr` between big and little endian."""
    size = WORD_SIZE.get(vr)
    if size is None or len(value) % size:
        return value
    return np.frombuffer(value, dtype=f">u{size}").astype(f"<u{size}").tobytes()


def output_copy(ds: Dataset) -> Dataset:
    """A copy of `ds` whose top-level elements can be replaced without touching `ds`.

    Parsed elements are shallow-copied (values are shared, not duplicated), so changing an
    attribute of the copy rebinds its own element. Elements not parsed yet stay raw: raw
    elements are immutable, and pydicom writes them verbatim when the encoding is unchanged
    (it parses them itself when the encoding changes), which keeps a transcode from parsing
    every attribute of the instance. Sequences are shared, so nested items must not be edited.
    """
    out = Dataset()
    read_implicit = False
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset parses every element)
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            read_implicit = read_implicit or elem.VR is None
            # Dataset.__setitem__ would parse a raw private element to find its creator;
            # storing it directly keeps it raw (pydicom parses it if it is ever read).
            out._dict[tag] = elem
        else:
            out[tag] = copy.copy(elem)
    implicit, little = ds.original_encoding
    if implicit is not None and little is not None:
        # A file whose body is implicit VR despite an explicit syntax (pydicom reads it with a
        # warning) holds raw elements without a VR: say so, so that pydicom parses them.
        out.set_original_encoding(implicit or read_implicit, little, ds.original_character_set)
    meta = FileMetaDataset()
    for elem in getattr(ds, "file_meta", FileMetaDataset()):
        meta.add(DataElement(elem.tag, elem.VR, elem.value))
    out.file_meta = meta
    return out
