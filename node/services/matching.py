"""Matching an arriving study to its order, and the reconciliation queue for those that do not.

A study matches when its Accession Number names an open order and its Patient ID is that
order's patient (or an MRN that ADT^A40 merged into it). The order then moves to completed, its
`matched_study_uid` is set and an "order-status" message is queued for the order system, all in
one transaction. A study with an accession number that does not match waits in the
reconciliation queue with the reason; an admin attaches it to the right order, which completes
the order the same way. Studies without an accession number (migrations, peers) are not orders'
studies and are left alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.errors import ConflictError, NotFoundError
from node.services import outbox
from node.services.orders import OPEN_STATUSES, ORDER, get_order
from node.services.patients import PatientData, filed_under, get_patient, surviving_mrn
from node.storage.index import Study
from node.storage.workflow_index import ReconciliationItem

RECONCILIATION: Table = ReconciliationItem.__table__  # type: ignore[attr-defined]
STUDY: Table = Study.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class MatchOutcome:
    """What happened to an arriving study: matched to an order, or queued with a reason."""

    study_uid: str
    matched_accession: str | None = None
    reconciliation_reason: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def match_new_study(
    conn: Connection, study_uid: str, accession_number: str | None, patient_id: str | None
) -> MatchOutcome | None:
    """Match a study to its order, in the transaction that indexes its first instance.

    One transaction: the study, its order's completion (or its place in the reconciliation
    queue) and the order-status message are durable together, and a study is matched exactly
    once — only the instance that created the study row gets here. Returns None when there
    is nothing to do (no accession number: not an ordered study)."""
    if not accession_number:
        return None
    return _match(conn, study_uid, accession_number, patient_id)


def _match(
    conn: Connection, study_uid: str, accession_number: str, patient_id: str | None
) -> MatchOutcome | None:
    order = get_order(conn, accession_number)
    if order is None:
        return _queue(conn, study_uid, accession_number, "no-order")
    if order["matched_study_uid"] == study_uid:
        return None
    if order["status"] == "cancelled":
        return _queue(conn, study_uid, accession_number, "order-cancelled")
    if order["status"] not in OPEN_STATUSES:
        return _queue(conn, study_uid, accession_number, "order-already-matched")
    if not patient_id or surviving_mrn(conn, patient_id) != order["patient_mrn"]:
        return _queue(conn, study_uid, accession_number, "patient-mismatch")
    if not _complete(conn, order, study_uid):
        # A concurrent store of another study completed this order first.
        again = get_order(conn, accession_number)
        if again is not None and again["matched_study_uid"] == study_uid:
            return None
        return _queue(conn, study_uid, accession_number, "order-already-matched")
    return MatchOutcome(study_uid, matched_accession=accession_number)


def _complete(conn: Connection, order: dict[str, Any], study_uid: str) -> bool:
    """Complete an open order with this study and queue its order-status message."""
    matched_at = _now()
    done = conn.execute(
        update(ORDER)
        .where(
            and_(
                ORDER.c.accession_number == order["accession_number"],
                ORDER.c.status.in_(OPEN_STATUSES),
                ORDER.c.matched_study_uid.is_(None),
            )
        )
        .values(status="completed", matched_study_uid=study_uid, updated_at=matched_at)
    ).rowcount
    if not done:
        return False
    payload = order_payload(conn, order, study_uid)
    payload.update(status="completed", matched_at=matched_at.isoformat())
    outbox.enqueue(conn, "order-status", payload)
    return True


def order_payload(conn: Connection, order: dict[str, Any], study_uid: str) -> dict[str, Any]:
    """The outbox payload fields common to every message about an order (WORKFLOW.md)."""
    return {
        "accession_number": order["accession_number"],
        "study_uid": study_uid,
        "patient": _order_patient(conn, order).as_payload(),
        "order": outbox.order_facts(order),
    }


def _order_patient(conn: Connection, order: dict[str, Any]) -> PatientData:
    """The order's patient as registered, or just its identifiers when ADT never named them."""
    mrn, issuer = order["patient_mrn"], order["patient_issuer"]
    return get_patient(conn, mrn, issuer) or PatientData(mrn, issuer)


def _queue(conn: Connection, study_uid: str, accession: str, reason: str) -> MatchOutcome:
    # Two instances of one new study may race here: the first row wins, the second is a no-op.
    dialect = conn.dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(RECONCILIATION).values(
        study_uid=study_uid, reason=reason, accession_number=accession, created_at=_now()
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["study_uid"]))
    return MatchOutcome(study_uid, reconciliation_reason=reason)


def list_reconciliation(conn: Connection, include_resolved: bool = False) -> list[dict[str, Any]]:
    """The reconciliation queue, oldest first (open items only unless asked)."""
    query = select(RECONCILIATION).order_by(RECONCILIATION.c.created_at)
    if not include_resolved:
        query = query.where(RECONCILIATION.c.resolved_at.is_(None))
    return [dict(r._mapping) for r in conn.execute(query)]


def resolve(
    engine: Engine, study_uid: str, accession_number: str, resolved_by: str = "admin"
) -> dict[str, Any]:
    """An admin attaches a queued study to an order: the order completes as on a match.

    The study's index row takes the order's accession number and patient so that queries by
    either find it; the stored objects keep the values they were acquired with."""
    with engine.begin() as conn:
        item = conn.execute(
            select(RECONCILIATION).where(RECONCILIATION.c.study_uid == study_uid)
        ).first()
        if item is None:
            raise NotFoundError("the study is not in the reconciliation queue")
        if item.resolved_at is not None:
            raise ConflictError("the study was already reconciled")
        if not conn.execute(
            select(STUDY.c.study_uid).where(STUDY.c.study_uid == study_uid)
        ).first():
            raise NotFoundError("the study is no longer in the archive")
        order = get_order(conn, accession_number)
        if order is None:
            raise NotFoundError("no order has this accession number")
        if order["status"] not in OPEN_STATUSES or order["matched_study_uid"] is not None:
            raise ConflictError(f"the order is {order['status']}: only open orders can be attached")
        if not _complete(conn, order, study_uid):
            raise ConflictError("the order was completed meanwhile")
        study_values = filed_under(_order_patient(conn, order))
        study_values["accession_number"] = accession_number
        conn.execute(update(STUDY).where(STUDY.c.study_uid == study_uid).values(**study_values))
        resolved_at = _now()
        conn.execute(
            update(RECONCILIATION)
            .where(RECONCILIATION.c.study_uid == study_uid)
            .values(
                resolved_at=resolved_at,
                resolved_accession=accession_number,
                resolved_by=resolved_by[:64],
            )
        )
        return {
            "study_uid": study_uid,
            "reason": item.reason,
            "resolved_accession": accession_number,
            "resolved_at": resolved_at.isoformat(),
        }
