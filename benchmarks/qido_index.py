"""QIDO-RS service latency on a large index: p50/p95 of the benchmark queries, no HTTP.

Fills a fresh index (SQLite file, or a throw-away PostgreSQL database) with N instances by bulk
insert — rows shaped as the store service writes them, opaque 1 KiB sealed headers included —
then times `parse_query` + `search` for each query, as the router calls them.

    PYTHONPATH=$PWD python benchmarks/qido_index.py --instances 100000 --backend sqlite
    PYTHONPATH=$PWD python benchmarks/qido_index.py --instances 100000 --backend postgresql
    PYTHONPATH=$PWD python benchmarks/qido_index.py --backend postgresql --pattern-index
    PYTHONPATH=$PWD python benchmarks/qido_index.py --backend sqlite --gc-freeze

The HTTP comparison with Orthanc is ../shared/tools/dicomweb-bench.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Engine

from node.services.query import QueryLevel, parse_query, search
from node.storage.db import open_index
from node.storage.index import Instance, Series, Study

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SURNAMES = ["SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS"]
SURNAMES += ["KIM", "LEE", "PARK", "CHOI", "JUNG", "KANG", "CHO", "YOON", "JANG", "LIM"]
GIVEN = ["JAMES", "MARY", "ROBERT", "PATRICIA", "JOHN", "JENNIFER", "MINJUN", "SEOYEON"]
GIVEN += ["JIHO", "HAYUN", "DAVID", "SARAH", "ANNA", "PETER", "SOFIA", "LUCAS"]
MODALITIES = ["CT", "MR", "CR", "DX", "US", "SR"]

# Under a non-C collation PostgreSQL cannot use a plain b-tree for LIKE 'PREFIX%'.
PATTERN_INDEX = (
    "CREATE INDEX ix_study_patient_name_search_pattern "
    "ON study (patient_name_search text_pattern_ops)"
)

QUERIES: dict[str, list[tuple[str, str]]] = {
    "patient_id": [("PatientID", "PAT000123")],
    "study_date_month": [("StudyDate", "20240301-20240331")],
    "study_date_4_months": [("StudyDate", "20240301-20240630")],
    "patient_name_prefix": [("PatientName", "park^m*")],
    "patient_name_infix": [("PatientName", "*SON*")],
    "patient_name_fuzzy": [("PatientName", "jo sm"), ("fuzzymatching", "true")],
}


def _rows(
    n_instances: int, per_series: int, series_per_study: int, patients: int
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]:
    """(study, its series, their instances) rows with the store service's counters filled in."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    per_study = per_series * series_per_study
    first_day = date(2020, 1, 1)
    for s in range(n_instances // per_study):
        patient = s % patients
        study_uid = f"1.2.826.0.1.3680043.10.1.{s + 1}"
        series_modalities = [MODALITIES[(s + k) % len(MODALITIES)] for k in range(series_per_study)]
        modalities = sorted(set(series_modalities))
        name = f"{SURNAMES[patient % len(SURNAMES)]}^{GIVEN[(patient // 7) % len(GIVEN)]}"
        study = dict(
            study_uid=study_uid,
            patient_id=f"PAT{patient:06d}",
            patient_name=name.title(),
            patient_name_search=name,
            patient_birth_date="19600101",
            patient_sex="MF"[patient % 2],
            study_date=(first_day + timedelta(days=rng.randrange(5 * 365))).strftime("%Y%m%d"),
            study_time=f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}00",
            accession_number=f"ACC{s:08d}",
            study_id=str(s % 1000),
            study_description="Benchmark study",
            referring_physician_name="Ref^Doctor",
            modalities_in_study="\\".join(modalities),
            number_of_series=series_per_study,
            number_of_instances=per_study,
            created_at=now,
        )
        series_rows, instance_rows = [], []
        for k in range(series_per_study):
            series_uid = f"{study_uid}.{k + 1}"
            series_rows.append(
                dict(
                    series_uid=series_uid,
                    study_uid=study_uid,
                    modality=series_modalities[k],
                    series_number=k + 1,
                    series_description="Benchmark series",
                    number_of_instances=per_series,
                )
            )
            for i in range(per_series):
                instance_rows.append(
                    dict(
                        sop_instance_uid=f"{series_uid}.{i + 1}",
                        series_uid=series_uid,
                        study_uid=study_uid,
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        instance_number=i + 1,
                        transfer_syntax_uid="1.2.840.10008.1.2.1",
                        rows=512,
                        columns=512,
                        bits_allocated=16,
                        photometric_interpretation="MONOCHROME2",
                        size_bytes=525_000,
                        content_sha256=secrets.token_hex(32),
                        blob_name=secrets.token_hex(16),
                        metadata_enc=os.urandom(1024),
                        created_at=now,
                    )
                )
        yield study, series_rows, instance_rows


def fill(engine: Engine, n_instances: int) -> dict[str, int]:
    """Bulk-insert the archive; returns how many rows of each kind."""
    study_t = Study.__table__  # type: ignore[attr-defined]
    series_t = Series.__table__  # type: ignore[attr-defined]
    instance_t = Instance.__table__  # type: ignore[attr-defined]
    counts = {"studies": 0, "series": 0, "instances": 0}
    batch: tuple[list[Any], list[Any], list[Any]] = ([], [], [])

    def flush() -> None:
        if not batch[0]:
            return
        with engine.begin() as conn:
            conn.execute(study_t.insert(), batch[0])
            conn.execute(series_t.insert(), batch[1])
            conn.execute(instance_t.insert(), batch[2])
        for rows in batch:
            rows.clear()

    for study, series_rows, instance_rows in _rows(n_instances, 10, 2, patients=1000):
        batch[0].append(study)
        batch[1].extend(series_rows)
        batch[2].extend(instance_rows)
        counts["studies"] += 1
        counts["series"] += len(series_rows)
        counts["instances"] += len(instance_rows)
        if len(batch[2]) >= 10_000:
            flush()
    flush()
    with engine.begin() as conn:  # planner statistics, as a running archive would have them
        conn.exec_driver_sql("ANALYZE")
    return counts


def measure(engine: Engine, params: list[tuple[str, str]], reps: int) -> dict[str, Any]:
    """p50/p95 in milliseconds of parse + search, each on a pooled connection as a request."""

    def no_headers(uids: list[str]) -> dict[str, dict[str, Any]]:
        raise AssertionError("the benchmark queries must be answered from the index")

    latencies: list[float] = []
    cpu: list[float] = []
    results = 0
    for rep in range(reps + 5):
        start, start_cpu = time.perf_counter(), time.process_time()
        query = parse_query(QueryLevel.STUDY, params)
        with engine.connect() as conn:
            found = search(conn, query, base_url="http://bench/dicom-web", load_metadata=no_headers)
        if rep >= 5:  # the first few warm the caches and the pool
            latencies.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        results = len(found)
    latencies.sort()
    cpu.sort()
    # CPU time of this process (all of SQLite's work; not PostgreSQL's server side) shows how
    # much of a slow wall-clock figure is waiting for a busy machine.
    return {
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p95_ms": round(1000 * latencies[int(0.95 * len(latencies)) - 1], 2),
        "cpu_p50_ms": round(1000 * statistics.median(cpu), 2),
        "cpu_p95_ms": round(1000 * cpu[int(0.95 * len(cpu)) - 1], 2),
        "results": results,
    }


@contextmanager
def index(backend: str) -> Iterator[Engine]:
    """A fresh, migrated index that disappears afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            engine = open_index(f"sqlite:///{tmp}/index.sqlite")
            yield engine
            engine.dispose()
        return
    name = f"pacsmesh_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = open_index(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    try:
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    """Fill an index and print the latency of each benchmark query as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument(
        "--pattern-index",
        action="store_true",
        help="PostgreSQL: add the text_pattern_ops index that lets LIKE 'PREFIX%%' use an index",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after filling, as a server would after start-up",
    )
    args = parser.parse_args()
    with index(args.backend) as engine:
        start = time.perf_counter()
        counts = fill(engine, args.instances)
        if args.pattern_index and args.backend == "postgresql":
            with engine.begin() as conn:
                conn.exec_driver_sql(PATTERN_INDEX)
                conn.exec_driver_sql("ANALYZE study")
        if args.gc_freeze:
            # Long-lived objects (SQLAlchemy metadata, pydicom's dictionary, ...) leave the
            # collector's generations, so wide responses stop paying for walking them.
            gc.collect()
            gc.freeze()
        report: dict[str, Any] = {
            "backend": args.backend,
            "pattern_index": bool(args.pattern_index and args.backend == "postgresql"),
            "gc_freeze": args.gc_freeze,
            "load_average": os.getloadavg()[0],
            **counts,
            "fill_s": round(time.perf_counter() - start, 1),
        }
        for label, params in QUERIES.items():
            report[label] = measure(engine, params, args.reps)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
