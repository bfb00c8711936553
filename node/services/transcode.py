"""Transcode a stored instance to another transfer syntax for WADO-RS (PS3.18 §8.7.3.5.2).

Native targets (Explicit/Implicit VR Little Endian, Deflated) re-encode the data set; a
compressed source is decoded with the installed pydicom plugins and its Image Pixel attributes
are corrected to describe the decoded pixels. RLE Lossless and JPEG 2000 Lossless targets are
encoded on demand with pydicom's encoders. Other compressed targets (JPEG, JPEG-LS, lossy
JPEG 2000) would need an encoder this node does not have, or would add loss: 406.
"""

from __future__ import annotations

import copy
import io

from pydicom import dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels.utils import compress
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
)

from node.errors import NotAcceptableError
from node.services.pixels import (
    DECODE_ERRORS_ALL,
    PIXEL_DATA_TAG,
    check_native_pixel_data,
    decode,
    is_big_endian,
    native_bytes,
    output_copy,
    short_reason,
    swap_words,
    transfer_syntax,
)
from node.services.syntaxes import TRANSCODE_TARGETS

ENCODED_TARGETS = frozenset({RLELossless, JPEG2000Lossless})

# Sources that are lossy whatever their parameters: their decoded pixels carry that loss.
_ALWAYS_LOSSY = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})


def transcode(ds: Dataset, target_ts: str) -> bytes:
    """The instance as Part-10 bytes in `target_ts`; `ds` itself is left unchanged.

    Raises NotAcceptableError when the target is not offered or the pixels cannot be decoded.
    """
    target = UID(target_ts)
    if target not in TRANSCODE_TARGETS:
        raise NotAcceptableError(f"transcoding to transfer syntax {target} is not offered")
    source = transfer_syntax(ds)
    if is_big_endian(source):
        out = _little_endian_copy(ds)
    else:
        out = output_copy(ds)
        if source.is_compressed and PIXEL_DATA_TAG in ds:
            _decompress_into(out, ds, source)
        elif PIXEL_DATA_TAG in ds:
            check_native_pixel_data(ds)
    for tag in [t for t in out.keys() if t.element == 0 and t.group != 2]:  # noqa: SIM118
        # Group lengths are retired (PS3.5 §7.2) and go stale when values change.
        del out[tag]
    if target in ENCODED_TARGETS and PIXEL_DATA_TAG in out:
        _compress(out, target)
    out.file_meta.TransferSyntaxUID = target
    buffer = io.BytesIO()
    try:
        dcmwrite(
            buffer,
            out,
            implicit_vr=target == ImplicitVRLittleEndian,
            little_endian=True,
            enforce_file_format=True,
        )
    except DECODE_ERRORS_ALL as exc:
        raise NotAcceptableError(f"the instance cannot be re-encoded: {short_reason(exc)}") from exc
    return buffer.getvalue()


def _set(ds: Dataset, keyword: str, vr: str, value: object) -> None:
    # Rebind a fresh element: elements of an output copy may still be shared with the source.
    elem = DataElement(keyword, vr, value)
    ds[elem.tag] = elem


def _decompress_into(out: Dataset, source_ds: Dataset, source: UID) -> None:
    """Replace compressed Pixel Data in `out` with the decoded native pixels."""
    decoded = decode(source_ds)
    pixels = native_bytes(decoded)
    if len(pixels) % 2:
        pixels += b"\x00"  # PS3.5 §7.1.1: values have even length
    _set(out, "PixelData", "OB" if decoded.bits_allocated <= 8 else "OW", pixels)
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # The decoded pixels are described by the decoder's view of them: colour converted to RGB,
    # pixel-interleaved, and with any JPEG 2000 sign/precision correction applied.
    _set(out, "PhotometricInterpretation", "CS", decoded.photometric_interpretation)
    if decoded.samples_per_pixel > 1:
        _set(out, "PlanarConfiguration", "US", 0)
    _set(out, "BitsAllocated", "US", decoded.bits_allocated)
    _set(out, "BitsStored", "US", decoded.bits_stored)
    _set(out, "HighBit", "US", decoded.bits_stored - 1)
    _set(out, "PixelRepresentation", "US", decoded.pixel_representation)
    if "NumberOfFrames" in source_ds or decoded.number_of_frames > 1:
        _set(out, "NumberOfFrames", "IS", str(decoded.number_of_frames))
    for tag in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if tag in out:
            del out[tag]
    if source in _ALWAYS_LOSSY and "LossyImageCompression" not in out:
        # PS3.3 C.7.6.1.1.5: once lossy, always flagged as lossy.
        _set(out, "LossyImageCompression", "CS", "01")


def _little_endian_copy(ds: Dataset) -> Dataset:
    """A deep copy of a big-endian data set with every byte-order-dependent value swapped."""
    out = copy.deepcopy(ds)
    _swap_binary_values(out)
    if PIXEL_DATA_TAG in ds:
        decoded = decode(ds)
        pixels = native_bytes(decoded)
        if len(pixels) % 2:
            pixels += b"\x00"
        _set(out, "PixelData", "OB" if decoded.bits_allocated <= 8 else "OW", pixels)
        _set(out, "PhotometricInterpretation", "CS", decoded.photometric_interpretation)
        if decoded.samples_per_pixel > 1:
            _set(out, "PlanarConfiguration", "US", 0)
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return out


def _swap_binary_values(ds: Dataset) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_binary_values(item)
        elif elem.tag != PIXEL_DATA_TAG and isinstance(elem.value, bytes):
            elem.value = swap_words(elem.value, elem.VR)


def _compress(out: Dataset, target: UID) -> None:
    """Encode native Pixel Data of `out` in place with pydicom's encoder for `target`."""
    # compress() edits Image Pixel attributes in place: give `out` its own elements first.
    for elem in list(out):
        if elem.VR != "SQ":
            out[elem.tag] = copy.copy(elem)
    try:
        compress(out, target, generate_instance_uid=False)
    except DECODE_ERRORS_ALL as exc:
        raise NotAcceptableError(
            f"the pixel data cannot be encoded as {target}: {short_reason(exc)}"
        ) from exc
