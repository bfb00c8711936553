"""QIDO-RS query parameter validation: every malformed request is refused with its reason."""

from __future__ import annotations

import pytest

from node.errors import InvalidRequestError
from node.services.query import QueryLevel, bounded, parse_query
from node.services.query_keys import MatchKind

STUDY = QueryLevel.STUDY


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ([("foo", "1")], "'foo'"),
        ([("PatientNmae", "x")], "not a DICOM keyword"),
        ([("0010002G", "x")], "'0010002G'"),
        ([("001000200", "x")], "'001000200'"),
        ([("StudyDate", "2024-01-01")], "not a valid range"),
        ([("StudyDate", "20241301")], "not a date"),
        ([("StudyDate", "2024011")], "not a date"),
        ([("StudyDate", "２０２４０１０１")], "not a date"),
        ([("StudyDate", "2024*")], "not a date"),
        ([("StudyDate", "-")], "not a valid range"),
        ([("StudyDate", "20240201-20240101")], "ends before it starts"),
        ([("StudyTime", "2561")], "not a time"),
        ([("StudyTime", "10:30")], "not a time"),
        ([("StudyInstanceUID", "1.2.*")], "not a valid UID"),
        ([("StudyInstanceUID", "1.2.3\\abc")], "'abc' is not a valid UID"),
        ([("limit", "ten")], "'limit'"),
        ([("limit", "-1")], "'limit'"),
        ([("offset", "1.5")], "'offset'"),
        ([("offset", "１２")], "non-negative integer"),  # full-width digits are not ASCII
        ([("limit", "10000000000")], "below 1000000000"),
        ([("limit", "5"), ("limit", "6")], "more than once"),
        ([("fuzzymatching", "yes")], "'fuzzymatching'"),
        ([("PatientID", "a"), ("00100020", "b")], "multiple values"),
        ([("StudyDate", "20240101"), ("StudyDate", "20240102")], "not a date"),
        ([("includefield", "NotAKeyword")], "'includefield'"),
        ([("includefield", "PatientID,,StudyDate")], "empty item"),
        ([("InstitutionName", "General*")], "not a matching key"),
        ([("NumberOfStudyRelatedSeries", "2")], "not a matching key"),
        ([("RetrieveURL", "http://x")], "not a matching key"),
        ([("Modality", "CT")], "series-level attribute"),
        ([("PatientID", "A\\B")], "multiple values"),
        ([("00400275.00400009", "X")], "sequence attribute paths"),
    ],
)
def test_malformed_parameters_are_refused_with_the_reason(
    params: list[tuple[str, str]], reason: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_query(STUDY, params)
    assert caught.value.http_status == 400
    assert reason in caught.value.message


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ([("SeriesNumber", "x")], "not an integer"),
        ([("Rows", "12.5")], "not an integer"),
        ([("SOPInstanceUID", "1.2\\")], "not a valid UID"),
    ],
)
def test_malformed_values_at_instance_level_are_refused(
    params: list[tuple[str, str]], reason: str
) -> None:
    with pytest.raises(InvalidRequestError, match=reason):
        parse_query(QueryLevel.INSTANCE, params)


def test_lower_level_attribute_is_a_matching_key_at_its_own_level() -> None:
    query = parse_query(QueryLevel.INSTANCE, [("Modality", "CT"), ("SOPClassUID", "1.2")])
    assert [c.attribute.keyword for c in query.conditions] == ["Modality", "SOPClassUID"]


def test_keywords_and_tags_name_the_same_attribute() -> None:
    by_keyword = parse_query(STUDY, [("PatientID", "P1")])
    by_tag = parse_query(STUDY, [("00100020", "P1")])
    lower_tag = parse_query(STUDY, [("0010002a", "")])
    assert by_keyword.conditions == by_tag.conditions
    assert lower_tag.return_tags == ("0010002A",)


def test_universal_matching_returns_the_attribute_without_filtering() -> None:
    query = parse_query(STUDY, [("PatientName", ""), ("PatientID", "*"), ("AccessionNumber", "")])
    assert query.conditions == ()
    assert query.return_tags == ("00100010", "00100020", "00080050")


def test_ranges_uid_lists_and_paging_are_normalised() -> None:
    query = parse_query(
        STUDY,
        [
            ("StudyDate", "-20240131"),
            ("StudyTime", "0800-"),
            ("StudyInstanceUID", "1.2.3\\1.2.4,1.2.5"),
            ("includefield", "00081030,InstitutionName"),
            ("includefield", "all"),
            ("fuzzymatching", "TRUE"),
            ("limit", "10"),
            ("offset", "20"),
        ],
    )
    kinds = [(c.attribute.keyword, c.kind, c.values) for c in query.conditions]
    assert kinds == [
        ("StudyDate", MatchKind.RANGE, ("", "20240131")),
        ("StudyTime", MatchKind.RANGE, ("0800", "")),
        ("StudyInstanceUID", MatchKind.UIDS, ("1.2.3", "1.2.4", "1.2.5")),
    ]
    assert query.include_all and query.fuzzy
    assert (query.limit, query.offset) == (10, 20)
    assert "00080080" in query.return_tags and query.vrs["00080080"] == "LO"


def test_private_tags_may_be_requested_but_not_matched() -> None:
    query = parse_query(STUDY, [("includefield", "00091001")])
    assert query.return_tags == ("00091001",)
    with pytest.raises(InvalidRequestError, match="not a matching key"):
        parse_query(STUDY, [("00091001", "x")])


def test_a_repeated_key_is_a_value_list() -> None:
    query = parse_query(
        QueryLevel.SERIES,
        [("Modality", "CT"), ("Modality", "MR"), ("SeriesInstanceUID", "1.2"), ("0020000E", "1.3")],
    )
    assert [(c.attribute.keyword, c.values) for c in query.conditions] == [
        ("Modality", ("CT", "MR")),
        ("SeriesInstanceUID", ("1.2", "1.3")),
    ]


def test_bounded_asks_for_one_more_than_the_cap() -> None:
    assert bounded(parse_query(STUDY, []), 100).limit == 101
    assert bounded(parse_query(STUDY, [("limit", "5")]), 100).limit == 5
    assert bounded(parse_query(STUDY, [("limit", "500"), ("offset", "7")]), 100).limit == 101
    assert bounded(parse_query(STUDY, [("offset", "7")]), 100).offset == 7
