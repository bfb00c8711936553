"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

Applies the Table E.1-1 actions (from `deid_table`) to a dataset in place, recursing into
sequences, removes every private attribute, replaces UIDs consistently under a secret, and
records what was done (PS3.15 §E.1.1 and §E.3). Pixel data is never touched: an instance that
declares burned-in annotation is refused, because the Basic Profile without the Clean Pixel Data
Option cannot make it safe, and a training export must skip it rather than leak it.

Combined actions (Table E.1-1 notes): we do not know each IOD's type-1/2 requirements here, so
each resolves to the least-information choice the standard allows for an archive export:
X/Z, X/D, X/Z/D -> X; Z/D -> Z; X/Z/U* -> keep the sequence and replace the UIDs inside it
(so references to other de-identified instances keep working).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from node.errors import NodeError
from node.services.deid_table import TABLE_EDITION, ActionTable, annex_e_table

# PS3.16 CID 7050 De-identification Method (DCM coding scheme).
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
FULL_DATES_CODE = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
PATIENT_CHARACTERISTICS_CODE = ("113108", "Retain Patient Characteristics Option")

# PS3.15 Table E.1-1 "Rtn. Pat. Chars. Opt." column: the characteristics kept with K.
PATIENT_CHARACTERISTICS = frozenset(
    {
        0x00101010,  # Patient's Age
        0x00100040,  # Patient's Sex
        0x00101020,  # Patient's Size
        0x00101030,  # Patient's Weight
        0x00101022,  # Patient's Body Mass Index
        0x00101023,  # Measured AP Dimension
        0x00101024,  # Measured Lateral Dimension
        0x00102160,  # Ethnic Group
        0x001021A0,  # Smoking Status
        0x001021C0,  # Pregnancy Status
        0x00102203,  # Patient's Sex Neutered
    }
)
# Birth date and time identify the patient, not the course of care: the Full Dates Option
# (whose column keeps dates and times of the care episode) never retains them here.
_NEVER_RETAINED_DATES = frozenset({0x00100030, 0x00100032})
_TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})

_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_BY_VR: dict[str, Any] = {
    "PN": "ANONYMIZED",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "DS": "0",
    "IS": "0",
    "UR": "urn:pacsmesh:anonymized",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
}
_BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
_SHORT_TEXT_VRS = {"AE": 16, "SH": 16, "CS": 16}


class DeidentificationRefusedError(NodeError):
    """The instance cannot be de-identified by this profile (e.g. burned-in annotation)."""

    http_status = 422
    fhir_code = "business-rule"


@dataclass(frozen=True)
class DeidOptions:
    """Which Annex E options to apply on top of the Basic Profile."""

    retain_full_dates: bool = False
    retain_patient_characteristics: bool = False


@dataclass
class DeidReport:
    """What de-identification did to one instance (counts only: no values, no personal data)."""

    removed: int = 0
    emptied: int = 0
    replaced: int = 0
    uids_replaced: int = 0
    private_removed: int = 0
    burned_in_annotation: str = "UNKNOWN"  # YES is refused; NO or UNKNOWN when absent
    actions: dict[str, int] = field(default_factory=dict)


class UidMapper:
    """Consistent UID replacement: HMAC-SHA256 under a secret, as a 2.25 UUID-derived UID.

    PS3.5 §B.2: a UID may be 2.25 followed by the decimal form of a 128-bit integer. The same
    UID and secret always map to the same result, so study/series/instance relations and
    references between instances survive across separately de-identified files.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the UID secret must have at least 16 bytes")
        self._secret = secret

    def __call__(self, uid: str) -> str:
        digest = hmac.new(self._secret, uid.strip().encode("ascii", "replace"), hashlib.sha256)
        return "2.25." + str(int.from_bytes(digest.digest()[:16], "big"))


def deidentify(
    ds: Dataset,
    secret: bytes,
    options: DeidOptions | None = None,
    table: ActionTable | None = None,
) -> DeidReport:
    """De-identify a dataset in place (file meta included) and return what was done."""
    options = options or DeidOptions()
    table = table or annex_e_table()
    burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned_in == "YES":
        # Refuse before touching anything: the caller keeps its original and skips this one.
        raise DeidentificationRefusedError(
            "instance declares burned-in annotation; the Basic Profile does not clean pixels"
        )
    report = DeidReport(burned_in_annotation=burned_in or "UNKNOWN")
    mapper = UidMapper(secret)
    _clean(ds, table, options, mapper, report)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        # Media Storage SOP Instance UID is a U row too; it must stay equal to SOP Instance UID.
        meta.MediaStorageSOPInstanceUID = mapper(str(meta.MediaStorageSOPInstanceUID))
        report.uids_replaced += 1
    _record_method(ds, options)
    return report


def deidentify_attributes(
    ds: Dataset,
    secret: bytes,
    options: DeidOptions | None = None,
    table: ActionTable | None = None,
) -> DeidReport:
    """Apply the table to a partial dataset in place (a query result), without the rest.

    The same actions as `deidentify`, but no method attributes are added and burned-in
    annotation is not judged: a query result carries a few header attributes, not the pixels.
    """
    report = DeidReport()
    _clean(ds, table or annex_e_table(), options or DeidOptions(), UidMapper(secret), report)
    return report


def effective_action(
    tag: int, vr: str, options: DeidOptions, table: ActionTable | None = None
) -> str:
    """What de-identification does to a top-level attribute: X, Z, D, U, U* or K (kept)."""
    if (tag >> 16) % 2:
        return "X"  # private attributes are always removed
    listed = (table or annex_e_table()).action(tag)
    if listed is None:
        return "K"
    return _effective(listed, tag, vr, options)


def _effective(action: str, tag: int, vr: str, options: DeidOptions) -> str:
    if options.retain_patient_characteristics and tag in PATIENT_CHARACTERISTICS:
        return "K"
    if (
        options.retain_full_dates
        and vr in _TEMPORAL_VRS
        and tag not in _NEVER_RETAINED_DATES
        and action != "U"
    ):
        return "K"
    return {"X/Z": "X", "X/D": "X", "X/Z/D": "X", "Z/D": "Z", "X/Z/U*": "U*"}.get(action, action)


def _clean(
    ds: Dataset,
    table: ActionTable,
    options: DeidOptions,
    mapper: UidMapper,
    report: DeidReport,
) -> None:
    for elem in list(ds):
        tag = int(elem.tag)
        if elem.tag.is_private:
            del ds[elem.tag]
            report.private_removed += 1
            continue
        listed = table.action(tag)
        if listed is None:
            if elem.VR == "SQ":
                for item in elem.value:
                    _clean(item, table, options, mapper, report)
            continue
        action = _effective(listed, tag, elem.VR, options)
        report.actions[action] = report.actions.get(action, 0) + 1
        _apply(ds, elem, action, table, options, mapper, report)


def _apply(
    ds: Dataset,
    elem: DataElement,
    action: str,
    table: ActionTable,
    options: DeidOptions,
    mapper: UidMapper,
    report: DeidReport,
) -> None:
    if action == "X":
        del ds[elem.tag]
        report.removed += 1
    elif action == "Z":
        elem.value = Sequence() if elem.VR == "SQ" else None
        report.emptied += 1
    elif action == "D":
        elem.value = _dummy(elem, mapper)
        report.replaced += 1
    elif action == "U":
        elem.value = _map_uids(elem.value, mapper)
        report.uids_replaced += 1
    elif action == "U*" or (action == "K" and elem.VR == "SQ"):
        # Keep the sequence; its items go through the table (their UIDs are U rows).
        for item in elem.value or []:
            _clean(item, table, options, mapper, report)
    # K on a non-sequence: keep as is.


def _map_uids(value: Any, mapper: UidMapper) -> Any:
    if value is None or value == "":
        return value
    if isinstance(value, str):
        return mapper(value)
    return [mapper(str(v)) for v in value]


def _dummy(elem: DataElement, mapper: UidMapper) -> Any:
    """A non-empty dummy value of the element's VR (PS3.15 Table E.1-1 action D)."""
    vr = elem.VR
    if vr == "SQ":
        # A dummy sequence: one empty item (the original items may hold free text).
        return Sequence([Dataset()])
    if vr == "UI":
        # A dummy UID that still relates identical originals.
        return _map_uids(elem.value, mapper) or mapper("")
    if vr in _BINARY_VRS:
        return b"\x00\x00"
    if vr in _DUMMY_BY_VR:
        return _DUMMY_BY_VR[vr]
    return _DUMMY_TEXT[: _SHORT_TEXT_VRS.get(vr, 64)]


def _record_method(ds: Dataset, options: DeidOptions) -> None:
    """PS3.15 §E.1.1: say that and how the identity was removed."""
    codes = [BASIC_PROFILE_CODE]
    if options.retain_full_dates:
        codes.append(FULL_DATES_CODE)
    if options.retain_patient_characteristics:
        codes.append(PATIENT_CHARACTERISTICS_CODE)
    ds.PatientIdentityRemoved = "YES"
    # LO, VM 1-n: one value per applied profile/option, plus the table edition used.
    ds.DeidentificationMethod = [meaning for _, meaning in codes] + [
        f"PS3.15 Table E.1-1 edition {TABLE_EDITION}"
    ]
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    # PS3.3 C.7.6.1.1.7 / PS3.15 E.3.6: whether longitudinal dates survived.
    ds.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if options.retain_full_dates else "REMOVED"
    )


__all__ = [
    "DeidOptions",
    "DeidReport",
    "DeidentificationRefusedError",
    "UidMapper",
    "deidentify",
    "deidentify_attributes",
    "effective_action",
]
