"""Index reads and writes for stored instances (SQLAlchemy Core: this is the hot path)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Row, Select, Table, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.storage.index import Instance, Series, Study, StudyKey

STUDY: Table = Study.__table__  # type: ignore[attr-defined]
SERIES: Table = Series.__table__  # type: ignore[attr-defined]
INSTANCE: Table = Instance.__table__  # type: ignore[attr-defined]
STUDY_KEY: Table = StudyKey.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class InstanceRow:
    """What the retrieve path needs to find and describe one stored instance."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size_bytes: int
    blob_name: str
    number_of_frames: int | None
    content_sha256: str


_ROW_COLS = (
    INSTANCE.c.study_uid,
    INSTANCE.c.series_uid,
    INSTANCE.c.sop_instance_uid,
    INSTANCE.c.sop_class_uid,
    INSTANCE.c.transfer_syntax_uid,
    INSTANCE.c.size_bytes,
    INSTANCE.c.blob_name,
    INSTANCE.c.number_of_frames,
    INSTANCE.c.content_sha256,
)


@dataclass(frozen=True)
class FiledStudy:
    """The study an instance was indexed under, as the index holds it after the insert."""

    created: bool  # this instance created the study (its first instance)
    patient_id: str | None
    patient_issuer: str | None


def _row(r: Row[Any]) -> InstanceRow:
    return InstanceRow(*tuple(r))


def _insert(conn: Connection, table: Any) -> Any:
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def find_instance(conn: Connection, sop_instance_uid: str) -> InstanceRow | None:
    """One instance by its SOP Instance UID."""
    r = conn.execute(
        select(*_ROW_COLS).where(INSTANCE.c.sop_instance_uid == sop_instance_uid)
    ).first()
    return _row(r) if r else None


def find_instances(conn: Connection, sop_uids: list[str]) -> list[InstanceRow]:
    """Instances by SOP Instance UID, in one query per 500 UIDs (unknown UIDs are skipped)."""
    out: list[InstanceRow] = []
    for i in range(0, len(sop_uids), 500):
        q = select(*_ROW_COLS).where(INSTANCE.c.sop_instance_uid.in_(sop_uids[i : i + 500]))
        out += [_row(r) for r in conn.execute(q)]
    return out


def list_instances(
    conn: Connection, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[InstanceRow]:
    """Instances of a study, series or one instance, in series/instance-number order."""
    q = select(*_ROW_COLS).where(INSTANCE.c.study_uid == study_uid)
    if series_uid is not None:
        q = q.where(INSTANCE.c.series_uid == series_uid)
    if sop_uid is not None:
        q = q.where(INSTANCE.c.sop_instance_uid == sop_uid)
    q = q.order_by(INSTANCE.c.series_uid, INSTANCE.c.instance_number, INSTANCE.c.sop_instance_uid)
    return [_row(r) for r in conn.execute(q)]


def _images(
    columns: list[Any],
    study_uids: list[str],
    excluded_modalities: frozenset[str],
    declared_clean: bool = False,
) -> Select[Any]:
    """Image instances (with pixel rows) of these studies outside series of the excluded
    modalities (a series without a modality counts as excluded); with `declared_clean`, only
    those recorded as declaring no burned-in annotation (an unrecorded one is left out)."""
    q = (
        select(*columns)
        .select_from(INSTANCE.join(SERIES, SERIES.c.series_uid == INSTANCE.c.series_uid))
        .where(
            INSTANCE.c.study_uid.in_(study_uids),
            INSTANCE.c.rows.is_not(None),
            SERIES.c.modality.not_in(sorted(excluded_modalities)),
        )
    )
    return q.where(INSTANCE.c.burned_in_annotation.is_(False)) if declared_clean else q


def list_images(
    conn: Connection,
    study_uids: list[str],
    excluded_modalities: frozenset[str] = frozenset(),
    *,
    declared_clean: bool = False,
) -> list[InstanceRow]:
    """The instances `_images` selects, in retrieve order."""
    q = _images(list(_ROW_COLS), study_uids, excluded_modalities, declared_clean).order_by(
        INSTANCE.c.series_uid, INSTANCE.c.instance_number, INSTANCE.c.sop_instance_uid
    )
    return [_row(r) for r in conn.execute(q)]


def holding_images(
    conn: Connection,
    level: Literal["study", "series"],
    study_uids: list[str],
    excluded_modalities: frozenset[str] = frozenset(),
    *,
    declared_clean: bool = False,
) -> set[str]:
    """The studies (or the series of these studies) that `list_images` would find an
    instance in."""
    column = INSTANCE.c.study_uid if level == "study" else INSTANCE.c.series_uid
    found: set[str] = set()
    for i in range(0, len(study_uids), 500):
        q = _images([column], study_uids[i : i + 500], excluded_modalities, declared_clean)
        found.update(r[0] for r in conn.execute(q.distinct()))
    return found


def unrecorded_burned_in(conn: Connection, study_uids: list[str]) -> list[InstanceRow]:
    """Images of these studies whose burned-in declaration is not recorded (stored before the
    index held it); served by the partial index of exactly these rows."""
    out: list[InstanceRow] = []
    for i in range(0, len(study_uids), 500):
        q = select(*_ROW_COLS).where(
            INSTANCE.c.study_uid.in_(study_uids[i : i + 500]),
            INSTANCE.c.burned_in_annotation.is_(None),
            INSTANCE.c.rows.is_not(None),
        )
        out += [_row(r) for r in conn.execute(q)]
    return out


def record_burned_in(conn: Connection, declared: dict[str, bool]) -> None:
    """Record instances' burned-in declarations (read from their headers), once each."""
    if not declared:
        return
    stmt = (
        update(INSTANCE)
        .where(
            INSTANCE.c.sop_instance_uid == bindparam("b_sop_uid"),
            INSTANCE.c.burned_in_annotation.is_(None),
        )
        .values(burned_in_annotation=bindparam("b_declared"))
    )
    conn.execute(stmt, [{"b_sop_uid": k, "b_declared": v} for k, v in declared.items()])


_FILED_PATIENT = select(STUDY.c.patient_id, STUDY.c.patient_issuer).where(
    STUDY.c.study_uid == bindparam("study_uid")
)


def filed_patient(conn: Connection, study_uid: str) -> tuple[str | None, str | None] | None:
    """(Patient ID, issuer) a stored study is filed under, or None for an unknown study."""
    row = conn.execute(_FILED_PATIENT, {"study_uid": study_uid}).first()
    return None if row is None else (row[0], row[1])


def series_study(conn: Connection, series_uid: str) -> str | None:
    """The study a series belongs to, if the series is known."""
    return conn.execute(
        select(SERIES.c.study_uid).where(SERIES.c.series_uid == series_uid)
    ).scalar_one_or_none()


def metadata_of(conn: Connection, sop_uids: list[str]) -> dict[str, tuple[str, bytes]]:
    """Sealed header metadata per instance: {sop_uid: (study_uid, sealed)}."""
    out: dict[str, tuple[str, bytes]] = {}
    for i in range(0, len(sop_uids), 500):
        chunk = sop_uids[i : i + 500]
        rows = conn.execute(
            select(
                INSTANCE.c.sop_instance_uid, INSTANCE.c.study_uid, INSTANCE.c.metadata_enc
            ).where(INSTANCE.c.sop_instance_uid.in_(chunk))
        )
        for row in rows:
            out[row[0]] = (row[1], row[2])
    return out


# Returned by the study's counter update: the patient the study is filed under comes back
# without a query of its own.
_STUDY_PATIENT = (STUDY.c.patient_id, STUDY.c.patient_issuer)


@functools.cache
def _insert_statements(dialect: str) -> tuple[Any, Any, Any, Any, Any]:
    """The statements of `insert_instance`, built once per dialect.

    Executing prebuilt statements with parameter dicts lets SQLAlchemy reuse their cache keys
    and compiled forms; building them per call with `.values(...)` cost about a quarter of
    small-instance STOW's CPU time (profiled with benchmarks/profile_node.py).
    """
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert(STUDY).on_conflict_do_nothing().returning(STUDY.c.study_uid),
        insert(SERIES).on_conflict_do_nothing().returning(SERIES.c.series_uid),
        INSTANCE.insert(),
        update(SERIES)
        .where(SERIES.c.series_uid == bindparam("b_series_uid"))
        .values(number_of_instances=SERIES.c.number_of_instances + 1),
        update(STUDY)
        .where(STUDY.c.study_uid == bindparam("b_study_uid"))
        .values(number_of_instances=STUDY.c.number_of_instances + 1)
        .returning(*_STUDY_PATIENT),
    )


def insert_instance(
    conn: Connection, study: dict[str, Any], series: dict[str, Any], instance: dict[str, Any]
) -> FiledStudy:
    """Index one new instance, creating its study and series rows and keeping counters.

    An existing study keeps its attributes: the result says which patient it is filed under,
    for the caller to refuse (by rolling back) an instance of another patient."""
    study_uid = study["study_uid"]
    add_study, add_series, add_instance, count_series, count_study = _insert_statements(
        conn.dialect.name
    )
    created_study = conn.execute(add_study, study).first() is not None
    created_series = conn.execute(add_series, series).first()
    conn.execute(add_instance, instance)
    conn.execute(count_series, {"b_series_uid": series["series_uid"]})
    if created_series is None:
        filed = conn.execute(count_study, {"b_study_uid": study_uid}).one()
    else:
        modality = series.get("modality")
        filed = conn.execute(_count_new_series(conn, study_uid, modality, created_study)).one()
    return FiledStudy(created_study, filed.patient_id, filed.patient_issuer)


def _count_new_series(
    conn: Connection, study_uid: str, modality: str | None, created_study: bool
) -> Any:
    """The study update for its new series: counters and ModalitiesInStudy."""
    changes: dict[str, Any] = {
        "number_of_instances": STUDY.c.number_of_instances + 1,
        "number_of_series": STUDY.c.number_of_series + 1,
    }
    if modality:
        current = "" if created_study else _modalities(conn, study_uid)
        merged = sorted(set(filter(None, current.split("\\"))) | {modality})
        changes["modalities_in_study"] = "\\".join(merged)
    return (
        update(STUDY)
        .where(STUDY.c.study_uid == study_uid)
        .values(**changes)
        .returning(*_STUDY_PATIENT)
    )


def _modalities(conn: Connection, study_uid: str) -> str:
    return conn.execute(
        select(STUDY.c.modalities_in_study).where(STUDY.c.study_uid == study_uid)
    ).scalar_one()


def delete_instances(conn: Connection, rows: list[InstanceRow]) -> list[str]:
    """Remove instances from the index, fix counters, drop emptied series and studies.

    Returns the study UIDs that no longer exist; their keys are deleted in the same
    transaction (crypto-shredding).
    """
    if not rows:
        return []
    sops = [r.sop_instance_uid for r in rows]
    for i in range(0, len(sops), 500):
        conn.execute(delete(INSTANCE).where(INSTANCE.c.sop_instance_uid.in_(sops[i : i + 500])))
    gone_studies: list[str] = []
    for series_uid in {r.series_uid for r in rows}:
        left = conn.execute(
            select(func.count()).select_from(INSTANCE).where(INSTANCE.c.series_uid == series_uid)
        ).scalar_one()
        if left:
            conn.execute(
                update(SERIES)
                .where(SERIES.c.series_uid == series_uid)
                .values(number_of_instances=left)
            )
        else:
            conn.execute(delete(SERIES).where(SERIES.c.series_uid == series_uid))
    for study_uid in {r.study_uid for r in rows}:
        n_inst = conn.execute(
            select(func.count()).select_from(INSTANCE).where(INSTANCE.c.study_uid == study_uid)
        ).scalar_one()
        if not n_inst:
            conn.execute(delete(STUDY).where(STUDY.c.study_uid == study_uid))
            conn.execute(delete(STUDY_KEY).where(STUDY_KEY.c.study_uid == study_uid))
            gone_studies.append(study_uid)
            continue
        mods: list[str | None] = list(
            conn.execute(
                select(SERIES.c.modality).where(SERIES.c.study_uid == study_uid).distinct()
            ).scalars()
        )
        n_series = conn.execute(
            select(func.count()).select_from(SERIES).where(SERIES.c.study_uid == study_uid)
        ).scalar_one()
        conn.execute(
            update(STUDY)
            .where(STUDY.c.study_uid == study_uid)
            .values(
                number_of_instances=n_inst,
                number_of_series=n_series,
                modalities_in_study="\\".join(sorted(m for m in mods if m)),
            )
        )
    return gone_studies


def all_blob_names(conn: Connection) -> set[str]:
    """Every blob the index references (for start-up reconciliation)."""
    return set(conn.execute(select(INSTANCE.c.blob_name)).scalars())


def drop_keys_without_studies(conn: Connection) -> int:
    """Remove DEKs created for studies whose first store never committed."""
    orphan = select(STUDY.c.study_uid)
    result = conn.execute(delete(STUDY_KEY).where(STUDY_KEY.c.study_uid.not_in(orphan)))
    return int(result.rowcount or 0)
