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

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.errors import InvalidRequestError, NotFoundError
from node.services.json_values import fast_json, text_codec
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
    ds: Dataset,
    *,
    bulkdata_uri: BulkDataURI | None = None,
    threshold: int = 1024,
    pixel_data_vr: str | None = None,
) -> dict[str, Any]:
    """The data set as DICOM JSON; binary values longer than `threshold` become BulkDataURIs.

    `threshold` counts base64 characters, as pydicom's `bulk_data_threshold` does: a value is
    bulk when it holds more than `threshold // 4 * 3` bytes (768 for the default 1024).

    `bulkdata_uri(path)` turns an element path into its URI. Without it every value is inline,
    exactly as pydicom writes it. Elements pydicom cannot convert are left out (and logged by
    tag only), as pydicom's `suppress_invalid_tags` does, so one bad value never fails a query.
    `pixel_data_vr` is for a header read with `stop_before_pixels`: it adds the Pixel Data
    BulkDataURI the full instance would have, with that VR.
    """
    out = _walk(ds, "", bulkdata_uri, (threshold // 4) * 3)
    if pixel_data_vr is not None and bulkdata_uri is not None and PIXEL_KEY not in out:
        out[PIXEL_KEY] = {"vr": pixel_data_vr, "BulkDataURI": bulkdata_uri(PIXEL_KEY)}
        # Keep tag order: only trailing padding (FFFC,FFFC) can follow Pixel Data.
        out = dict(sorted(out.items()))
    return out


PIXEL_KEY = "7FE00010"


def _walk(ds: Dataset, prefix: str, uri: BulkDataURI | None, limit: int) -> dict[str, Any]:
    """Elements of `ds`; binary values over `limit` bytes become URIs under `prefix`."""
    out: dict[str, Any] = {}
    # Raw values can be read directly only when little endian and in a simple character set.
    codec = text_codec(ds._character_set) if ds.original_encoding[1] else None
    little = ds.original_encoding[1] is True
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset yields elements)
        key = f"{int(tag):08X}"
        try:
            raw = ds.get_item(tag, keep_deferred=True)
            if isinstance(raw, RawDataElement):
                if uri is not None and _raw_bulk(raw, limit):
                    # Decided from the encoded length: a large or deferred value is never read.
                    out[key] = {"vr": str(raw.VR), "BulkDataURI": uri(prefix + key)}
                    continue
                if raw.VR is None and little:
                    raw = _with_dictionary_vr(raw)
                fast = fast_json(raw, codec) if little else None
                if fast is not None:
                    out[key] = fast
                    continue
            out[key] = _element(ds[tag], prefix + key, uri, limit)
        except (*DECODE_ERRORS_ALL, OSError) as exc:
            logger.warning("element %s left out of DICOM JSON: %s", key, type(exc).__name__)
    return out


def _with_dictionary_vr(raw: RawDataElement) -> RawDataElement:
    """An implicit-VR raw element given its dictionary VR, as pydicom would when parsing it.

    Private, unknown and ambiguous ("US or SS") tags keep no VR and go the pydicom way.
    """
    if raw.tag.is_private or not dictionary_has_tag(raw.tag):
        return raw
    vr = dictionary_VR(raw.tag)
    return raw if " or " in vr else raw._replace(VR=vr)


def _raw_bulk(raw: RawDataElement, limit: int) -> bool:
    """Whether a not-yet-parsed element is bulk data, judged without reading its value."""
    if raw.VR is None or str(raw.VR) not in BULK_VRS or raw.length == 0:
        return False  # implicit VR or text: parse it the usual way
    if raw.VR == "UN" and dictionary_has_tag(raw.tag):
        return False  # pydicom gives a public tag sent as UN its real VR on parsing
    return raw.tag in PIXEL_DATA_TAGS or raw.length > limit


def _element(elem: DataElement, path: str, uri: BulkDataURI | None, limit: int) -> dict[str, Any]:
    vr = str(elem.VR)
    if vr == "SQ":
        items = [_walk(item, f"{path}/{i}/", uri, limit) for i, item in enumerate(elem.value)]
        return {"vr": vr, "Value": items}  # an empty sequence keeps "Value": [], as pydicom
    bulk = uri is not None and vr in BULK_VRS and not elem.is_empty
    if bulk and (elem.tag in PIXEL_DATA_TAGS or len(elem.value) > limit):
        assert uri is not None
        return {"vr": vr, "BulkDataURI": uri(path)}
    # No handler: pydicom writes every binary value inline.
    return elem.to_json_dict(None, 0)


def bulkdata_paths(path: str) -> str:
    """A `bulkdata_uri` that keeps the bare element path, for JSON cached before URIs are known."""
    return path


def rebase_bulkdata(doc: dict[str, Any], base: str) -> dict[str, Any]:
    """A copy of DICOM JSON built with `bulkdata_paths`, each path prefixed with `base`.

    Converting a header costs pydicom milliseconds per instance; the JSON of a stored instance
    never changes, so it can be built once at store time with bare paths and given this
    request's base URL (host, port and instance path) here, in a cheap walk.
    """
    out: dict[str, Any] = {}
    for key, element in doc.items():
        if "BulkDataURI" in element:
            element = {**element, "BulkDataURI": base + element["BulkDataURI"]}
        elif element.get("vr") == "SQ" and "Value" in element:
            items = [rebase_bulkdata(item, base) for item in element["Value"]]
            element = {**element, "Value": items}
        out[key] = element
    return out


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
