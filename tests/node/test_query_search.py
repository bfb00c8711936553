"""QIDO-RS search over a real index (SQLite and PostgreSQL) filled from real pydicom datasets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import BasicTextSRStorage, CTImageStorage, generate_uid
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from node.errors import InvalidRequestError
from node.services.query import QueryLevel, parse_query, search
from tests.node.query_fixtures import HeaderStore, index_dataset, index_engine, make_dataset

__all__ = ["index_engine"]  # the fixture, imported so pytest finds it here

BASE = "http://node.test/dicom-web"


@dataclass
class Corpus:
    engine: Engine
    headers: HeaderStore
    study: dict[str, str]  # label -> StudyInstanceUID
    series: dict[str, str]  # label -> SeriesInstanceUID
    instances: dict[str, list[str]]  # series label -> SOP Instance UIDs in instance order


@pytest.fixture(scope="session")
def corpus(index_engine: Engine) -> Corpus:
    """Five studies whose values exercise every matching rule."""
    headers = HeaderStore()
    study = {k: str(generate_uid()) for k in ("s1", "s2", "s3", "s4", "s5")}
    series_labels = ("s1_ct", "s1_sr", "s2_mr", "s3_dx", "s4_ct", "s5_ot")
    series = {k: str(generate_uid()) for k in series_labels}
    instances: dict[str, list[str]] = {k: [] for k in series}
    common = {
        "s1": dict(
            patient_name="Doe^John",
            patient_id="P001",
            study_date="20240115",
            study_time="101500",
            accession="ACC001",
            study_description="CT Chest",
            referring="Smith^Anna",
        ),
        "s2": dict(
            patient_name="DOE^JANE",
            patient_id="P002",
            study_date="20240131",
            study_time="083000",
            accession="ACC002",
            study_description="MR Brain",
        ),
        "s3": dict(
            patient_name="O'Brien^Mary^Ann",
            patient_id="P_003",
            study_date="20231201",
            study_time="120000",
            accession="ACC%03",
            study_description="[Research] Chest PA",
        ),
        "s4": dict(
            patient_name="Dodd^Johnny=ドッド^ジョニー",
            patient_id="P004",
            study_date="20240201",
            accession="ACC004",
        ),
        "s5": dict(patient_name="Nobody", patient_id="PX005", accession="ACCX05"),
    }
    layout = [
        ("s1", "s1_ct", "CT", 1, 2),
        ("s1", "s1_sr", "SR", 2, 1),
        ("s2", "s2_mr", "MR", 1, 1),
        ("s3", "s3_dx", "DX", 1, 1),
        ("s4", "s4_ct", "CT", 1, 1),
        ("s5", "s5_ot", "OT", 1, 1),
    ]
    with index_engine.begin() as conn:
        for study_label, series_label, modality, number, count in layout:
            # Instance numbers inserted out of order: results must still come sorted.
            for instance_number in reversed(range(1, count + 1)):
                ds = make_dataset(
                    **common[study_label],
                    study_uid=study[study_label],
                    series_uid=series[series_label],
                    modality=modality,
                    series_number=number,
                    instance_number=instance_number,
                    sop_class_uid=BasicTextSRStorage if modality == "SR" else CTImageStorage,
                    extra={"PatientWeight": 70, "BodyPartThickness": 12},
                )
                index_dataset(conn, ds)
                headers.add(ds)
                instances[series_label].insert(0, str(ds.SOPInstanceUID))
    return Corpus(index_engine, headers, study, series, instances)


def run(
    corpus: Corpus,
    level: QueryLevel,
    params: list[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[dict[str, Any]]:
    query = parse_query(level, params)
    with corpus.engine.connect() as conn:
        return search(
            conn,
            query,
            study_uid=study_uid,
            series_uid=series_uid,
            base_url=BASE,
            load_metadata=corpus.headers.load,
        )


def value(dataset: dict[str, Any], tag: str) -> Any:
    element = dataset[tag]
    return element.get("Value", [None])[0]


def studies(corpus: Corpus, params: list[tuple[str, str]]) -> list[str]:
    """Labels of the studies found, in response order."""
    by_uid = {uid: label for label, uid in corpus.study.items()}
    return [by_uid[value(d, "0020000D")] for d in run(corpus, QueryLevel.STUDY, params)]


STUDY_ORDER = ["s3", "s1", "s2", "s4", "s5"]  # by study date, undated last


def test_all_studies_in_stable_date_order(corpus: Corpus) -> None:
    assert studies(corpus, []) == STUDY_ORDER


def test_patient_id_matches_exactly_and_case_sensitively(corpus: Corpus) -> None:
    assert studies(corpus, [("PatientID", "P001")]) == ["s1"]
    assert studies(corpus, [("00100020", "P001")]) == ["s1"]
    assert studies(corpus, [("PatientID", "p001")]) == []
    assert studies(corpus, [("PatientID", "P00")]) == []


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("doe*", ["s1", "s2"]),
        ("DOE^J*", ["s1", "s2"]),
        ("d?e^*", ["s1", "s2"]),
        ("*^MARY^*", ["s3"]),
        ("doe^john", ["s1"]),
        ("Doe", []),
        ("*ジョニー", ["s4"]),
    ],
)
def test_patient_name_wildcards_are_case_insensitive(
    corpus: Corpus, pattern: str, expected: list[str]
) -> None:
    assert studies(corpus, [("PatientName", pattern)]) == expected


def test_wildcards_on_other_strings_are_case_sensitive(corpus: Corpus) -> None:
    assert studies(corpus, [("StudyDescription", "*Chest*")]) == ["s3", "s1"]
    assert studies(corpus, [("StudyDescription", "*chest*")]) == []
    assert studies(corpus, [("AccessionNumber", "ACC00?")]) == ["s1", "s2", "s4"]


def test_sql_pattern_characters_in_values_match_only_themselves(corpus: Corpus) -> None:
    # '_' and '%' are LIKE wildcards and '[' a GLOB class: none may widen the match.
    assert studies(corpus, [("PatientID", "P_00*")]) == ["s3"]
    assert studies(corpus, [("AccessionNumber", "ACC%*")]) == ["s3"]
    assert studies(corpus, [("StudyDescription", "[Research]*")]) == ["s3"]
    assert studies(corpus, [("PatientID", "P_003")]) == ["s3"]


def test_fuzzy_matching_finds_name_words_by_prefix_in_any_order(corpus: Corpus) -> None:
    fuzzy = ("fuzzymatching", "true")
    assert studies(corpus, [fuzzy, ("PatientName", "jo do")]) == ["s1", "s4"]
    assert studies(corpus, [fuzzy, ("PatientName", "John^Doe")]) == ["s1"]
    assert studies(corpus, [fuzzy, ("PatientName", "ann")]) == ["s3"]
    assert studies(corpus, [fuzzy, ("PatientName", "ジョ")]) == ["s4"]
    assert studies(corpus, [("fuzzymatching", "false"), ("PatientName", "jo do")]) == []


def test_referring_physician_name_is_matched_case_insensitively(corpus: Corpus) -> None:
    assert studies(corpus, [("ReferringPhysicianName", "smith*")]) == ["s1"]


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        ("20240101-20240131", ["s1", "s2"]),
        ("-20231231", ["s3"]),
        ("20240201-", ["s4"]),
        ("20240115", ["s1"]),
        ("20240116-20240130", []),
    ],
)
def test_study_date_ranges(corpus: Corpus, dates: str, expected: list[str]) -> None:
    assert studies(corpus, [("StudyDate", dates)]) == expected


def test_time_ranges_cover_the_precision_given(corpus: Corpus) -> None:
    assert studies(corpus, [("StudyTime", "-1015")]) == ["s1", "s2"]
    assert studies(corpus, [("StudyTime", "1016-")]) == ["s3"]
    assert studies(corpus, [("StudyTime", "083000")]) == ["s2"]


def test_uid_lists_with_backslash_or_comma(corpus: Corpus) -> None:
    s1, s3 = corpus.study["s1"], corpus.study["s3"]
    assert studies(corpus, [("StudyInstanceUID", f"{s1}\\{s3}")]) == ["s3", "s1"]
    assert studies(corpus, [("StudyInstanceUID", f"{s3},{s1}")]) == ["s3", "s1"]
    assert studies(corpus, [("StudyInstanceUID", "1.2.3.4")]) == []


def test_modalities_in_study_matches_any_series(corpus: Corpus) -> None:
    assert studies(corpus, [("ModalitiesInStudy", "SR")]) == ["s1"]
    assert studies(corpus, [("ModalitiesInStudy", "CT\\MR")]) == ["s1", "s2", "s4"]
    assert studies(corpus, [("ModalitiesInStudy", "C*")]) == ["s1", "s4"]


def test_several_keys_must_all_match(corpus: Corpus) -> None:
    params = [("PatientName", "DOE*"), ("StudyDate", "20240120-"), ("ModalitiesInStudy", "MR")]
    assert studies(corpus, params) == ["s2"]


def test_study_defaults_and_computed_attributes(corpus: Corpus) -> None:
    corpus.headers.calls.clear()
    [result] = run(corpus, QueryLevel.STUDY, [("PatientID", "P001")])
    s1 = corpus.study["s1"]
    assert value(result, "00201206") == 2  # NumberOfStudyRelatedSeries
    assert value(result, "00201208") == 3  # NumberOfStudyRelatedInstances
    assert result["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert value(result, "00081190") == f"{BASE}/studies/{s1}"
    assert value(result, "00080056") == "ONLINE"
    assert result["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert result["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "Smith^Anna"}]}
    for tag in ("00080020", "00080030", "00080050", "00100020", "00100030", "00100040"):
        assert "Value" in result[tag], tag
    assert list(result) == sorted(result)  # DICOM JSON in tag order
    assert corpus.headers.calls == []  # defaults never need a header


def test_person_name_groups_and_empty_values(corpus: Corpus) -> None:
    [s4] = run(corpus, QueryLevel.STUDY, [("PatientID", "P004")])
    names = {"Alphabetic": "Dodd^Johnny", "Ideographic": "ドッド^ジョニー"}
    assert s4["00100010"]["Value"] == [names]
    assert s4["00080030"] == {"vr": "TM"}  # no study time: present, zero length
    assert s4["00080090"] == {"vr": "PN"}


def test_includefield_reads_headers_once_per_page(corpus: Corpus) -> None:
    corpus.headers.calls.clear()
    results = run(
        corpus,
        QueryLevel.STUDY,
        [("PatientName", "DOE*"), ("includefield", "InstitutionName,00101030")],
    )
    assert [value(r, "00080080") for r in results] == ["General Hospital"] * 2
    assert [value(r, "00101030") for r in results] == [70, 70]
    assert len(corpus.headers.calls) == 1 and len(corpus.headers.calls[0]) == 2
    # The representative of a study is one of its own instances.
    s1_instances = corpus.instances["s1_ct"] + corpus.instances["s1_sr"]
    assert any(uid in s1_instances for uid in corpus.headers.calls[0])


def test_includefield_of_an_absent_attribute_returns_it_empty(corpus: Corpus) -> None:
    [result] = run(
        corpus, QueryLevel.STUDY, [("PatientID", "P001"), ("includefield", "OperatorsName")]
    )
    assert result["00081070"] == {"vr": "PN"}


def test_includefield_all_at_study_level_keeps_to_study_attributes(corpus: Corpus) -> None:
    [result] = run(corpus, QueryLevel.STUDY, [("PatientID", "P001"), ("includefield", "all")])
    assert value(result, "00101030") == 70  # patient module, from the header
    assert "00080018" not in result  # an instance's own UID does not describe the study
    assert "00080060" not in result  # nor does one series' modality
    assert value(result, "00201208") == 3


def test_includefield_all_at_instance_level_returns_the_header(corpus: Corpus) -> None:
    series = corpus.series["s1_ct"]
    results = run(
        corpus,
        QueryLevel.INSTANCE,
        [("includefield", "all")],
        study_uid=corpus.study["s1"],
        series_uid=series,
    )
    assert [value(r, "00080018") for r in results] == corpus.instances["s1_ct"]
    assert value(results[0], "00080070") == "pacsmesh-tests"
    assert "7FE00010" not in results[0]
    assert value(results[0], "00101030") == 70


def test_no_header_is_read_when_the_index_answers(corpus: Corpus) -> None:
    corpus.headers.calls.clear()
    run(corpus, QueryLevel.INSTANCE, [("includefield", "Rows,Columns,PatientID")])
    assert corpus.headers.calls == []


def test_limit_and_offset_page_through_a_stable_order(corpus: Corpus) -> None:
    pages = [studies(corpus, [("limit", "2"), ("offset", str(offset))]) for offset in (0, 2, 4, 6)]
    assert pages == [STUDY_ORDER[0:2], STUDY_ORDER[2:4], STUDY_ORDER[4:], []]
    assert studies(corpus, [("offset", "3")]) == STUDY_ORDER[3:]
    assert studies(corpus, [("limit", "0")]) == []


def test_series_of_a_study(corpus: Corpus) -> None:
    s1 = corpus.study["s1"]
    results = run(corpus, QueryLevel.SERIES, [], study_uid=s1)
    assert [value(r, "0020000E") for r in results] == [
        corpus.series["s1_ct"],
        corpus.series["s1_sr"],
    ]
    ct = results[0]
    assert value(ct, "00080060") == "CT"
    assert value(ct, "00200011") == 1
    assert value(ct, "00201209") == 2  # NumberOfSeriesRelatedInstances
    assert value(ct, "0020000D") == s1
    assert value(ct, "00081190") == f"{BASE}/studies/{s1}/series/{corpus.series['s1_ct']}"
    assert "00100010" not in ct  # within one study, study attributes are not repeated


def test_all_series_carry_their_study_attributes(corpus: Corpus) -> None:
    results = run(corpus, QueryLevel.SERIES, [("Modality", "CT"), ("PatientName", "do*")])
    assert sorted(value(r, "0020000E") for r in results) == sorted(
        [corpus.series["s1_ct"], corpus.series["s4_ct"]]
    )
    assert {value(r, "00100020") for r in results} == {"P001", "P004"}
    assert all("00201208" in r for r in results)


def test_series_matching_in_a_study(corpus: Corpus) -> None:
    s1 = corpus.study["s1"]
    results = run(corpus, QueryLevel.SERIES, [("Modality", "SR")], study_uid=s1)
    assert [value(r, "0020000E") for r in results] == [corpus.series["s1_sr"]]
    assert run(corpus, QueryLevel.SERIES, [("Modality", "MR")], study_uid=s1) == []


def test_series_includefield_all_keeps_to_series_attributes(corpus: Corpus) -> None:
    results = run(
        corpus, QueryLevel.SERIES, [("includefield", "all")], study_uid=corpus.study["s2"]
    )
    [mr] = results
    assert value(mr, "00080070") == "pacsmesh-tests"  # equipment module
    assert "00080018" not in mr


def test_instances_of_a_series_in_instance_number_order(corpus: Corpus) -> None:
    s1, ct = corpus.study["s1"], corpus.series["s1_ct"]
    results = run(corpus, QueryLevel.INSTANCE, [], study_uid=s1, series_uid=ct)
    sops = [value(r, "00080018") for r in results]
    assert sops == corpus.instances["s1_ct"]
    assert [value(r, "00200013") for r in results] == [1, 2]
    first = results[0]
    assert value(first, "00081190") == f"{BASE}/studies/{s1}/series/{ct}/instances/{sops[0]}"
    for tag in ("00080016", "00280010", "00280011", "00280100", "0020000D", "0020000E"):
        assert tag in first, tag
    assert "00100010" not in first


def test_instances_of_a_study_and_of_all_studies(corpus: Corpus) -> None:
    s1 = corpus.study["s1"]
    in_study = run(corpus, QueryLevel.INSTANCE, [], study_uid=s1)
    assert len(in_study) == 3
    assert all(value(r, "00080060") in ("CT", "SR") for r in in_study)  # series defaults
    sr = run(corpus, QueryLevel.INSTANCE, [("SOPClassUID", BasicTextSRStorage)])
    assert [value(r, "00080018") for r in sr] == corpus.instances["s1_sr"]
    assert value(sr[0], "00100020") == "P001"  # study defaults across all studies
    numbered = run(corpus, QueryLevel.INSTANCE, [("InstanceNumber", "2")])
    assert [value(r, "00080018") for r in numbered] == [corpus.instances["s1_ct"][1]]


def test_unknown_or_malformed_path_uids(corpus: Corpus) -> None:
    assert run(corpus, QueryLevel.SERIES, [], study_uid="1.2.3.999") == []
    with pytest.raises(InvalidRequestError, match="study UID"):
        run(corpus, QueryLevel.SERIES, [], study_uid="not-a-uid")
    with pytest.raises(InvalidRequestError, match="series UID"):
        run(corpus, QueryLevel.INSTANCE, [], study_uid=corpus.study["s1"], series_uid="x")


def test_base_url_trailing_slash_is_not_doubled(corpus: Corpus) -> None:
    query = parse_query(QueryLevel.STUDY, [("PatientID", "P002")])
    with corpus.engine.connect() as conn:
        [result] = search(conn, query, base_url=BASE + "/", load_metadata=corpus.headers.load)
    assert value(result, "00081190") == f"{BASE}/studies/{corpus.study['s2']}"


def test_lower_level_index_attributes_are_not_invented_for_a_study(corpus: Corpus) -> None:
    corpus.headers.calls.clear()
    [result] = run(
        corpus, QueryLevel.STUDY, [("PatientID", "P001"), ("includefield", "00081030,00080060")]
    )
    assert "00080060" not in result  # Modality belongs to a series; ModalitiesInStudy answers
    assert result["00080061"]["Value"] == ["CT", "SR"]
    assert value(result, "00081030") == "CT Chest"
    assert corpus.headers.calls == []  # and no header was decrypted for it


def test_modalities_in_study_in_series_and_instance_searches(corpus: Corpus) -> None:
    # Every series of a study that has an SR series, not only the SR series itself.
    found = run(corpus, QueryLevel.SERIES, [("ModalitiesInStudy", "SR")])
    assert sorted(value(r, "0020000E") for r in found) == sorted(
        [corpus.series["s1_ct"], corpus.series["s1_sr"]]
    )
    instances = run(corpus, QueryLevel.INSTANCE, [("ModalitiesInStudy", "MR")])
    assert [value(r, "00080018") for r in instances] == corpus.instances["s2_mr"]


_NAMES = [
    "PatientName", "PatientID", "StudyDate", "StudyTime", "StudyInstanceUID", "Modality",
    "ModalitiesInStudy", "SeriesNumber", "InstanceNumber", "Rows", "SOPClassUID", "00100010",
    "0020000d", "includefield", "limit", "offset", "fuzzymatching", "InstitutionName", "x",
]  # fmt: skip
_VALUE_CHARS = "019AZaz*?%_[]\\-^=,. ドッ"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    level=st.sampled_from(list(QueryLevel)),
    params=st.lists(
        st.tuples(st.sampled_from(_NAMES), st.text(_VALUE_CHARS, max_size=12)), max_size=4
    ),
)
def test_any_query_is_answered_or_refused_with_a_reason(
    corpus: Corpus, level: QueryLevel, params: list[tuple[str, str]]
) -> None:
    """Whatever a client sends: results, or a 400 with a reason — never another error."""
    try:
        results = run(corpus, level, params)
    except InvalidRequestError as exc:
        assert exc.http_status == 400 and exc.message
        return
    assert all("00081190" in r for r in results)


def test_search_runs_on_an_orm_session_too(corpus: Corpus) -> None:
    query = parse_query(QueryLevel.STUDY, [("PatientID", "P002")])
    with Session(corpus.engine) as session:
        [result] = search(session, query, base_url=BASE, load_metadata=corpus.headers.load)
    assert value(result, "0020000D") == corpus.study["s2"]
