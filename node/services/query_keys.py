"""QIDO-RS query parameters: the attributes the index can match, and parsing a request.

The parser only validates and normalises (PS3.18 §8.3.4 query parameters, PS3.4 C.2.2.2
matching types); turning a `Query` into SQL is `node.services.query`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Final

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from node.errors import InvalidRequestError


class QueryLevel(StrEnum):
    """The query/retrieve level of a QIDO-RS search (PS3.18 §10.6.1: studies, series, instances)."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


LEVEL_RANK: Final = {QueryLevel.STUDY: 0, QueryLevel.SERIES: 1, QueryLevel.INSTANCE: 2}


@dataclass(frozen=True, slots=True)
class IndexedAttribute:
    """An attribute the index holds (or computes): where it lives and whether it can be matched."""

    tag: str
    keyword: str
    vr: str
    level: QueryLevel
    column: str | None  # column name in the level's table; None: computed at render time
    matchable: bool = True


def _attr(
    keyword: str, level: QueryLevel, column: str | None, *, matchable: bool = True
) -> IndexedAttribute:
    tag_int = tag_for_keyword(keyword)
    assert tag_int is not None, keyword
    return IndexedAttribute(
        f"{tag_int:08X}", keyword, dictionary_VR(tag_int), level, column, matchable
    )


_S, _SE, _I = QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.INSTANCE

# Everything here is answered from index columns, never from the encrypted headers.
INDEXED: Final[dict[str, IndexedAttribute]] = {
    a.tag: a
    for a in (
        _attr("StudyInstanceUID", _S, "study_uid"),
        _attr("PatientID", _S, "patient_id"),
        _attr("PatientName", _S, "patient_name"),
        _attr("PatientBirthDate", _S, "patient_birth_date"),
        _attr("PatientSex", _S, "patient_sex"),
        _attr("StudyDate", _S, "study_date"),
        _attr("StudyTime", _S, "study_time"),
        _attr("AccessionNumber", _S, "accession_number"),
        _attr("StudyID", _S, "study_id"),
        _attr("StudyDescription", _S, "study_description"),
        _attr("ReferringPhysicianName", _S, "referring_physician_name"),
        # Computed attributes (PS3.4 C.3.4): maintained on write.
        _attr("ModalitiesInStudy", _S, "modalities_in_study"),
        _attr("NumberOfStudyRelatedSeries", _S, "number_of_series", matchable=False),
        _attr("NumberOfStudyRelatedInstances", _S, "number_of_instances", matchable=False),
        _attr("SeriesInstanceUID", _SE, "series_uid"),
        _attr("Modality", _SE, "modality"),
        _attr("SeriesNumber", _SE, "series_number"),
        _attr("SeriesDescription", _SE, "series_description"),
        _attr("SeriesDate", _SE, "series_date"),
        _attr("SeriesTime", _SE, "series_time"),
        _attr("BodyPartExamined", _SE, "body_part_examined"),
        _attr("PerformedProcedureStepStartDate", _SE, "performed_procedure_step_start_date"),
        _attr("PerformedProcedureStepStartTime", _SE, "performed_procedure_step_start_time"),
        _attr("NumberOfSeriesRelatedInstances", _SE, "number_of_instances", matchable=False),
        _attr("SOPInstanceUID", _I, "sop_instance_uid"),
        _attr("SOPClassUID", _I, "sop_class_uid"),
        _attr("InstanceNumber", _I, "instance_number"),
        _attr("Rows", _I, "rows"),
        _attr("Columns", _I, "columns"),
        _attr("NumberOfFrames", _I, "number_of_frames"),
        _attr("BitsAllocated", _I, "bits_allocated"),
        _attr("PhotometricInterpretation", _I, "photometric_interpretation"),
    )
}

RETRIEVE_URL: Final = "00081190"
INSTANCE_AVAILABILITY: Final = "00080056"
# Attributes of the result itself rather than of a level's table.
RESULT_ATTRIBUTES: Final = {RETRIEVE_URL: "UR", INSTANCE_AVAILABILITY: "CS"}


def _tags(*keywords: str) -> tuple[str, ...]:
    return tuple(_attr(k, _S, None).tag for k in keywords)


# Default return attributes, PS3.18 Table 6.7.1-2 (study), -2a (series), -2b (instance), limited to
# what the index holds (Timezone Offset From UTC and Request Attribute Sequence come only through
# includefield). The UIDs of the enclosing levels are always returned so results can be addressed.
DEFAULT_TAGS: Final[dict[QueryLevel, tuple[str, ...]]] = {
    QueryLevel.STUDY: (
        *_tags("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy"),
        *_tags("ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate"),
        *_tags("PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription"),
        *_tags("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
        INSTANCE_AVAILABILITY,
        RETRIEVE_URL,
    ),
    QueryLevel.SERIES: (
        *_tags("StudyInstanceUID", "Modality", "SeriesDescription", "SeriesInstanceUID"),
        *_tags("SeriesNumber", "NumberOfSeriesRelatedInstances"),
        *_tags("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
        INSTANCE_AVAILABILITY,
        RETRIEVE_URL,
    ),
    QueryLevel.INSTANCE: (
        *_tags("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"),
        *_tags("InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames"),
        INSTANCE_AVAILABILITY,
        RETRIEVE_URL,
    ),
}

_STRING_VRS: Final = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_NUMBER_VRS: Final = frozenset({"IS", "US", "UL", "SS", "SL", "UV", "SV"})
_UID_RE: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAG_RE: Final = re.compile(r"^[0-9A-Fa-f]{8}$")
_TM_RE: Final = re.compile(r"^([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?$")
_CONTROL_PARAMS: Final = frozenset({"includefield", "fuzzymatching", "limit", "offset"})


class MatchKind(StrEnum):
    """How a condition matches (PS3.4 C.2.2.2)."""

    STRING = "string"  # single value or wildcard (C.2.2.2.1, C.2.2.2.4); several values are OR-ed
    RANGE = "range"  # C.2.2.2.5: (lower, upper), "" for an open end
    UIDS = "uids"  # C.2.2.2.2: list of UID matching
    NUMBER = "number"  # single value matching of an integer


@dataclass(frozen=True, slots=True)
class Condition:
    """One matching key with a non-universal value."""

    attribute: IndexedAttribute
    kind: MatchKind
    values: tuple[str, ...]


@dataclass(frozen=True)
class Query:
    """A validated QIDO-RS request at one level."""

    level: QueryLevel
    conditions: tuple[Condition, ...] = ()
    # Attributes asked for explicitly: universal-matching keys and includefield, in order.
    return_tags: tuple[str, ...] = ()
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    vrs: dict[str, str] = field(default_factory=dict)  # VR of every tag in return_tags


def uid_is_valid(uid: str) -> bool:
    """A UID as PS3.5 §9.1 allows it: digits and dots, at most 64 characters."""
    return len(uid) <= 64 and _UID_RE.match(uid) is not None


def _resolve(attribute_id: str, param: str) -> tuple[str, str | None]:
    """(tag hex, VR) for a keyword or an 8-digit tag; VR None for a private or unknown tag."""
    if _TAG_RE.match(attribute_id):
        tag = attribute_id.upper()
        try:
            return tag, dictionary_VR(int(tag, 16))
        except KeyError:
            return tag, None
    tag_int = tag_for_keyword(attribute_id)
    if tag_int is None:
        if "." in attribute_id:
            raise InvalidRequestError(
                f"query parameter {param!r}: sequence attribute paths are not supported"
            )
        raise InvalidRequestError(
            f"query parameter {param!r}: not a DICOM keyword or an 8-digit hexadecimal tag"
        )
    return f"{tag_int:08X}", dictionary_VR(tag_int)


def _describe(tag: str) -> str:
    keyword = keyword_for_tag(int(tag, 16))
    return keyword or f"({tag[:4]},{tag[4:]})"


def _check_date(value: str, param: str) -> None:
    try:
        if len(value) != 8 or not (value.isascii() and value.isdigit()):
            raise ValueError
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise InvalidRequestError(
            f"query parameter {param!r}: {value!r} is not a date (YYYYMMDD)"
        ) from None


def _check_time(value: str, param: str) -> None:
    if not _TM_RE.match(value):
        raise InvalidRequestError(
            f"query parameter {param!r}: {value!r} is not a time (HH[MM[SS[.FFFFFF]]])"
        )


def _temporal_condition(attr: IndexedAttribute, value: str, param: str) -> Condition:
    """DA/TM single value or range (PS3.4 C.2.2.2.5: 'a-b', '-b', 'a-')."""
    check = _check_date if attr.vr == "DA" else _check_time
    if "-" not in value:
        check(value, param)
        return Condition(attr, MatchKind.STRING, (value,))
    lower, _, upper = value.partition("-")
    if "-" in upper or not (lower or upper):
        raise InvalidRequestError(f"query parameter {param!r}: {value!r} is not a valid range")
    for bound in (lower, upper):
        if bound:
            check(bound, param)
    if lower and upper and lower > upper:
        raise InvalidRequestError(
            f"query parameter {param!r}: range {value!r} ends before it starts"
        )
    return Condition(attr, MatchKind.RANGE, (lower, upper))


def _condition(attr: IndexedAttribute, value: str, param: str) -> Condition | None:
    """The condition for one matching key, or None for universal matching."""
    if attr.vr == "UI":
        # C.2.2.2.2 list of UID matching: DICOM's backslash, or the comma PS3.18 §8.3.4 allows.
        uids = tuple(u.strip() for u in re.split(r"[\\,]", value))
        bad = [u for u in uids if not uid_is_valid(u)]
        if bad:
            raise InvalidRequestError(
                f"query parameter {param!r}: {bad[0]!r} is not a valid UID "
                "(wildcards are not allowed on UIDs)"
            )
        return Condition(attr, MatchKind.UIDS, uids)
    if attr.vr in ("DA", "TM"):
        return _temporal_condition(attr, value, param)
    if attr.vr in _NUMBER_VRS:
        if not re.fullmatch(r"[+-]?[0-9]{1,10}", value):
            raise InvalidRequestError(f"query parameter {param!r}: {value!r} is not an integer")
        return Condition(attr, MatchKind.NUMBER, (str(int(value)),))
    if attr.vr in _STRING_VRS:
        if attr.vr == "CS":
            # Code strings cannot contain a comma or backslash, so both separate alternatives.
            values = tuple(v.strip() for v in re.split(r"[\\,]", value))
        elif "\\" in value:
            raise InvalidRequestError(
                f"query parameter {param!r}: multiple values are not supported for this attribute"
            )
        else:
            values = (value,)
        if any(not v.strip("*") for v in values):
            return None  # "*" alone is universal matching (C.2.2.2.4)
        return Condition(attr, MatchKind.STRING, values)
    raise InvalidRequestError(f"query parameter {param!r}: matching on VR {attr.vr} unsupported")


def _parse_bool(value: str, param: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise InvalidRequestError(f"query parameter {param!r}: expected true or false")
    return lowered == "true"


def _parse_count(value: str, param: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise InvalidRequestError(f"query parameter {param!r}: expected a non-negative integer")
    if len(value) > 9:
        raise InvalidRequestError(f"query parameter {param!r}: must be below 1000000000")
    return int(value)


def parse_query(level: QueryLevel, params: list[tuple[str, str]]) -> Query:
    """Validate QIDO-RS query parameters (PS3.18 §8.3.4) for a search at `level`."""
    conditions: list[Condition] = []
    return_tags: dict[str, None] = {}  # ordered set
    vrs: dict[str, str] = {}
    keys: dict[str, tuple[str, str]] = {}  # tag -> (parameter name, value)
    include_all = fuzzy = False
    limit: int | None = None
    offset = 0
    seen_control: set[str] = set()

    for name, raw_value in params:
        value = raw_value.strip(" ")  # leading/trailing spaces are not significant (PS3.5 §6.2)
        if name in _CONTROL_PARAMS:
            if name != "includefield":
                if name in seen_control:
                    raise InvalidRequestError(f"query parameter {name!r} given more than once")
                seen_control.add(name)
            if name == "limit":
                limit = _parse_count(value, name)
            elif name == "offset":
                offset = _parse_count(value, name)
            elif name == "fuzzymatching":
                fuzzy = _parse_bool(value, name)
            else:
                for item in (v.strip() for v in value.split(",")):
                    if item == "all":
                        include_all = True
                        continue
                    if not item:
                        raise InvalidRequestError("query parameter 'includefield': empty item")
                    # PS3.18 §8.3.4: a sequence path returns its top-level sequence.
                    tag, vr = _resolve(item.split(".", 1)[0], "includefield")
                    return_tags[tag] = None
                    if vr is not None:
                        vrs[tag] = vr
            continue

        tag, vr = _resolve(name, name)
        if tag in keys:
            # A repeated key (dicomweb-client sends a list filter so) is a value list.
            keys[tag] = (keys[tag][0], f"{keys[tag][1]}\\{value}")
        else:
            keys[tag] = (name, value)
        return_tags[tag] = None  # a matching key is also a return key (PS3.4 C.2.2.1.2)
        if vr is not None:
            vrs[tag] = vr

    for tag, (name, value) in keys.items():
        if not value:
            continue  # universal matching: return the attribute, match everything
        attr = INDEXED.get(tag)
        if attr is None or not attr.matchable:
            raise InvalidRequestError(
                f"query parameter {name!r}: {_describe(tag)} is not a matching key of this "
                "archive (supported: " + ", ".join(a.keyword for a in _matchable(level)) + ")"
            )
        if LEVEL_RANK[attr.level] > LEVEL_RANK[level]:
            raise InvalidRequestError(
                f"query parameter {name!r}: {attr.keyword} is a {attr.level}-level attribute "
                f"and cannot be matched in a {level} query"
            )
        condition = _condition(attr, value, name)
        if condition is not None:
            conditions.append(condition)

    for tag in RESULT_ATTRIBUTES:
        vrs[tag] = RESULT_ATTRIBUTES[tag]
    return Query(
        level=level,
        conditions=tuple(conditions),
        return_tags=tuple(return_tags),
        include_all=include_all,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
        vrs=vrs,
    )


def _matchable(level: QueryLevel) -> list[IndexedAttribute]:
    return [a for a in INDEXED.values() if a.matchable and LEVEL_RANK[a.level] <= LEVEL_RANK[level]]
