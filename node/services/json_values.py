"""Fast DICOM JSON values for the common raw elements, without building pydicom DataElements.

pydicom spends most of a metadata request parsing each raw element into a DataElement
before writing its JSON. For the plain VRs (strings, numbers) this module goes from the raw
bytes straight to the JSON pydicom would write, following pydicom 3's own value conversion
(`pydicom.values`, `DataElement.to_json_dict`). Anything unusual (other VRs, other character
sets, odd lengths, numbers pydicom would read differently) returns None, and the caller uses
pydicom. The equality tests over every pydicom sample hold the two paths together.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from pydicom.dataelem import RawDataElement

# PS3.5 §6.2: VRs whose values are ASCII (default repertoire) strings.
_STRIPPED_COMPONENTS = frozenset({"AE"})
_RSTRIPPED = frozenset({"AS", "CS", "DA", "DT", "TM"})
_MULTI_TEXT = frozenset({"SH", "LO", "UC"})
_SINGLE_TEXT = frozenset({"ST", "LT", "UT"})
_BINARY = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_SIZES = {code: struct.calcsize("=" + code) for code in _BINARY.values()}
# Character sets whose text decodes with one Python codec and no escape sequences.
_SIMPLE_CODECS = {"iso8859": "latin_1", "latin_1": "latin_1", "utf_8": "utf_8"}
# A decimal string exactly as float() and pydicom's DSfloat both read it.
_DECIMAL = re.compile(r" *[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)? *\Z")
_INTEGER = re.compile(r" *[+-]?\d+ *\Z")


def text_codec(encodings: list[str] | str | None) -> str | None:
    """The Python codec for a data set's character sets, if one simple codec covers them."""
    if encodings is None:
        return "latin_1"
    if isinstance(encodings, str):
        encodings = [encodings]
    codecs = {_SIMPLE_CODECS.get(e) for e in encodings}
    if len(codecs) != 1 or None in codecs:
        return None
    return codecs.pop()


def fast_json(raw: RawDataElement, codec: str | None) -> dict[str, Any] | None:
    """The DICOM JSON of a little-endian explicit-VR raw element, or None to let pydicom do it."""
    vr = raw.VR
    value = raw.value
    if vr is None or not isinstance(value, bytes):
        return None
    items: list[Any]
    if vr in _BINARY:
        code = _BINARY[vr]
        if len(value) % _SIZES[code]:
            return None
        items = list(struct.unpack(f"<{len(value) // _SIZES[code]}{code}", value))
    elif vr in _MULTI_TEXT or vr in _SINGLE_TEXT:
        if codec is None or b"\x1b" in value:
            return None
        try:
            text = value.decode(codec)
        except UnicodeDecodeError:
            return None
        if vr in _SINGLE_TEXT:
            items = [text.rstrip("\0 ")]
        else:
            items = [part.rstrip("\0 ") for part in text.split("\\")]
    else:
        try:
            text = value.decode("latin_1")
        except UnicodeDecodeError:  # pragma: no cover - latin_1 decodes every byte
            return None
        if vr in _STRIPPED_COMPONENTS:
            items = [part.strip() for part in text.split("\\")]
        elif vr in _RSTRIPPED:
            items = text.rstrip(" \x00").split("\\")
        elif vr == "UI":
            # pydicom's UID() also strips each component's surrounding whitespace.
            items = [part.strip() for part in text.rstrip("\0 ").rstrip(" \x00").split("\\")]
        elif vr == "IS":
            parts = text.rstrip(" \x00").split("\\")
            if not all(_INTEGER.match(p) for p in parts):
                return None if any(p.strip() for p in parts) or len(parts) > 1 else {"vr": vr}
            items = [int(p) for p in parts]
        elif vr == "DS":
            parts = text.strip().rstrip(" \x00").split("\\")
            if not all(_DECIMAL.match(p) for p in parts):
                return None if any(p.strip() for p in parts) or len(parts) > 1 else {"vr": vr}
            items = [float(p) for p in parts]
        else:
            return None
    # DataElement.is_empty: no values, or one empty string.
    if not items or (len(items) == 1 and items[0] == ""):
        return {"vr": vr}
    return {"vr": vr, "Value": items}
