"""Durable delivery of the HL7 outbox to the order system (OCS) over MLLP.

A worker thread sends due `hl7_outbox` rows oldest first and waits for each ACK (original
acknowledgement mode, HL7 v2.5 §2.9.2): MSA-1 AA/CA marks the row delivered; AE/AR/CE/CR marks
it rejected with the receiver's error kept for the admin (resending the same content would be
refused again); no answer or a connection failure schedules a retry with exponential backoff.
All state is in the table, so a restart resumes where it stopped. Delivery is at-least-once: a
message whose ACK was lost is resent with the same MSH-10, which lets the receiver drop it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Table, and_, select, update
from sqlalchemy.exc import SQLAlchemyError

from node.hl7.builders import message_control_id, render
from node.hl7.message import HL7SyntaxError, parse
from node.hl7.mllp import FrameReader, frame
from node.settings import NodeSettings
from node.storage.workflow_index import OutboundMessage

OUTBOX: Table = OutboundMessage.__table__  # type: ignore[attr-defined]
log = logging.getLogger("pacsmesh.hl7.outbound")


class NoAnswerError(Exception):
    """The OCS could not be reached, or did not answer with a usable ACK."""


@dataclass(frozen=True)
class AckReply:
    """The receiver's answer: MSA-1 and, for errors, its explanation."""

    code: str
    error: str | None


def _now() -> datetime:
    return datetime.now(UTC)


def read_ack(text: str, control_id: str) -> AckReply:
    """MSA-1 and the receiver's error text (ERR-8, ERR-3.2, or MSA-3) from an ACK."""
    try:
        msg = parse(text)
    except HL7SyntaxError as exc:
        raise NoAnswerError("the answer is not an HL7 message") from exc
    msa = msg.first("MSA")
    if msa is None or not msa.value(1):
        raise NoAnswerError("the answer has no MSA segment")
    if msa.value(2) and msa.value(2) != control_id:
        raise NoAnswerError("the ACK answers another message (MSA-2)")
    code = msa.value(1).upper()
    err = msg.first("ERR")
    detail = None
    if err is not None:
        detail = err.value(8) or err.value(3, 2) or err.value(3, 1) or None
    detail = detail or msa.value(3) or None
    return AckReply(code, detail[:500] if detail else None)


class MLLPClient:
    """One persistent MLLP connection to the OCS, reopened after any failure."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None

    def exchange(self, message: str) -> str:
        """Send one message, return the ACK text. Raises NoAnswerError."""
        try:
            if self._sock is None:
                self._sock = socket.create_connection((self.host, self.port), self.timeout_s)
            self._sock.settimeout(self.timeout_s)
            self._sock.sendall(frame(message.encode("utf-8")))
            reader = FrameReader()
            while True:
                data = self._sock.recv(65536)
                if not data:
                    raise NoAnswerError("the OCS closed the connection without an ACK")
                frames = reader.feed(data)
                if frames:
                    return frames[0].decode("utf-8", errors="replace")
        except NoAnswerError:
            self.close()
            raise
        except (OSError, ValueError) as exc:
            self.close()
            raise NoAnswerError(f"OCS unreachable: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Drop the connection (the next exchange reconnects)."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class DeliveryWorker:
    """Sends pending outbox rows to settings.ocs_host:ocs_port until each is acknowledged."""

    def __init__(
        self,
        engine: Engine,
        settings: NodeSettings,
        *,
        poll_s: float = 0.5,
        ack_timeout_s: float = 10.0,
        first_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        batch: int = 50,
    ) -> None:
        if settings.ocs_host is None or settings.ocs_port is None:
            raise ValueError("the delivery worker needs ocs_host and ocs_port")
        self.engine = engine
        self.settings = settings
        self.poll_s = poll_s
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.batch = batch
        self.client = MLLPClient(settings.ocs_host, settings.ocs_port, ack_timeout_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run in a background thread."""
        self._thread = threading.Thread(target=self._run, name="hl7-outbound", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the message in flight, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.run_once()
            except SQLAlchemyError as exc:
                log.error("outbox unreadable, retrying: %s", type(exc).__name__)
                sent = 0
            if not sent:
                self._stop.wait(self.poll_s)

    def run_once(self) -> int:
        """Send what is due now, oldest first; stop at the first unreachable attempt.

        Returns how many messages got an answer (delivered or rejected)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(OUTBOX)
                .where(and_(OUTBOX.c.status == "pending", OUTBOX.c.next_attempt_at <= _now()))
                .order_by(OUTBOX.c.message_key)
                .limit(self.batch)
            ).all()
        answered = 0
        for row in rows:
            if self._stop.is_set():
                break
            if not self._deliver(row._mapping):
                break
            answered += 1
        return answered

    def _deliver(self, row: Any) -> bool:
        key = int(row["message_key"])
        try:
            text = render(self.settings, row["kind"], key, json.loads(row["payload"]))
        except (ValueError, KeyError, TypeError) as exc:
            self._finish(key, "rejected", f"the message cannot be rendered: {type(exc).__name__}")
            return True
        try:
            reply = read_ack(self.client.exchange(text), message_control_id(key))
        except NoAnswerError as exc:
            self._retry(key, int(row["attempts"]), str(exc))
            return False
        if reply.code in ("AA", "CA"):
            self._finish(key, "delivered", None)
        else:
            self._finish(key, "rejected", f"{reply.code}: {reply.error or 'no reason given'}")
            log.warning("the OCS refused outbound message %d (%s)", key, reply.code)
        return True

    def _finish(self, key: int, status: str, error: str | None) -> None:
        values: dict[str, Any] = {"status": status, "last_error": error}
        if status == "delivered":
            values["delivered_at"] = _now()
        with self.engine.begin() as conn:
            conn.execute(
                update(OUTBOX)
                .where(OUTBOX.c.message_key == key)
                .values(attempts=OUTBOX.c.attempts + 1, **values)
            )

    def _retry(self, key: int, attempts: int, error: str) -> None:
        delay = min(self.first_backoff_s * (2 ** min(attempts, 20)), self.max_backoff_s)
        with self.engine.begin() as conn:
            conn.execute(
                update(OUTBOX)
                .where(OUTBOX.c.message_key == key)
                .values(
                    attempts=attempts + 1,
                    next_attempt_at=_now() + timedelta(seconds=delay),
                    last_error=error[:500],
                )
            )


def start_delivery(engine: Engine, settings: NodeSettings) -> DeliveryWorker:
    """Start the worker for a node with an OCS configured."""
    worker = DeliveryWorker(engine, settings)
    worker.start()
    return worker
