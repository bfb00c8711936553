"""C-FIND identifiers: reading matching keys out of a request, shaping the response.

PS3.4 C.2.2.1: a response carries exactly the keys the request named (its Return Keys), filled
from the match; a key the SCP holds no value for comes back zero-length. A sequence key with
an item returns, per matched item, the keys named in that item.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

# Elements of an identifier that are not matching or return keys (PS3.4 C.4.1.1.3.1).
QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
_CONTROL_TAGS = frozenset({QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET})

# Responses are encoded in UTF-8 (PS3.5 §6.1.2.5.3: ISO_IR 192), so that any name the order
# system sent survives whatever character set the request used.
RESPONSE_CHARACTER_SET = "ISO_IR 192"


def text_value(element: DataElement) -> str:
    """An element's value as a C-FIND matching string; several values joined by backslash."""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip(" \x00")
    return str(value).strip(" ")


def keys(identifier: Dataset) -> Iterable[DataElement]:
    """The identifier's matching and return keys (control elements left out)."""
    for element in identifier:
        if element.tag.group in (0x0000, 0x0002) or int(element.tag) in _CONTROL_TAGS:
            continue
        yield element


def project(match: Dataset, request: Dataset) -> Dataset:
    """The response identifier: every key of `request`, valued from `match` where it has one."""
    out = Dataset()
    for element in keys(request):
        found = match.get(element.tag)
        if element.VR == "SQ":
            items: list[Dataset] = list(found.value) if found is not None else []
            template = list(element.value or [])
            if template:
                items = [project(item, template[0]) for item in items]
            out.add_new(element.tag, "SQ", Sequence(items))
        elif found is not None and found.VR != "SQ":
            out.add_new(element.tag, element.VR, found.value)
        else:
            out.add_new(element.tag, element.VR, None)
    return out


def response(match: Dataset, request: Dataset, level: str | None) -> Dataset:
    """`project` plus the control elements a C-FIND response carries."""
    out = project(match, request)
    out.SpecificCharacterSet = RESPONSE_CHARACTER_SET
    if level is not None:
        out.QueryRetrieveLevel = level
    return out
