"""Audit log micro-benchmark: append throughput; root and proof latency at 100k and 1M leaves.

    PYTHONPATH=. python benchmarks/audit_log_append.py [--sizes 100000,1000000] [--postgres URL]

Appends are durable (SQLite in WAL mode with synchronous=FULL: every commit is fsynced). Three
append paths are measured: one event per call from one thread (one commit each), the same call
from 8 threads (concurrent callers share a commit), and append_many (batches of 1,000). Root and
proof latencies are taken on a freshly opened log for sizes other than the current one, so no
in-memory state helps: each call is a stored-node query plus O(log n) hashing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ledger import merkle
from ledger.audit_events import AuditEvent, uid_hash
from ledger.audit_log import AuditLog

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_event(i: int) -> AuditEvent:
    """A typical cross-hospital read: two agents, a patient and a study."""
    return AuditEvent(
        event_type="instances-accessed",
        action="R",
        outcome=0,
        recorded=T0 + timedelta(milliseconds=i),
        agents=[
            {
                "who": f"user:clinician-{i % 97}@hospital-b",
                "role": "clinician",
                "requestor": True,
                "network_address": "10.1.2.3",
            },
            {"who": "node:hospital-a", "role": "110153", "requestor": False},
        ],
        entities=[
            {"kind": "patient", "ref": "0x" + f"{i % 50_000:040x}"},
            {"kind": "study", "ref": uid_hash(f"1.2.826.0.1.3680043.2.{i}")},
        ],
        source={"node": "hospital-a"},
        purpose="treatment",
    )


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} events/s"


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and p99 latency of fn in milliseconds."""
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def bench_appends(url: str, prefix: str) -> list[str]:
    log = AuditLog.open(url, table_prefix=prefix)
    events = [make_event(i) for i in range(12_000)]
    out = []

    n = 1_000
    t = time.perf_counter()
    for e in events[:n]:
        log.append(e)
    out.append(f"append(), 1 thread, 1 commit per event: {rate(n, time.perf_counter() - t)}")

    start = n
    for threads in (8, 32):
        per = 3_200 // threads
        batch = events[start : start + per * threads]
        start += per * threads

        def worker(k: int, batch: list[AuditEvent] = batch, per: int = per) -> None:
            for e in batch[k * per : (k + 1) * per]:
                log.append(e)

        t = time.perf_counter()
        workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t
        out.append(f"append(), {threads} threads (group commit): {rate(per * threads, elapsed)}")

    rest = events[start:]
    t = time.perf_counter()
    for k in range(0, len(rest), 1_000):
        log.append_many(rest[k : k + 1_000])
    out.append(f"append_many(), batches of 1,000: {rate(len(rest), time.perf_counter() - t)}")
    size = log.size()
    leaves = [log.entry(i) for i in range(size)]
    assert log.root() == merkle.root(leaves), "the stored tree disagrees with RFC 6962"
    log.close()
    return out


def bench_size(url: str, prefix: str, target: int) -> list[str]:
    log = AuditLog.open(url, table_prefix=prefix)
    out = []
    t = time.perf_counter()
    appending = 0.0
    i = log.size()
    while i < target:
        step = min(10_000, target - i)
        batch = [make_event(j) for j in range(i, i + step)]
        t_append = time.perf_counter()
        log.append_many(batch)
        appending += time.perf_counter() - t_append
        i += step
    build = time.perf_counter() - t
    out.append(
        f"built {target:,} leaves with append_many (10k batches): {rate(target, appending)} "
        f"in append_many, {rate(target, build)} including building the AuditEvent objects"
    )
    log.close()

    fresh = AuditLog.open(url, table_prefix=prefix)
    rng = random.Random(7)
    size = target - 1  # not the current size: nothing cached, every call reads stored nodes
    root = fresh.root(size)
    med, p99 = timed(lambda: fresh.root(rng.randrange(1, target)), 200)
    out.append(f"root(size) at {target:,}: median {med:.2f} ms, p99 {p99:.2f} ms")
    med, p99 = timed(lambda: fresh.inclusion_proof(rng.randrange(size), size), 200)
    out.append(f"inclusion_proof at {target:,}: median {med:.2f} ms, p99 {p99:.2f} ms")
    med, p99 = timed(lambda: fresh.consistency_proof(rng.randrange(1, size), size), 200)
    out.append(f"consistency_proof at {target:,}: median {med:.2f} ms, p99 {p99:.2f} ms")
    index = rng.randrange(size)
    proof = fresh.inclusion_proof(index, size)
    assert merkle.verify_inclusion(index, size, merkle.leaf_hash(fresh.entry(index)), proof, root)
    t = time.perf_counter()
    findings = fresh.verify([(size, root), (target, fresh.root())])
    out.append(f"verify() of all {target:,} entries: {time.perf_counter() - t:.1f} s")
    assert findings == [], findings
    fresh.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated leaf counts")
    parser.add_argument("--postgres", default=None, help="also run on this PostgreSQL URL")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("SQLite", f"sqlite:///{Path(tmp) / 'audit.sqlite'}")]
        if args.postgres:
            backends.append(("PostgreSQL", args.postgres))
        for name, url in backends:
            prefix = f"bench{uuid.uuid4().hex[:8]}_"
            print(f"## {name}")
            try:
                for line in bench_appends(url, prefix + "a_"):
                    print(f"- {line}", flush=True)
                for target in sizes:
                    for line in bench_size(url, f"{prefix}s{target}_", target):
                        print(f"- {line}", flush=True)
            finally:
                if name == "PostgreSQL":
                    _drop(url, prefix)


def _drop(url: str, prefix: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        names = sa.inspect(conn).get_table_names()
        for table in names:
            if table.startswith(prefix):
                conn.execute(sa.text(f'DROP TABLE "{table}"'))
    engine.dispose()


if __name__ == "__main__":
    main()
