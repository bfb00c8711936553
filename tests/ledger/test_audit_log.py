"""The persistent audit log on SQLite and PostgreSQL: proofs, persistence, tampering, threads."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.audit_events import Action, AuditEvent, AuditEventError, Outcome, uid_hash
from ledger.audit_log import AuditLog, AuditLogError, Finding

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def make_event(i: int) -> AuditEvent:
    """A realistic cross-hospital study read, distinct for every i."""
    return AuditEvent(
        event_type="instances-accessed",
        action="R",
        outcome=0,
        recorded=T0 + timedelta(milliseconds=i),
        agents=[
            {
                "who": f"user:clinician-{i % 7}@hospital-b",
                "role": "clinician",
                "requestor": True,
                "network_address": "10.0.0.7",
            },
            {"who": "node:hospital-a", "role": "110153", "requestor": False},
        ],
        entities=[
            {"kind": "patient", "ref": "0x" + f"{i:040x}"},
            {"kind": "study", "ref": uid_hash(f"1.2.826.0.1.3680043.2.{i}")},
        ],
        source={"node": "hospital-a"},
        purpose="treatment",
    )


class Backend:
    """Opens logs over one database (a fresh table prefix per test) and cleans up after."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.prefix = f"audit_t{uuid.uuid4().hex[:10]}_"
        self.url = f"sqlite:///{tmp_path / 'audit.sqlite'}" if kind == "sqlite" else POSTGRES_URL
        self.logs: list[AuditLog] = []

    def open(self) -> AuditLog:
        log = AuditLog.open(self.url, table_prefix=self.prefix)
        self.logs.append(log)
        return log

    def execute(self, sql: str, **params: Any) -> None:
        """Change the stored tables behind the log's back, as an attacker with DB access would."""
        engine = sa.create_engine(self.url)
        with engine.begin() as conn:
            conn.execute(sa.text(sql.replace("{p}", self.prefix)), params)
        engine.dispose()

    def close(self) -> None:
        if self.logs:
            self.logs[0].metadata.drop_all(self.logs[0].engine)
        for log in self.logs:
            log.close()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.close()


@pytest.fixture
def log(backend: Backend) -> AuditLog:
    return backend.open()


def stored_leaves(log: AuditLog) -> list[bytes]:
    return [log.entry(i) for i in range(log.size())]


def test_append_returns_dense_indices_and_the_rfc6962_root(log: AuditLog) -> None:
    assert log.size() == 0
    assert log.root() == merkle.EMPTY_ROOT
    first = [log.append(make_event(i)) for i in range(5)]
    rest = log.append_many(make_event(i) for i in range(5, 23))
    assert first + rest == list(range(23))
    assert log.size() == 23
    assert log.entry(4) == make_event(4).canonical()
    assert log.event(7) == make_event(7)
    leaves = [make_event(i).canonical() for i in range(23)]
    for size in range(24):
        assert log.root(size) == merkle.root(leaves[:size])


def test_every_proof_matches_the_pure_functions_and_verifies(log: AuditLog) -> None:
    leaves = [make_event(i).canonical() for i in range(37)]
    log.append_many(make_event(i) for i in range(37))
    for size in (1, 2, 3, 5, 8, 16, 17, 31, 37):
        root = log.root(size)
        for index in range(size):
            proof = log.inclusion_proof(index, size)
            assert proof == merkle.inclusion_proof(index, leaves[:size])
            assert merkle.verify_inclusion(
                index, size, merkle.leaf_hash(leaves[index]), proof, root
            )
        for old in range(size + 1):
            proof = log.consistency_proof(old, size)
            assert proof == merkle.consistency_proof(old, leaves[:size])
            assert merkle.verify_consistency(old, size, log.root(old), root, proof)


def test_reopened_log_keeps_its_root_and_continues(backend: Backend) -> None:
    log = backend.open()
    log.append_many(make_event(i) for i in range(11))
    root, proof = log.root(), log.inclusion_proof(3, 11)
    log.close()

    reopened = backend.open()
    assert reopened.size() == 11
    assert reopened.root() == root
    assert reopened.inclusion_proof(3, 11) == proof
    assert reopened.append(make_event(11)) == 11
    leaves = [make_event(i).canonical() for i in range(12)]
    assert reopened.root() == merkle.root(leaves)
    assert reopened.consistency_proof(11, 12) == merkle.consistency_proof(11, leaves)


def test_two_writers_on_one_database_interleave_correctly(backend: Backend) -> None:
    # Two AuditLog objects stand for two processes: each must notice the other's appends.
    a, b = backend.open(), backend.open()
    expected: list[bytes] = []
    for i in range(20):
        writer = a if i % 3 else b
        assert writer.append(make_event(i)) == i
        expected.append(make_event(i).canonical())
    assert b.append_many([make_event(20), make_event(21)]) == [20, 21]
    expected += [make_event(20).canonical(), make_event(21).canonical()]
    assert a.root() == b.root() == merkle.root(expected)
    assert stored_leaves(a) == expected
    assert a.verify([(22, merkle.root(expected))]) == []


def test_threads_appending_get_unique_dense_indices_and_one_consistent_root(
    log: AuditLog,
) -> None:
    per_thread = 150
    results: dict[int, list[int]] = {0: [], 1: []}

    def writer(t: int) -> None:
        for i in range(per_thread):
            results[t].append(log.append(make_event(t * per_thread + i)))

    threads = [threading.Thread(target=writer, args=(t,)) for t in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    indices = results[0] + results[1]
    assert sorted(indices) == list(range(2 * per_thread))
    assert results[0] == sorted(results[0]) and results[1] == sorted(results[1])
    # Each thread's events sit where append said they would.
    for t in (0, 1):
        for i, index in enumerate(results[t]):
            assert log.entry(index) == make_event(t * per_thread + i).canonical()
    assert log.root() == merkle.root(stored_leaves(log))
    assert log.verify([(log.size(), log.root())]) == []


# --- tampering ------------------------------------------------------------------------------


def anchored_log(log: AuditLog, n: int = 40) -> list[tuple[int, bytes]]:
    log.append_many(make_event(i) for i in range(n))
    return [(16, log.root(16)), (30, log.root(30)), (n, log.root(n))]


def kinds(findings: list[Finding]) -> dict[int | None, set[str]]:
    out: dict[int | None, set[str]] = {}
    for f in findings:
        out.setdefault(f.index, set()).add(f.kind)
    return out


def test_untouched_log_verifies(log: AuditLog) -> None:
    anchors = anchored_log(log)
    assert log.verify(anchors) == []
    assert log.verify([]) == []


def test_editing_a_stored_event_names_the_entry(backend: Backend, log: AuditLog) -> None:
    anchors = anchored_log(log)
    forged = make_event(21).model_copy(update={"outcome": Outcome.SERIOUS_FAILURE}).canonical()
    backend.execute("UPDATE {p}entries SET body = :b WHERE leaf_index = 21", b=forged)
    findings = log.verify(anchors)
    by_index = kinds(findings)
    assert by_index[21] >= {"edited", "anchor-mismatch"}
    assert all(f.index == 21 for f in findings)
    # The anchor at 16 still matches; the two anchors after the edit do not.
    assert sum(f.kind == "anchor-mismatch" for f in findings) == 2
    assert any("entry 21: edited" in str(f) for f in findings)


def test_reordering_two_events_names_both(backend: Backend, log: AuditLog) -> None:
    anchors = anchored_log(log)
    e5, e33 = log.entry(5), log.entry(33)
    backend.execute("UPDATE {p}entries SET body = :b WHERE leaf_index = 5", b=e33)
    backend.execute("UPDATE {p}entries SET body = :b WHERE leaf_index = 33", b=e5)
    findings = log.verify(anchors)
    swapped = [f for f in findings if f.kind == "reordered"]
    assert {f.index for f in swapped} == {5, 33}
    assert all("entries 5 and 33 are swapped" in f.detail for f in swapped)
    assert sum(f.kind == "anchor-mismatch" for f in findings) == 3


def test_dropping_an_event_names_it(backend: Backend, log: AuditLog) -> None:
    anchors = anchored_log(log)
    backend.execute("DELETE FROM {p}entries WHERE leaf_index = 12")
    findings = log.verify(anchors)
    assert kinds(findings)[12] >= {"missing", "anchor-mismatch"}
    assert [f.index for f in findings if f.kind == "missing"] == [12]


def test_dropping_an_event_and_renumbering_the_rest_names_it(
    backend: Backend, log: AuditLog
) -> None:
    log.append_many(make_event(i) for i in range(20))
    anchors = [(16, log.root(16)), (20, log.root(20))]
    backend.execute("DELETE FROM {p}entries WHERE leaf_index = 17")
    for index in (18, 19):
        backend.execute(
            "UPDATE {p}entries SET leaf_index = :new WHERE leaf_index = :old",
            new=index - 1,
            old=index,
        )
    findings = log.verify(anchors)
    missing = [f for f in findings if f.kind == "missing"]
    assert 17 in {f.index for f in missing}
    assert any("dropped" in f.detail for f in missing if f.index == 17)
    shifted = [f for f in findings if f.kind == "reordered"]
    assert [(f.index, f.detail) for f in shifted] == [
        (17, "entries 17..18 hold the events recorded at 18..19")
    ]
    assert not any(
        f.kind == "anchor-mismatch" and f.detail.startswith("the first 16") for f in findings
    )


def test_truncating_the_log_below_an_anchor_is_caught(backend: Backend, log: AuditLog) -> None:
    anchors = anchored_log(log)
    backend.execute("DELETE FROM {p}entries WHERE leaf_index >= 35")
    backend.execute("DELETE FROM {p}nodes")  # even with the whole tree cache wiped
    backend.execute("UPDATE {p}head SET tree_size = 35")
    findings = log.verify(anchors)
    assert [f.index for f in findings if f.kind == "missing"] == [35]
    assert any("entries 35..39 were dropped" in f.detail for f in findings)
    # The anchors the shortened log still covers hold; only the last one fails, and the wiped
    # tree cache is reported once, not once per entry.
    assert sorted(f.kind for f in findings) == ["missing", "tree"]
    assert any("leaf hashes missing for entries 0..34" in str(f) for f in findings)


def test_rewriting_events_and_their_hashes_still_fails_against_the_anchors(
    backend: Backend, log: AuditLog
) -> None:
    anchors = anchored_log(log)
    forged = make_event(25).model_copy(update={"action": Action.DELETE}).canonical()
    backend.execute("UPDATE {p}entries SET body = :b WHERE leaf_index = 25", b=forged)
    backend.execute(
        "UPDATE {p}nodes SET hash = :h WHERE level = 0 AND node_index = 25",
        h=merkle.leaf_hash(forged),
    )
    findings = log.verify(anchors)
    mismatches = [f for f in findings if f.kind == "anchor-mismatch"]
    assert len(mismatches) == 2
    # The rewritten leaf hash no longer matches its stored parent: that pins the entry pair.
    tree = [f for f in findings if f.kind == "tree"]
    assert [(f.index, f.detail.split(" does")[0]) for f in tree] == [
        (24, "stored hash for entries 24..25")
    ]
    assert all(f.index == 24 for f in mismatches)


def test_a_rewritten_interior_hash_is_reported(backend: Backend, log: AuditLog) -> None:
    anchors = anchored_log(log)
    backend.execute(
        "UPDATE {p}nodes SET hash = :h WHERE level = 2 AND node_index = 3", h=b"\x07" * 32
    )
    findings = log.verify(anchors)
    # The entries and the anchors still agree; only the proofs through that node would fail.
    assert [(f.kind, f.index) for f in findings] == [("tree", 12)]
    assert "entries 12..15" in findings[0].detail
    # Entry 9's audit path has that node (entries 12..15) as its level-2 sibling.
    proof = log.inclusion_proof(9, 40)
    assert not merkle.verify_inclusion(9, 40, merkle.leaf_hash(log.entry(9)), proof, anchors[2][1])


def test_an_anchor_history_that_was_rewritten_is_reported(log: AuditLog) -> None:
    log.append_many(make_event(i) for i in range(12))
    forged_root = merkle.root([b"something else"] * 5)
    findings = log.verify([(5, forged_root), (12, log.root(12))])
    assert {f.kind for f in findings} == {"anchor-mismatch", "inconsistent-anchors"}
    backwards = log.verify([(12, log.root(12)), (5, log.root(5))])
    assert [f.kind for f in backwards] == ["inconsistent-anchors"]


# --- anchors bookkeeping and bad requests ---------------------------------------------------


def test_anchor_records(log: AuditLog) -> None:
    log.append_many(make_event(i) for i in range(9))
    assert log.unanchored_count() == 9
    log.record_anchor(4, log.root(4), "0xaa", 10)
    log.record_anchor(9, log.root(9), "0xbb", 12)
    log.record_anchor(9, log.root(9), "0xbb", 13)  # the same tx, seen again after a reorg
    assert [(a.size, a.tx_hash, a.block_number) for a in log.anchors()] == [
        (4, "0xaa", 10),
        (9, "0xbb", 13),
    ]
    assert log.anchors()[1].root == log.root(9)
    log.append(make_event(9))
    assert log.unanchored_count() == 1
    log.forget_anchor("0xbb")
    assert log.unanchored_count() == 6
    with pytest.raises(AuditLogError, match="not this log's root"):
        log.record_anchor(9, log.root(8), "0xcc", 14)


def test_bad_requests_raise_typed_errors(log: AuditLog) -> None:
    log.append_many(make_event(i) for i in range(3))
    with pytest.raises(AuditLogError, match="no entry 3: the log holds 3 entries"):
        log.entry(3)
    with pytest.raises(AuditLogError, match="not in a tree of size 3"):
        log.inclusion_proof(3, 3)
    with pytest.raises(AuditLogError, match="no tree of size 4"):
        log.root(4)
    with pytest.raises(AuditLogError, match="from size 3 to size 2"):
        log.consistency_proof(3, 2)
    with pytest.raises(AuditEventError, match="plaintext identifiers are refused"):
        log.append({**make_event(0).model_dump(), "entities": [{"kind": "patient", "ref": "Doe"}]})
    assert log.size() == 3


def test_roots_and_proofs_read_few_nodes_in_one_query(log: AuditLog) -> None:
    log.append_many(make_event(i % 50) for i in range(3000))
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    sa.event.listen(log.engine, "before_cursor_execute", count)
    try:
        proof = log.inclusion_proof(1234, 2999)
        consistency = log.consistency_proof(1000, 2999)
        root = log.root(2999)
    finally:
        sa.event.remove(log.engine, "before_cursor_execute", count)
    node_queries = [s for s in statements if "nodes" in s]
    assert len(node_queries) == 3  # one per call, whatever the tree size
    leaf = log.entry(1234)
    assert merkle.verify_inclusion(1234, 2999, merkle.leaf_hash(leaf), proof, root)
    assert merkle.verify_consistency(1000, 2999, log.root(1000), root, consistency)


def test_rows_smuggled_past_the_head_are_reported(backend: Backend, log: AuditLog) -> None:
    log.append_many(make_event(i) for i in range(16))
    anchors = [(16, log.root(16))]
    backend.execute(
        "INSERT INTO {p}entries (leaf_index, body) VALUES (40, :b)", b=make_event(99).canonical()
    )
    findings = log.verify(anchors)
    assert [(f.kind, f.index) for f in findings] == [("extra", 40)]


def test_verify_while_another_thread_appends_reports_nothing(log: AuditLog) -> None:
    log.append_many(make_event(i) for i in range(200))
    anchors = [(200, log.root(200))]
    stop = threading.Event()

    def writer() -> None:
        i = 200
        while not stop.is_set():
            log.append(make_event(i))
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results = [log.verify(anchors) for _ in range(5)]
    finally:
        stop.set()
        thread.join()
    assert results == [[]] * 5
    assert log.size() > 200
    assert log.root() == merkle.root(stored_leaves(log))


def test_processes_opening_a_fresh_log_at_once_all_succeed(backend: Backend) -> None:
    opened: list[AuditLog] = []
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            opened.append(backend.open())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [o.size() for o in opened] == [0, 0, 0, 0]
    assert opened[0].append(make_event(0)) == 0 and opened[3].size() == 1


@pytest.fixture(scope="module")
def log_of_300(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuditLog, list[bytes]]]:
    log = AuditLog.open(tmp_path_factory.mktemp("audit") / "audit.sqlite")
    log.append_many(make_event(i) for i in range(300))
    yield log, [make_event(i).canonical() for i in range(300)]
    log.close()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_stored_proofs_equal_the_pure_functions_for_any_sizes(
    log_of_300: tuple[AuditLog, list[bytes]], data: st.DataObject
) -> None:
    log, leaves = log_of_300
    size = data.draw(st.integers(1, 300))
    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(0, size))
    assert log.root(size) == merkle.root(leaves[:size])
    assert log.inclusion_proof(index, size) == merkle.inclusion_proof(index, leaves[:size])
    assert log.consistency_proof(old, size) == merkle.consistency_proof(old, leaves[:size])


WRITER = """
import sys
from tests.ledger.test_audit_log import make_event
from ledger.audit_log import AuditLog
log = AuditLog.open(sys.argv[1], table_prefix=sys.argv[2])
first = int(sys.argv[3])
for i in range(first, first + 120):
    log.append(make_event(i))
"""


@pytest.mark.slow
def test_two_processes_appending_keep_the_log_dense_and_consistent(backend: Backend) -> None:
    import subprocess
    import sys

    log = backend.open()  # creates the tables before the writers race
    root_dir = Path(__file__).resolve().parents[2]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, backend.url, backend.prefix, str(first)],
            cwd=root_dir,
            env={"PYTHONPATH": str(root_dir), "PATH": "/usr/bin:/bin"},
            stderr=subprocess.PIPE,
        )
        for first in (0, 1000)
    ]
    for w in writers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err.decode()
    assert log.size() == 240
    leaves = stored_leaves(log)
    position = {body: index for index, body in enumerate(leaves)}
    for first in (0, 1000):
        # Every event of each writer is there once, in the order that writer appended them.
        order = [position[make_event(i).canonical()] for i in range(first, first + 120)]
        assert order == sorted(order)
    assert len(position) == 240
    assert log.root() == merkle.root(leaves)
    assert log.verify([(240, merkle.root(leaves))]) == []


def test_a_writer_behind_another_reads_the_tree_s_frontier_in_one_query(
    backend: Backend,
) -> None:
    a, b = backend.open(), backend.open()
    b.append(make_event(0))
    a.append_many(make_event(i) for i in range(1, 23))  # 23 entries: four perfect subtrees
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    sa.event.listen(b.engine, "before_cursor_execute", count)
    try:
        assert b.append(make_event(23)) == 23
    finally:
        sa.event.remove(b.engine, "before_cursor_execute", count)
    assert len([s for s in statements if "nodes" in s]) == 1
    expected = [make_event(i).canonical() for i in range(24)]
    assert a.root() == b.root() == merkle.root(expected)
    assert b.verify([(24, merkle.root(expected))]) == []
