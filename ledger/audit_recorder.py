"""Records audit events from many callers through one writer thread that commits in batches.

Every request a node serves produces an audit event, and the request may not be answered before
its event is durable: an access nobody can prove is the one thing an audit log must not lose. A
durable commit costs a disk flush (SQLite ``synchronous=FULL``, PostgreSQL's WAL flush), so one
commit per event caps a node at a few hundred events per second. The recorder is a group commit:
callers put their event in a queue and wait; one writer thread takes everything queued (up to
``max_batch``) and commits it with ``AuditLog.append_many`` in one transaction, one flush. It
never waits for a batch to fill — an event arriving at an idle recorder is committed at once —
so batches form only from the events that arrive while the previous commit is on disk, and grow
with the load.

A caller is answered (its leaf index, or an error) only after its batch's transaction has
committed, so every event acknowledged survives a crash of the process. Indices are assigned in
commit order, densely, by the log itself; events of one caller keep the order it recorded them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any, Protocol

from ledger.audit_events import AuditEvent
from ledger.audit_log import AuditLog, AuditLogError, EncodedEvent, encode_event

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1000


class AuditRecorderClosedError(AuditLogError):
    """The recorder was closed: it takes no more events."""


class _Waiter(Protocol):
    """Who waits for one queued event; told on the writer thread."""

    def claim(self) -> bool:
        """Whether the event is still wanted, as its batch is taken (False: drop it)."""

    def resolve(self, index: int) -> None:
        """The event is durable at ``index``."""

    def reject(self, error: BaseException) -> None:
        """The event is not in the log."""


class _FutureWaiter:
    """``record_async``: a ``concurrent.futures.Future``, which its caller may cancel."""

    __slots__ = ("future",)

    def __init__(self, future: Future[int]) -> None:
        self.future = future

    def claim(self) -> bool:
        return self.future.set_running_or_notify_cancel()

    def resolve(self, index: int) -> None:
        self.future.set_result(index)

    def reject(self, error: BaseException) -> None:
        self.future.set_exception(error)


class _ThreadWaiter:
    """``record``: the calling thread sleeps on a lock that the writer releases."""

    __slots__ = ("error", "index", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.index = -1
        self.error: BaseException | None = None

    def claim(self) -> bool:
        return True

    def resolve(self, index: int) -> None:
        self.index = index
        self.lock.release()

    def reject(self, error: BaseException) -> None:
        self.error = error
        self.lock.release()

    def wait(self) -> int:
        self.lock.acquire()
        if self.error is not None:
            raise self.error
        return self.index


class _LoopWaiter:
    """``record_in_loop``: an asyncio future, settled on its own loop.

    Never dropped: the event is recorded even if the task awaiting it is cancelled (a client
    that went away still made the access).
    """

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[int] = loop.create_future()

    def claim(self) -> bool:
        return True

    def resolve(self, index: int) -> None:
        self._settle(index, None)

    def reject(self, error: BaseException) -> None:
        self._settle(-1, error)

    def _settle(self, index: int, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self.loop.call_soon_threadsafe(_settle_future, self.future, index, error)


def _settle_future(future: asyncio.Future[int], index: int, error: BaseException | None) -> None:
    if future.done():  # its awaiter was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(index)


class AuditRecorder:
    """Group commit for an ``AuditLog``: ``record`` returns once the event is durable."""

    def __init__(self, audit_log: AuditLog, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.log = audit_log
        self.max_batch = max_batch
        self._queue: deque[tuple[EncodedEvent, _Waiter]] = deque()
        self._wakeup = threading.Condition()
        self._closing = False
        # Written by the writer thread only; for metrics and benchmarks.
        self.committed_batches = 0
        self.committed_events = 0
        self._writer = threading.Thread(target=self._run, name="audit-recorder", daemon=True)
        self._writer.start()

    def __enter__(self) -> AuditRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, event: AuditEvent | Mapping[str, Any]) -> int:
        """Record one event; returns its leaf index once it is committed (durable).

        Raises ``AuditEventError`` for an invalid event, ``AuditLogError`` when its batch could
        not be committed (nothing of that batch is in the log then), and
        ``AuditRecorderClosedError`` after ``close``.
        """
        waiter = _ThreadWaiter()
        self._enqueue(event, waiter)
        return waiter.wait()

    def record_async(self, event: AuditEvent | Mapping[str, Any]) -> Future[int]:
        """Queue one event; the future gives its leaf index once it is committed (durable).

        A future cancelled before its batch is taken is not recorded. An invalid event raises
        ``AuditEventError`` here, at once, so it never fails the other events of a batch.
        On an event loop, ``record_in_loop`` costs less.
        """
        future: Future[int] = Future()
        self._enqueue(event, _FutureWaiter(future))
        return future

    def record_in_loop(self, event: AuditEvent | Mapping[str, Any]) -> asyncio.Future[int]:
        """Queue one event from a running event loop; await the result for its leaf index.

        The future is settled on this loop once the event is durable. Cancelling the await
        does not withdraw the event: it is recorded all the same. Raises like ``record``.
        """
        waiter = _LoopWaiter(asyncio.get_running_loop())
        self._enqueue(event, waiter)
        return waiter.future

    def _enqueue(self, event: AuditEvent | Mapping[str, Any], waiter: _Waiter) -> None:
        # Validated and encoded here, in the caller's thread: that work (a third of a commit's)
        # then overlaps the writer's disk flush instead of lengthening every commit.
        entry = encode_event(event)
        with self._wakeup:
            if self._closing:
                raise AuditRecorderClosedError("the audit recorder is closed")
            self._queue.append((entry, waiter))
            if len(self._queue) == 1:
                self._wakeup.notify()

    def pending(self) -> int:
        """Events queued and not yet taken into a batch."""
        with self._wakeup:
            return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new events, commit every event already queued, and stop the writer thread."""
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        self._writer.join(timeout)
        if self._writer.is_alive():
            raise AuditLogError(f"the audit recorder did not drain within {timeout} s")

    def _take_batch(self) -> list[tuple[EncodedEvent, _Waiter]] | None:
        with self._wakeup:
            while not self._queue and not self._closing:
                self._wakeup.wait()
            if not self._queue:
                return None  # closing, and everything queued has been committed
            count = min(len(self._queue), self.max_batch)
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        try:
            while (batch := self._take_batch()) is not None:
                # A future cancelled while queued is dropped; the rest can no longer be.
                live = [(e, w) for e, w in batch if w.claim()]
                if live:
                    self._commit(live)
        finally:
            # Only reached early if the thread itself is dying: no caller may wait forever.
            with self._wakeup:
                self._closing = True
                stranded = list(self._queue)
                self._queue.clear()
            for _, waiter in stranded:
                if waiter.claim():
                    waiter.reject(AuditRecorderClosedError("the audit recorder stopped"))

    def _commit(self, batch: list[tuple[EncodedEvent, _Waiter]]) -> None:
        try:
            indices = self.log.append_encoded([e for e, _ in batch])
        except BaseException as exc:
            # The transaction rolled back: none of these events is in the log, and every caller
            # must learn it. Each gets its own exception object (they are raised in many threads).
            log.error("an audit batch of %d events could not be committed", len(batch))
            for _, waiter in batch:
                reason = type(exc.__cause__ or exc).__name__
                error = AuditLogError(f"the audit event could not be recorded ({reason})")
                error.__cause__ = exc
                waiter.reject(error)
            if not isinstance(exc, Exception):
                raise
            return
        self.committed_batches += 1
        self.committed_events += len(batch)
        for (_, waiter), index in zip(batch, indices, strict=True):
            waiter.resolve(index)
