"""DICOM JSON metadata (PS3.18 Annex F.2) with BulkDataURI, and the bulk data values they name.

pydicom's `DataElement.to_json_dict` writes each element; this module walks the data set itself
because pydicom's bulk data handler is not told where a nested element sits, and WADO-RS needs
that path in the URI. Pixel data is always a BulkDataURI (PS3.18 §8.7.3.4: metadata carries no
pixel data); other binary values go by size. Paths are hex tags and 0-based item indexes joined by
"/": "7FE00010", "00540016/0/00181072".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.errors import InvalidRequestError, NotFoundError
from node.services.pixels import (
    DECODE_ERRORS_ALL,
    PIXEL_DATA_TAGS,
    is_big_endian,
    swap_words,
)

logger = logging.getLogger(__name__)

# PS3.18 F.2.7: the binary VRs, written as InlineBinary or BulkDataURI.
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

BulkDataURI = Callable[[str], str]


def to_dicom_json(
    ds: Dataset, *, bulkdata_uri: BulkDataURI | None = None, threshold: int = 1024
) -> dict[str, Any]:
    """The data set as DICOM JSON; binary values over `threshold` bytes become BulkDataURIs.

    `bulkdata_uri(path)` turns an element path into its URI. Without it every value is inline,
    exactly as pydicom writes it. Elements pydicom cannot convert are left out (and logged by
    tag only), as pydicom's `suppress_invalid_tags` does, so one bad value never fails a query.
    """
    return _walk(ds, "", bulkdata_uri, threshold)


def _walk(ds: Dataset, prefix: str, uri: BulkDataURI | None, threshold: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset yields elements)
        key = f"{int(tag):08X}"
        try:
            elem = ds[tag]
            out[key] = _element(elem, prefix + key, uri, threshold)
        except DECODE_ERRORS_ALL as exc:
            logger.warning("element %s left out of DICOM JSON: %s", key, type(exc).__name__)
    return out


def _element(
    elem: DataElement, path: str, uri: BulkDataURI | None, threshold: int
) -> dict[str, Any]:
    vr = str(elem.VR)
    if vr == "SQ":
        items = [_walk(item, f"{path}/{i}/", uri, threshold) for i, item in enumerate(elem.value)]
        return {"vr": vr, "Value": items}  # an empty sequence keeps "Value": [], as pydicom
    bulk = uri is not None and vr in BULK_VRS and not elem.is_empty
    if bulk and (elem.tag in PIXEL_DATA_TAGS or len(elem.value) > threshold):
        assert uri is not None
        return {"vr": vr, "BulkDataURI": uri(path)}
    # No handler: pydicom writes every binary value inline.
    return elem.to_json_dict(None, threshold)


def parse_path(path: str) -> list[int]:
    """Split a bulk data path into alternating tags and item indexes, checking its shape."""
    parts = path.strip("/").split("/")
    if len(parts) % 2 != 1:
        raise InvalidRequestError("a bulk data path must end with an attribute tag")
    numbers: list[int] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if len(part) != 8:
                raise InvalidRequestError(f"{part[:20]!r} is not an 8-digit hex tag")
            try:
                numbers.append(int(part, 16))
            except ValueError:
                raise InvalidRequestError(f"{part[:20]!r} is not an 8-digit hex tag") from None
        else:
            if not part.isdigit() or not part.isascii():
                raise InvalidRequestError(f"{part[:20]!r} is not an item index")
            numbers.append(int(part))
    return numbers


def bulkdata(ds: Dataset, path: str) -> bytes:
    """The binary value a BulkDataURI path names, little endian (the octet-stream default)."""
    steps = parse_path(path)
    current = ds
    for position in range(0, len(steps) - 1, 2):
        tag, index = Tag(steps[position]), steps[position + 1]
        if tag not in current or current[tag].VR != "SQ" or index >= len(current[tag].value):
            raise NotFoundError("the bulk data path names no sequence item")
        current = current[tag].value[index]
    tag = Tag(steps[-1])
    if tag not in current:
        raise NotFoundError("the bulk data path names no attribute")
    elem = current[tag]
    if str(elem.VR) not in BULK_VRS or not isinstance(elem.value, bytes):
        raise NotFoundError("the attribute is not a bulk data value")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and is_big_endian(syntax):
        return swap_words(elem.value, str(elem.VR))
    return elem.value
