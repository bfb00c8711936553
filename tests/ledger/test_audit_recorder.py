"""The batching audit recorder on SQLite and PostgreSQL: concurrency, failures, close, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger import merkle
from ledger.audit_events import AuditEventError
from ledger.audit_log import AuditLog, AuditLogError
from ledger.audit_recorder import AuditRecorder, AuditRecorderClosedError
from tests.ledger.test_audit_log import Backend, make_event

REPO_ROOT = Path(__file__).resolve().parents[2]


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


@contextmanager
def write_lock_held(backend: Backend) -> Iterator[None]:
    """Hold the log's write lock from another connection, as a second writer process would."""
    engine = sa.create_engine(backend.url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"UPDATE {backend.prefix}head SET tree_size = tree_size"))
            yield
            conn.rollback()
    finally:
        engine.dispose()


def wait_until_taken(recorder: AuditRecorder) -> None:
    """Wait until the writer thread has taken every queued event into its batch."""
    while recorder.pending():
        time.sleep(0.005)


def test_threads_recording_get_each_event_once_at_its_own_index(log: AuditLog) -> None:
    threads, per_thread = 12, 40
    got: dict[int, list[int]] = {t: [] for t in range(threads)}
    with AuditRecorder(log, max_batch=50) as recorder:

        def caller(t: int) -> None:
            for i in range(per_thread):
                got[t].append(recorder.record(make_event(t * per_thread + i)))

        pool = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()

    total = threads * per_thread
    assert sorted(i for indices in got.values() for i in indices) == list(range(total))
    assert log.size() == total
    root = log.root()
    for t, indices in got.items():
        # One caller's events keep the order it recorded them in.
        assert indices == sorted(indices)
        for i, index in enumerate(indices):
            leaf = make_event(t * per_thread + i).canonical()
            assert log.entry(index) == leaf
            proof = log.inclusion_proof(index)
            assert merkle.verify_inclusion(index, total, merkle.leaf_hash(leaf), proof, root)
    assert root == merkle.root([log.entry(i) for i in range(total)])
    assert log.verify([(total, root)]) == []


def test_nothing_is_acknowledged_before_its_batch_commits(backend: Backend, log: AuditLog) -> None:
    with AuditRecorder(log) as recorder:
        with write_lock_held(backend):
            first = recorder.record_async(make_event(0))
            wait_until_taken(recorder)  # the writer is now blocked on the lock with event 0
            rest = [recorder.record_async(make_event(i)) for i in range(1, 30)]
            assert not any(f.done() for f in [first, *rest])
            assert log.size() == 0
        # The lock is released: event 0 commits alone, the 29 queued behind it together.
        assert [f.result() for f in [first, *rest]] == list(range(30))
    assert [log.entry(i) for i in range(30)] == [make_event(i).canonical() for i in range(30)]


def test_async_callers_can_await_their_index(log: AuditLog) -> None:
    import asyncio

    async def requests(recorder: AuditRecorder) -> list[int]:
        calls = [asyncio.wrap_future(recorder.record_async(make_event(i))) for i in range(25)]
        return list(await asyncio.gather(*calls))

    with AuditRecorder(log) as recorder:
        indices = asyncio.run(requests(recorder))
    assert indices == list(range(25))
    assert [log.event(i) for i in indices] == [make_event(i) for i in range(25)]


def test_an_event_from_an_event_loop_is_recorded_even_when_its_awaiter_is_cancelled(
    backend: Backend, log: AuditLog
) -> None:
    import asyncio

    # A client that disconnects while its request's event is being committed: the access
    # happened, so the event must still reach the log; the other awaiters get their indices.
    async def requests(recorder: AuditRecorder) -> tuple[list[int], bool]:
        with write_lock_held(backend):
            first = recorder.record_in_loop(make_event(0))
            wait_until_taken(recorder)
            gone = asyncio.ensure_future(recorder.record_in_loop(make_event(1)))
            kept = recorder.record_in_loop(make_event(2))
            await asyncio.sleep(0)
            gone.cancel()
            await asyncio.sleep(0)
        indices = [await first, await kept]
        return indices, gone.cancelled()

    with AuditRecorder(log) as recorder:
        indices, cancelled = asyncio.run(requests(recorder))
    assert cancelled and indices == [0, 2]
    assert [log.entry(i) for i in range(3)] == [make_event(i).canonical() for i in range(3)]


def test_an_event_loop_caller_learns_that_its_batch_failed(backend: Backend, log: AuditLog) -> None:
    import asyncio

    async def request(recorder: AuditRecorder) -> int:
        return await recorder.record_in_loop(make_event(1))

    with AuditRecorder(log) as recorder:
        assert recorder.record(make_event(0)) == 0
        backend.execute("ALTER TABLE {p}entries RENAME TO {p}entries_away")
        with pytest.raises(AuditLogError, match="could not be recorded"):
            asyncio.run(request(recorder))
        backend.execute("ALTER TABLE {p}entries_away RENAME TO {p}entries")
        assert asyncio.run(request(recorder)) == 1
    assert log.size() == 2


def test_a_failed_commit_reaches_every_waiter_and_the_recorder_recovers(
    backend: Backend, log: AuditLog
) -> None:
    recorder = AuditRecorder(log, max_batch=7)
    assert [recorder.record(make_event(i)) for i in range(3)] == [0, 1, 2]
    # The entries table disappears (a damaged or misconfigured database): every batch fails.
    backend.execute("ALTER TABLE {p}entries RENAME TO {p}entries_away")
    outcomes: list[BaseException | int] = []
    lock = threading.Lock()

    def caller(t: int) -> None:
        for i in range(5):
            try:
                result: BaseException | int = recorder.record(make_event(100 + 5 * t + i))
            except BaseException as exc:
                result = exc
            with lock:
                outcomes.append(result)

    pool = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert len(outcomes) == 40
    assert all(isinstance(o, AuditLogError) for o in outcomes), outcomes
    assert "could not be recorded" in str(outcomes[0])

    backend.execute("ALTER TABLE {p}entries_away RENAME TO {p}entries")
    assert log.size() == 3  # the failed batches left nothing behind, not even a gap
    assert [recorder.record(make_event(i)) for i in range(3, 10)] == list(range(3, 10))
    recorder.close()
    leaves = [make_event(i).canonical() for i in range(10)]
    assert [log.entry(i) for i in range(10)] == leaves
    assert log.verify([(10, merkle.root(leaves))]) == []


def test_an_invalid_event_fails_only_its_caller(log: AuditLog) -> None:
    with AuditRecorder(log) as recorder:
        good = recorder.record_async(make_event(0))
        with pytest.raises(AuditEventError, match="patient"):
            recorder.record(
                {**make_event(1).model_dump(), "entities": [{"kind": "patient", "ref": "Jane"}]}
            )
        assert recorder.record(make_event(2)) == 1
        assert good.result() == 0
    assert log.size() == 2


def test_close_commits_everything_queued_then_refuses_more(backend: Backend, log: AuditLog) -> None:
    recorder = AuditRecorder(log, max_batch=40)
    futures: list[Future[int]] = []
    with write_lock_held(backend):
        futures.append(recorder.record_async(make_event(0)))
        wait_until_taken(recorder)
        futures += [recorder.record_async(make_event(i)) for i in range(1, 150)]
        closer = threading.Thread(target=recorder.close)
        closer.start()
        while True:  # close() refuses new events at once, before it has drained
            try:
                recorder.record_async(make_event(999)).cancel()
            except AuditRecorderClosedError:
                break
            time.sleep(0.005)
    closer.join()
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(150))
    assert log.size() == 150
    with pytest.raises(AuditRecorderClosedError):
        recorder.record(make_event(150))


def test_a_caller_that_cancels_while_queued_is_not_recorded(
    backend: Backend, log: AuditLog
) -> None:
    with AuditRecorder(log) as recorder:
        with write_lock_held(backend):
            first = recorder.record_async(make_event(0))
            wait_until_taken(recorder)
            dropped = recorder.record_async(make_event(1))
            kept = recorder.record_async(make_event(2))
            assert dropped.cancel()
        assert first.result() == 0 and kept.result() == 1
        with pytest.raises(CancelledError):
            dropped.result()
    assert [log.entry(i) for i in range(2)] == [
        make_event(0).canonical(),
        make_event(2).canonical(),
    ]


# --- crash safety ---------------------------------------------------------------------------

RECORDING_PROCESS = """
import sys, threading
from ledger.audit_log import AuditLog
from ledger.audit_recorder import AuditRecorder
from tests.ledger.test_audit_log import make_event

log = AuditLog.open(sys.argv[1], table_prefix=sys.argv[2])
recorder = AuditRecorder(log)
out = threading.Lock()

def caller(t):
    i = 0
    while True:
        n = t * 1_000_000 + i
        index = recorder.record(make_event(n))
        with out:  # acknowledged: the parent may count on this event being in the log
            print(index, n, flush=True)
        i += 1

for t in range(8):
    threading.Thread(target=caller, args=(t,), daemon=True).start()
threading.Event().wait()
"""


@pytest.mark.slow
def test_every_acknowledged_event_survives_a_kill(backend: Backend) -> None:
    backend.open()  # creates the tables
    child = subprocess.Popen(
        [sys.executable, "-c", RECORDING_PROCESS, backend.url, backend.prefix],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: dict[int, int] = {}
    try:
        assert child.stdout is not None
        for line in child.stdout:
            index, n = map(int, line.split())
            acknowledged[index] = n
            if len(acknowledged) >= 400:
                break
        else:
            pytest.fail(
                f"the recording process ended: {child.stderr.read() if child.stderr else ''}"
            )
        os.kill(child.pid, signal.SIGKILL)  # a crash: nothing flushed, no close()
        rest, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    for line in rest.splitlines():  # acknowledged before the kill, still in the pipe
        if len(parts := line.split()) == 2:
            acknowledged[int(parts[0])] = int(parts[1])

    reopened = backend.open()
    size = reopened.size()
    assert size >= len(acknowledged)
    for index, n in acknowledged.items():
        assert reopened.entry(index) == make_event(n).canonical()
    leaves = [reopened.entry(i) for i in range(size)]
    assert len(set(leaves)) == size
    assert reopened.verify([(size, merkle.root(leaves))]) == []
    # The log takes new events where the killed process left off.
    with AuditRecorder(reopened) as recorder:
        assert recorder.record(make_event(10**9)) == size
