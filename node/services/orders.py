"""Imaging orders from the order system (ORM^O01 / OMI^O23): place, update, cancel, list.

Each function runs inside the caller's transaction (one HL7 message, one transaction). An
order's Study Instance UID is assigned here when the order system does not send one, so the
worklist can hand it to the modality and the study it produces matches its order."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Connection, Table, insert, select, update

from node.errors import ConflictError, NotFoundError
from node.storage.workflow_index import ImagingOrder

ORDER: Table = ImagingOrder.__table__  # type: ignore[attr-defined]
OPEN_STATUSES = ("scheduled", "in-progress")


@dataclass(frozen=True)
class OrderData:
    """One requested procedure as the order system sent it (DICOM value forms)."""

    accession_number: str
    patient_mrn: str
    patient_issuer: str = ""
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    priority: str | None = None
    modality: str | None = None
    requested_procedure_id: str | None = None
    requested_procedure_description: str | None = None
    procedure_code: str | None = None
    procedure_code_system: str | None = None
    procedure_code_meaning: str | None = None
    scheduled_station_ae: str | None = None
    scheduled_date: str | None = None
    scheduled_time: str | None = None
    referring_physician: str | None = None
    reason: str | None = None
    study_uid: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def get_order(conn: Connection, accession_number: str) -> dict[str, Any] | None:
    """The order with this accession number, as a dict of its columns."""
    row = conn.execute(select(ORDER).where(ORDER.c.accession_number == accession_number)).first()
    return dict(row._mapping) if row is not None else None


def accession_for_placer(conn: Connection, placer_order_number: str) -> str | None:
    """The accession number of the order with this placer order number (ORC-2), if one."""
    rows = conn.execute(
        select(ORDER.c.accession_number)
        .where(ORDER.c.placer_order_number == placer_order_number)
        .limit(2)
    ).all()
    return str(rows[0][0]) if len(rows) == 1 else None


def place_order(conn: Connection, order: OrderData) -> bool:
    """A new order (ORC-1 NW), or a resent/changed one while still scheduled; True when new.

    An accession number that already names an order for another patient, or one that is
    completed or cancelled, is a conflict: accession numbers are never reused."""
    values = {k: v for k, v in asdict(order).items() if k != "study_uid"}
    existing = get_order(conn, order.accession_number)
    if existing is None:
        study_uid = order.study_uid or generate_uid()
        conn.execute(insert(ORDER).values(**values, study_uid=study_uid, status="scheduled"))
        return True
    if existing["patient_mrn"] != order.patient_mrn:
        raise ConflictError("the accession number already names an order for another patient")
    if existing["status"] not in OPEN_STATUSES:
        raise ConflictError(f"the order with this accession number is {existing['status']}")
    conn.execute(
        update(ORDER)
        .where(ORDER.c.accession_number == order.accession_number)
        .values(**values, updated_at=_now())
    )
    return False


def cancel_order(conn: Connection, accession_number: str) -> bool:
    """Cancel an order (ORC-1 CA or DC); True when it changed, False when already cancelled."""
    existing = get_order(conn, accession_number)
    if existing is None:
        raise NotFoundError("no order has this accession number")
    if existing["status"] == "cancelled":
        return False
    if existing["status"] == "completed":
        raise ConflictError("the order is completed: a study was already matched to it")
    conn.execute(
        update(ORDER)
        .where(ORDER.c.accession_number == accession_number)
        .values(status="cancelled", updated_at=_now())
    )
    return True


def list_open_orders(conn: Connection, limit: int = 1000) -> list[dict[str, Any]]:
    """Scheduled and in-progress orders, soonest first (what a worklist would show)."""
    rows = conn.execute(
        select(ORDER)
        .where(ORDER.c.status.in_(OPEN_STATUSES))
        .order_by(ORDER.c.scheduled_date, ORDER.c.scheduled_time, ORDER.c.accession_number)
        .limit(limit)
    )
    return [dict(r._mapping) for r in rows]
