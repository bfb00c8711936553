"""The PS3.15 Annex E Table E.1-1 action table, as shipped by the `dicom-anonymizer` package.

We take only the table (the attribute lists per action code, BSD-3-Clause, kept current with the
standard: edition 2026c) and apply it with our own code in `deid.py`. The package groups tags by
their Basic Profile action; this module turns those groups into one lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import import_module

from pydicom.datadict import dictionary_VR
from pydicom.tag import BaseTag, Tag

TABLE_MODULE = "dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c"
TABLE_EDITION = "2026c"

# Package group name -> PS3.15 Table E.1-1 Basic Profile action code.
_GROUPS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


@dataclass(frozen=True)
class MaskedEntry:
    """A repeating-group row such as Overlay Data (60xx,3000): matches where mask bits agree."""

    tag: int
    mask: int
    action: str

    def matches(self, tag: int) -> bool:
        return (tag & self.mask) == (self.tag & self.mask)


@dataclass(frozen=True)
class ActionTable:
    """Basic Profile actions by exact tag, plus the repeating-group rows."""

    exact: dict[int, str]
    masked: tuple[MaskedEntry, ...]

    def action(self, tag: int) -> str | None:
        """The Basic Profile action for a tag, or None when the table does not list it."""
        found = self.exact.get(tag)
        if found is not None:
            return found
        for entry in self.masked:
            if entry.matches(tag):
                return entry.action
        return None

    def rows(self) -> list[tuple[BaseTag, str]]:
        """Every exact row (the repeating groups excluded), for tests and documentation."""
        return [(Tag(t), a) for t, a in sorted(self.exact.items())]


def vr_of(tag: int) -> str | None:
    """The dictionary VR of a standard tag (None for tags newer than pydicom's dictionary)."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


@cache
def annex_e_table() -> ActionTable:
    """Load Table E.1-1 once."""
    module = import_module(TABLE_MODULE)
    exact: dict[int, str] = {}
    masked: list[MaskedEntry] = []
    for group, action in _GROUPS.items():
        for row in getattr(module, group):
            if len(row) == 2:
                exact[(row[0] << 16) | row[1]] = action
            else:
                group_no, element, group_mask, element_mask = row
                masked.append(
                    MaskedEntry(
                        tag=(group_no << 16) | element,
                        mask=(group_mask << 16) | element_mask,
                        action=action,
                    )
                )
    return ActionTable(exact=exact, masked=tuple(masked))
