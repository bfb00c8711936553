"""Inbound HL7 v2: validate a message, apply it in one transaction, answer with an ACK.

Accepted (docs/workflow.md has the full profiles): ADT^A01/A04/A08 (register or update a
patient), ADT^A40 (merge), ORM^O01 and OMI^O23 (ORC-1 NW new order, XO change, CA/DC cancel).
Header problems and unsupported types, events, versions or processing IDs are rejected (AR);
content problems are application errors (AE). Either way the transaction is rolled back, so
nothing from a message that was not accepted is stored. Z-segments are ignored (§2.8).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from node.errors import ConflictError, NodeError, NotFoundError
from node.hl7.ack import AckContext, HL7Error, build_ack, rejected
from node.hl7.fields import order_from_segments, patient_from_pid
from node.hl7.message import HL7SyntaxError, Message, Segment, parse
from node.services import orders, patients

log = logging.getLogger("pacsmesh.hl7")

# HL7 versions whose ADT/ORM/OMI layouts this node reads (the fields used did not move).
SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
Handler = Callable[[Connection, Message], None]
ATTEMPTS = 3


def _pid(msg: Message) -> tuple[Segment, patients.PatientData]:
    pid = msg.first("PID")
    if pid is None:
        raise HL7Error(100, "the PID segment is missing", ("PID", 1, 0))
    return pid, patient_from_pid(pid)


def _register(conn: Connection, msg: Message) -> None:
    _, patient = _pid(msg)
    patients.upsert_patient(conn, patient)


def _merge(conn: Connection, msg: Message) -> None:
    _, surviving = _pid(msg)
    mrgs = msg.all("MRG")
    if not mrgs:
        raise HL7Error(100, "the MRG segment is missing", ("MRG", 1, 0))
    for mrg in mrgs:  # one PID/MRG pair per merged record; v2.5 §3.3.40 allows several
        prior = mrg.value(1)
        if not prior:
            raise HL7Error(101, "MRG-1 (prior patient identifier list) is missing", ("MRG", 1, 1))
        if prior == surviving.mrn:
            raise HL7Error(102, "MRG-1 names the surviving patient itself", ("MRG", 1, 1))
        patients.merge_patients(conn, surviving, prior, mrg.value(1, 4))


def _order(conn: Connection, msg: Message) -> None:
    _, patient = _pid(msg)
    patients.upsert_patient(conn, patient)
    groups = _order_groups(msg)
    if not groups:
        raise HL7Error(100, "the ORC segment is missing", ("ORC", 1, 0))
    for orc, obr, tq1, ipc in groups:
        control = orc.value(1).upper()
        if control in ("NW", "XO"):
            orders.place_order(conn, order_from_segments(orc, obr, tq1, ipc, patient))
        elif control in ("CA", "DC", "OC"):  # OC: the filler's "order cancelled"
            orders.cancel_order(conn, _cancelled_accession(conn, orc, obr, tq1, ipc, patient))
        elif not control:
            raise HL7Error(101, "ORC-1 (order control) is missing", ("ORC", 1, 1))
        else:
            raise HL7Error(103, "ORC-1 (order control) is not NW, XO, CA or DC", ("ORC", 1, 1))


def _cancelled_accession(
    conn: Connection,
    orc: Segment,
    obr: Segment | None,
    tq1: Segment | None,
    ipc: Segment | None,
    patient: patients.PatientData,
) -> str:
    """A cancel names its order by accession number, or — as many order systems send it,
    ORC alone — by the placer order number (ORC-2) the order was placed with."""
    if obr is not None or ipc is not None:
        has_accession = (ipc is not None and ipc.value(1)) or (obr is not None and obr.value(18))
        if has_accession or not orc.value(2):
            return order_from_segments(orc, obr, tq1, ipc, patient).accession_number
    placer = orc.value(2)
    if not placer:
        raise HL7Error(101, "ORC-2 (placer order number) is missing", ("ORC", 1, 2))
    accession = orders.accession_for_placer(conn, placer)
    if accession is None:
        raise HL7Error(204, "no order has this placer order number", ("ORC", 1, 2))
    return accession


def _order_groups(
    msg: Message,
) -> list[tuple[Segment, Segment | None, Segment | None, Segment | None]]:
    """Each ORC with the OBR, TQ1 and IPC that follow it before the next ORC."""
    groups: list[tuple[Segment, Segment | None, Segment | None, Segment | None]] = []
    current: list[Segment | None] | None = None
    for seg in msg.segments:
        if seg.name == "ORC":
            if current is not None:
                groups.append((current[0], current[1], current[2], current[3]))  # type: ignore[arg-type]
            current = [seg, None, None, None]
        elif current is not None:
            slot = {"OBR": 1, "TQ1": 2, "IPC": 3}.get(seg.name)
            if slot is not None and current[slot] is None:
                current[slot] = seg
    if current is not None:
        groups.append((current[0], current[1], current[2], current[3]))  # type: ignore[arg-type]
    return groups


HANDLERS: dict[tuple[str, str], Handler] = {
    ("ADT", "A01"): _register,
    ("ADT", "A04"): _register,
    ("ADT", "A08"): _register,
    ("ADT", "A40"): _merge,
    ("ORM", "O01"): _order,
    ("OMI", "O23"): _order,
}
_TYPES = {t for t, _ in HANDLERS}


def context_of(msg: Message) -> AckContext:
    """What the ACK copies from the header (MSH-3/4 become MSH-5/6, MSA-2 echoes MSH-10)."""
    msh = msg.msh
    return AckContext(
        sending_application=msh.value(3),
        sending_facility=msh.value(4),
        trigger=msh.value(9, 2),
        control_id=msh.value(10),
        processing_id=msh.value(11) or "P",
        version=msh.value(12) or "2.5",
    )


def check_header(msg: Message) -> Handler:
    """MSH validation (§2.14.9); returns the handler for the message's type and event."""
    msh = msg.msh
    if not msh.value(10):
        raise rejected(101, "MSH-10 (message control ID) is missing", ("MSH", 1, 10))
    version = msh.value(12)
    if not version:
        raise rejected(101, "MSH-12 (version ID) is missing", ("MSH", 1, 12))
    if version not in SUPPORTED_VERSIONS:
        raise rejected(203, "MSH-12 (version ID) is not a supported HL7 v2 version", ("MSH", 1, 12))
    processing = msh.value(11).upper()
    if processing and processing not in ("P", "D", "T"):
        raise rejected(202, "MSH-11 (processing ID) is not P, D or T", ("MSH", 1, 11))
    kind, event = msh.value(9, 1).upper(), msh.value(9, 2).upper()
    if not kind:
        raise rejected(101, "MSH-9 (message type) is missing", ("MSH", 1, 9))
    if kind not in _TYPES:
        raise rejected(200, f"message type {kind} is not accepted by this node", ("MSH", 1, 9))
    handler = HANDLERS.get((kind, event))
    if handler is None:
        raise rejected(201, f"trigger event {kind}^{event} is not supported", ("MSH", 1, 9))
    return handler


class InboundProcessor:
    """Turns one received message into one ACK, applying it to the index when accepted."""

    def __init__(self, engine: Engine, application: str, facility: str) -> None:
        self.engine = engine
        self.application = application
        self.facility = facility
        # SQLite has one writer: messages from parallel connections queue here, woken as soon
        # as the writer commits, instead of in SQLite's busy handler, which polls with sleeps
        # of up to 100 ms — longer than a message's whole transaction.
        self._writer: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )

    def handle(self, text: str) -> str:
        """Process one message text; always returns an ACK text, never raises."""
        try:
            msg = parse(text)
        except HL7SyntaxError as exc:
            return self._ack(AckContext(), rejected(100, str(exc)))
        ctx = context_of(msg)
        try:
            handler = check_header(msg)
            self._apply(handler, msg)
        except HL7Error as exc:
            return self._ack(ctx, exc)
        except NotFoundError as exc:
            return self._ack(ctx, HL7Error(204, exc.message))
        except ConflictError as exc:
            return self._ack(ctx, HL7Error(205, exc.message))
        except NodeError as exc:
            return self._ack(ctx, HL7Error(207, exc.message))
        except SQLAlchemyError as exc:
            log.error("HL7 message could not be stored: %s", type(exc).__name__)
            return self._ack(ctx, HL7Error(207, "the node could not store the message; resend it"))
        except Exception as exc:
            # Only the type: the exception's text may quote a field value.
            log.error("HL7 message failed: %s", type(exc).__name__)
            return self._ack(ctx, HL7Error(207, "application internal error"))
        return build_ack(ctx, self.application, self.facility, "AA")

    def _apply(self, handler: Handler, msg: Message) -> None:
        # SQLite refuses a transaction whose snapshot went stale under a concurrent writer
        # (SQLITE_BUSY_SNAPSHOT) at once, without waiting: the message is one transaction
        # and was rolled back, so applying it again is safe.
        for attempt in range(ATTEMPTS):
            try:
                with self._writer, self.engine.begin() as conn:
                    handler(conn, msg)
                return
            except OperationalError:
                if attempt == ATTEMPTS - 1:
                    raise

    def _ack(self, ctx: AckContext, error: HL7Error) -> str:
        return build_ack(ctx, self.application, self.facility, error.ack_code, error)
