"""QIDO-RS search over the archive index (PS3.18 §10.6, matching rules of PS3.4 C.2.2.2).

One SQL statement per search selects only the columns the response needs, with matching,
ordering, limit and offset in SQL. Attributes the index does not hold come from the encrypted
headers through the caller's `load_metadata`, in one batch per search, and only when the
request asks for them (includefield); at study and series level one representative instance
(the smallest SOP Instance UID) answers for its study or series.

Case rules (C.2.2.2.1): matching is case-sensitive, except for PN attributes, which match
case-insensitively (the index keeps an upper-cased copy of the patient's name for this).
Fuzzy matching (PS3.18 §8.3.4, `fuzzymatching=true`) applies to PN keys: every word of the
query value (words split at `^`, `=` and spaces) must be a case-insensitive prefix of some
word of the stored name, in any order — `fuzzymatching=true&PatientName=jo do` finds
`Doe^John`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    Select,
    Table,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from node.errors import InvalidRequestError
from node.services.query_keys import (
    DEFAULT_TAGS,
    INDEXED,
    INSTANCE_AVAILABILITY,
    LEVEL_RANK,
    RESULT_ATTRIBUTES,
    RETRIEVE_URL,
    Condition,
    IndexedAttribute,
    MatchKind,
    Query,
    QueryLevel,
    parse_query,
    uid_is_valid,
)
from node.storage.index import Instance, Series, Study

__all__ = [
    "MAX_RESULTS",
    "Query",
    "QueryLevel",
    "SearchScope",
    "bounded",
    "parse_query",
    "search",
]

MetadataLoader = Callable[[list[str]], dict[str, dict[str, Any]]]
DicomJson = dict[str, Any]

STUDY_T: Final = cast(Table, Study.__table__)  # type: ignore[attr-defined]
SERIES_T: Final = cast(Table, Series.__table__)  # type: ignore[attr-defined]
INSTANCE_T: Final = cast(Table, Instance.__table__)  # type: ignore[attr-defined]
_TABLES: Final = {
    QueryLevel.STUDY: STUDY_T,
    QueryLevel.SERIES: SERIES_T,
    QueryLevel.INSTANCE: INSTANCE_T,
}

# Header attributes that `includefield=all` returns at study and series level: the patient and
# study modules (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2) and the series and equipment modules (C.7.3.1,
# C.7.5.1). Anything else is instance-specific and would misdescribe the study or series.
_STUDY_HEADER_TAGS: Final = frozenset(
    {"00080020", "00080030", "00080050", "00080090", "00080201", "00081030", "00081032"}
    | {"00081048", "00081060", "00081080", "0020000D", "00200010", "00321032", "00321060"}
)
_SERIES_HEADER_TAGS: Final = frozenset(
    {"00080021", "00080031", "00080060", "00080070", "00080080", "00081010", "00081040"}
    | {"0008103E", "00081050", "00081070", "00081090", "00081111", "00180015", "00181030"}
    | {"00185100", "0020000E", "00200011", "00200052", "00200060", "00400244", "00400245"}
    | {"00400253", "00400254", "00400275"}
)
# Each result's identifying columns, outermost first; the last one names the entity.
_KEYS: Final = {
    QueryLevel.STUDY: ("study_uid",),
    QueryLevel.SERIES: ("study_uid", "series_uid"),
    QueryLevel.INSTANCE: ("study_uid", "series_uid", "sop_instance_uid"),
}
_SEGMENTS: Final = ("studies", "series", "instances")
_INSTANCE_AVAILABLE: Final = "ONLINE"  # Instance Availability (0008,0056): all on local disk


# The most results one response carries; a client pages past it with offset.
MAX_RESULTS: Final = 10_000


def bounded(query: Query, max_results: int = MAX_RESULTS) -> Query:
    """The query limited to max_results + 1, so that the caller can tell it was cut short."""
    wanted = max_results + 1 if query.limit is None else min(query.limit, max_results + 1)
    return replace(query, limit=wanted)


@dataclass(frozen=True)
class SearchScope:
    """The part of the archive a search may see (a credential limited to some studies).

    Only `study_uids`; below study level, only series whose modality is not excluded (a NULL
    modality counts as excluded), with `images_only`, only instances with pixel rows and, with
    `declared_clean`, only instances recorded as declaring no burned-in annotation; a series
    only if it holds such an instance.
    """

    study_uids: frozenset[str]
    excluded_modalities: frozenset[str] = frozenset()
    images_only: bool = False
    declared_clean: bool = False

    def where(self, level: QueryLevel) -> list[ColumnElement[bool]]:
        """The conditions that keep a search at `level` inside the scope."""
        # Rendered as literals: a scope may hold more studies than a statement has
        # parameters (SQLite 32766), and its values are UIDs read from the index itself.
        studies: Any = bindparam(
            "scope_studies", sorted(self.study_uids), expanding=True, literal_execute=True
        )
        clauses: list[ColumnElement[bool]] = [_TABLES[level].c.study_uid.in_(studies)]
        if level is not QueryLevel.STUDY and self.excluded_modalities:
            excluded = sorted(self.excluded_modalities)
            clauses.append(SERIES_T.c.modality.not_in(excluded))
        servable: list[ColumnElement[bool]] = []
        if self.images_only:
            servable.append(INSTANCE_T.c.rows.is_not(None))
        if self.declared_clean:
            servable.append(INSTANCE_T.c.burned_in_annotation.is_(False))
        if level is QueryLevel.INSTANCE:
            clauses += servable
        elif level is QueryLevel.SERIES and servable:
            # A series is listed only if it holds an instance the scope would list.
            clauses.append(
                exists().where(INSTANCE_T.c.series_uid == SERIES_T.c.series_uid, *servable)
            )
        return clauses


def _dialect(conn: Connection | Session) -> str:
    if isinstance(conn, Session):
        return conn.get_bind().dialect.name
    return conn.dialect.name


def _column(attr: IndexedAttribute) -> ColumnElement[Any]:
    assert attr.column is not None
    return _TABLES[attr.level].c[attr.column]


def _wildcard(col: ColumnElement[Any], pattern: str, dialect: str) -> ColumnElement[bool]:
    """C.2.2.2.4 wildcard matching, case-sensitive, with the engine's own pattern operator."""
    if dialect == "sqlite":
        # SQLite's LIKE ignores ASCII case; GLOB is case-sensitive and still uses the index for
        # a literal prefix. Only '[' is special in GLOB beyond * and ?.
        return col.op("GLOB")(pattern.replace("[", "[[]"))
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return col.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def _string_match(col: ColumnElement[Any], value: str, dialect: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        return _wildcard(col, value, dialect)
    return col == value  # C.2.2.2.1 single value matching


def _fuzzy_name(col: ColumnElement[Any], value: str, dialect: str) -> ColumnElement[bool]:
    """Every query word is a prefix of some word of the (upper-cased) name."""
    words = [w for w in re.split(r"[\^=\s]+", value.upper()) if w.strip("*")]
    clauses = []
    for word in words:
        starts = [f"{word}*", f"*^{word}*", f"* {word}*", f"*={word}*"]
        clauses.append(or_(*(_wildcard(col, s, dialect) for s in starts)))
    return and_(true(), *clauses)


def _condition_sql(cond: Condition, fuzzy: bool, dialect: str) -> ColumnElement[bool]:
    attr = cond.attribute
    col = _column(attr)
    if cond.kind is MatchKind.UIDS:
        return col.in_(cond.values)
    if cond.kind is MatchKind.NUMBER:
        return col == int(cond.values[0])
    if cond.kind is MatchKind.RANGE:
        lower, upper = cond.values
        parts = []
        if lower:
            parts.append(col >= lower)
        if upper:
            # Times compare as text; '~' sorts after every digit and '.', so '-1030' keeps
            # 10:30:59.9 — an upper bound covers its whole stated precision.
            parts.append(col <= (upper + "~" if attr.vr == "TM" else upper))
        return and_(*parts)
    if attr.keyword == "ModalitiesInStudy":
        # A study matches when any of its series has a matching modality (PS3.4 C.3.4).
        # An alias, so that a series search (which has `series` in its own FROM) still
        # correlates on the study alone.
        other = SERIES_T.alias("study_series")
        return exists(
            select(other.c.series_uid).where(
                other.c.study_uid == STUDY_T.c.study_uid,
                or_(*(_string_match(other.c.modality, v, dialect) for v in cond.values)),
            )
        )
    if attr.vr == "PN":
        # PN matching is case-insensitive (C.2.2.2.1 allows it; a clinician types names in any
        # case). PatientName has an upper-cased, indexed twin column.
        target: ColumnElement[Any] = (
            STUDY_T.c.patient_name_search if attr.keyword == "PatientName" else func.upper(col)
        )
        values = [v.upper() for v in cond.values]
        if fuzzy:
            return or_(*(_fuzzy_name(target, v, dialect) for v in values))
        return or_(*(_string_match(target, v, dialect) for v in values))
    return or_(*(_string_match(col, v, dialect) for v in cond.values))


def _return_attributes(
    query: Query, study_uid: str | None, series_uid: str | None
) -> tuple[list[IndexedAttribute], list[str]]:
    """(index attributes, other tags) the response carries, in request order."""
    level = query.level
    tags = list(DEFAULT_TAGS[level])
    # PS3.18 §10.6.3: a search across all studies also returns the enclosing levels' defaults.
    if level is not QueryLevel.STUDY and study_uid is None:
        tags += DEFAULT_TAGS[QueryLevel.STUDY]
    if level is QueryLevel.INSTANCE and series_uid is None:
        tags += DEFAULT_TAGS[QueryLevel.SERIES]
    tags += query.return_tags
    if query.include_all:
        tags += [a.tag for a in INDEXED.values() if LEVEL_RANK[a.level] <= LEVEL_RANK[level]]
    indexed: dict[str, IndexedAttribute] = {}
    others: dict[str, None] = {}
    for tag in tags:
        attr = INDEXED.get(tag)
        if attr is not None:
            # An indexed attribute of a lower level (Modality in a study search, as viewers
            # ask) describes no single study or series: left out, rather than decrypting a
            # header per result to show one series' value.
            if LEVEL_RANK[attr.level] <= LEVEL_RANK[level]:
                indexed[tag] = attr
        elif tag not in RESULT_ATTRIBUTES:
            # Anything else comes from the header of the representative instance.
            others[tag] = None
    return list(indexed.values()), list(others)


def _from_clause(level: QueryLevel, levels: set[QueryLevel]) -> FromClause:
    if level is QueryLevel.STUDY:
        return STUDY_T
    joined: FromClause = _TABLES[level]
    if level is QueryLevel.INSTANCE and QueryLevel.SERIES in levels:
        joined = joined.join(SERIES_T, SERIES_T.c.series_uid == INSTANCE_T.c.series_uid)
    if QueryLevel.STUDY in levels:
        joined = joined.join(STUDY_T, STUDY_T.c.study_uid == _TABLES[level].c.study_uid)
    return joined


def _order_by(level: QueryLevel) -> list[Any]:
    """A total, stable order so that limit/offset pages neither repeat nor skip results."""
    if level is QueryLevel.STUDY:
        return [
            STUDY_T.c.study_date.asc().nulls_last(),
            STUDY_T.c.study_time.asc().nulls_last(),
            STUDY_T.c.study_uid,
        ]
    if level is QueryLevel.SERIES:
        return [
            SERIES_T.c.study_uid,
            SERIES_T.c.series_number.asc().nulls_last(),
            SERIES_T.c.series_uid,
        ]
    return [
        INSTANCE_T.c.study_uid,
        INSTANCE_T.c.series_uid,
        INSTANCE_T.c.instance_number.asc().nulls_last(),
        INSTANCE_T.c.sop_instance_uid,
    ]


def _statement(
    query: Query,
    attrs: list[IndexedAttribute],
    study_uid: str | None,
    series_uid: str | None,
    dialect: str,
    scope: SearchScope | None = None,
) -> Select[Any]:
    level = query.level
    table = _TABLES[level]
    # The entity's own UIDs first (see _KEYS), then one column per index attribute.
    columns: dict[str, ColumnElement[Any]] = {n: table.c[n].label(f"k_{n}") for n in _KEYS[level]}
    for attr in attrs:
        columns[attr.tag] = _column(attr).label(f"t_{attr.tag}")
    levels = {a.level for a in attrs} | {c.attribute.level for c in query.conditions}
    if any(c.attribute.keyword == "ModalitiesInStudy" for c in query.conditions):
        levels.add(QueryLevel.STUDY)
    where: list[ColumnElement[bool]] = [
        _condition_sql(c, query.fuzzy, dialect) for c in query.conditions
    ]
    if scope is not None:
        where += scope.where(level)
        if level is QueryLevel.INSTANCE and scope.excluded_modalities:
            levels.add(QueryLevel.SERIES)  # the modality lives on the series
    if study_uid is not None:
        where.append(table.c.study_uid == study_uid)
    if series_uid is not None:
        where.append(table.c.series_uid == series_uid)
    stmt = (
        select(*columns.values())
        .select_from(_from_clause(level, levels))
        .where(*where)
        .order_by(*_order_by(level))
    )
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    if query.offset:
        stmt = stmt.offset(query.offset)
    return stmt


def _representatives(
    conn: Connection | Session, level: QueryLevel, keys: Sequence[str]
) -> dict[str, str]:
    """Study or series UID -> the SOP Instance UID whose header stands for it."""
    if not keys:
        return {}
    group = INSTANCE_T.c.study_uid if level is QueryLevel.STUDY else INSTANCE_T.c.series_uid
    stmt = (
        select(group, func.min(INSTANCE_T.c.sop_instance_uid))
        .where(group.in_(list(keys)))
        .group_by(group)
    )
    return {row[0]: row[1] for row in conn.execute(stmt)}


def _converter(vr: str) -> Callable[[Any], DicomJson]:
    """Index value -> DICOM JSON attribute (PS3.18 F.2.2); zero length when absent."""
    if vr == "PN":
        return _person_name
    if vr == "CS":
        return _code_strings

    def convert(value: Any) -> DicomJson:
        if value is None or value == "":
            return {"vr": vr}
        return {"vr": vr, "Value": [value]}

    return convert


def _person_name(value: str | None) -> DicomJson:
    if not value:
        return {"vr": "PN"}
    if "=" not in value:  # the common case, without the intermediate containers
        return {"vr": "PN", "Value": [{"Alphabetic": value}]}
    # PS3.18 F.2.2: the =-separated component groups become named members.
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False))
    return {"vr": "PN", "Value": [{k: v for k, v in groups.items() if v}]}


def _code_strings(value: str | None) -> DicomJson:
    if not value:
        return {"vr": "CS"}
    return {"vr": "CS", "Value": value.split("\\")}


def _header_tags(header: DicomJson, level: QueryLevel) -> Iterable[str]:
    """The header attributes `includefield=all` returns at this level."""
    for tag, element in header.items():
        if tag == "7FE00010" or (isinstance(element, dict) and "BulkDataURI" in element):
            continue  # QIDO-RS returns no bulk data
        if level is QueryLevel.STUDY:
            wanted = tag.startswith("0010") or tag in _STUDY_HEADER_TAGS
        elif level is QueryLevel.SERIES:
            wanted = tag in _SERIES_HEADER_TAGS
        else:
            wanted = True
        if wanted:
            yield tag


def search(
    conn: Connection | Session,
    query: Query,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    base_url: str,
    load_metadata: MetadataLoader,
    scope: SearchScope | None = None,
) -> list[DicomJson]:
    """Run a QIDO-RS search; one DICOM JSON dataset (PS3.18 F.2) per matching entity.

    With `scope`, only what the scope admits is matched (and counted by limit and offset).
    """
    for name, uid in (("study", study_uid), ("series", series_uid)):
        if uid is not None and not uid_is_valid(uid):
            raise InvalidRequestError(f"the {name} UID in the path is not a valid UID")
    level = query.level
    attrs, other_tags = _return_attributes(query, study_uid, series_uid)
    dialect = _dialect(conn)
    rows = conn.execute(_statement(query, attrs, study_uid, series_uid, dialect, scope)).all()
    if not rows:
        return []

    headers: dict[str, DicomJson] = {}
    rep_of: dict[str, str] = {}  # entity UID -> SOP Instance UID of its header
    if other_tags or query.include_all:
        entities = [row[len(_KEYS[level]) - 1] for row in rows]
        if level is QueryLevel.INSTANCE:
            rep_of = {uid: uid for uid in entities}
        else:
            rep_of = _representatives(conn, level, entities)
        if rep_of:
            headers = load_metadata(sorted(set(rep_of.values())))

    base = base_url.rstrip("/")
    n_keys = len(_KEYS[level])
    # Entries in tag order, so each dataset is built sorted (no per-row sort and its tuples):
    # (tag, column position, converter); the two result attributes have no column.
    plan = sorted(
        [(a.tag, n_keys + i, _converter(a.vr)) for i, a in enumerate(attrs)]
        + [(INSTANCE_AVAILABILITY, -1, None), (RETRIEVE_URL, -1, None)],
        key=lambda entry: entry[0],
    )
    results: list[DicomJson] = []
    for row in rows:
        dataset: DicomJson = {}
        for tag, i, convert in plan:
            if convert is not None:
                dataset[tag] = convert(row[i])
            elif tag == RETRIEVE_URL:
                # PS3.18 §10.6.3 Retrieve URL (0008,1190): the WADO-RS resource of the result.
                uids = row[:n_keys]
                path = "/".join(f"{seg}/{uid}" for seg, uid in zip(_SEGMENTS, uids, strict=False))
                dataset[tag] = {"vr": "UR", "Value": [f"{base}/{path}"]}
            else:
                dataset[tag] = {"vr": "CS", "Value": [_INSTANCE_AVAILABLE]}
        if rep_of:
            header = headers.get(rep_of.get(row[n_keys - 1], ""), {})
            extra: DicomJson = {}
            if query.include_all:
                extra = {tag: header[tag] for tag in _header_tags(header, level)}
            for tag in other_tags:
                if tag in header:
                    extra[tag] = header[tag]
                elif tag in query.vrs:
                    extra[tag] = {"vr": query.vrs[tag]}  # asked for but absent: zero length
            extra.update(dataset)  # the index is authoritative for what it holds
            dataset = dict(sorted(extra.items()))
        results.append(dataset)
    return results
