"""Provenance of studies received from other hospitals (the study_transfer table).

A row is written when the owner starts sending and updated when the stream ends; a copy is
whatever the rows of its study say: from whom, on which consent, how many instances, complete
or not. Studies that arrived this way are copies: this node never offers them to peers (the
owner is the one to ask, under the patient's consent there).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import ColumnElement, Connection, Engine, Table, insert, select, update

from node.storage.transfers_index import StudyTransfer

TRANSFER_T: Final = cast(Table, StudyTransfer.__table__)  # type: ignore[attr-defined]
MAX_LISTED: Final = 1000


@dataclass(frozen=True)
class TransferStart:
    """What is known when the owner accepted a transfer."""

    transfer_id: str
    study_uid: str
    source_account: str
    source_hospital: str
    source_endpoint: str
    purpose: str
    consent_ref: str | None
    break_glass_tx: str | None
    access_tx: str | None
    instances_expected: int | None


def start_transfer(engine: Engine, start: TransferStart) -> None:
    """Record a transfer as begun (incomplete, nothing received yet)."""
    with engine.begin() as conn:
        conn.execute(
            insert(TRANSFER_T).values(
                transfer_id=start.transfer_id,
                study_uid=start.study_uid,
                source_account=start.source_account.lower(),
                source_hospital=start.source_hospital,
                source_endpoint=start.source_endpoint,
                purpose=start.purpose,
                consent_ref=start.consent_ref,
                break_glass_tx=start.break_glass_tx,
                access_tx=start.access_tx,
                instances_expected=start.instances_expected,
                instances_received=0,
                complete=False,
                received_at=datetime.now(UTC),
            )
        )


def finish_transfer(engine: Engine, transfer_id: str, received: int, complete: bool) -> None:
    """Record how a transfer ended: the instances stored and whether it is complete."""
    with engine.begin() as conn:
        conn.execute(
            update(TRANSFER_T)
            .where(TRANSFER_T.c.transfer_id == transfer_id)
            .values(
                instances_received=received,
                complete=complete,
                completed_at=datetime.now(UTC) if complete else None,
            )
        )


def copies_filter(study_uid_column: ColumnElement[Any]) -> ColumnElement[bool]:
    """SQL condition: the study is this node's own, not a copy received from another."""
    return study_uid_column.not_in(select(TRANSFER_T.c.study_uid))


def transfers(conn: Connection, study_uid: str | None = None) -> list[dict[str, Any]]:
    """Transfers received, newest first (of one study, or all), as JSON-ready objects."""
    stmt = select(TRANSFER_T)
    if study_uid is not None:
        stmt = stmt.where(TRANSFER_T.c.study_uid == study_uid)
    stmt = stmt.order_by(TRANSFER_T.c.received_at.desc()).limit(MAX_LISTED)
    return [_json(row) for row in conn.execute(stmt)]


def _json(row: Any) -> dict[str, Any]:
    return {
        "transferId": row.transfer_id,
        "studyInstanceUID": row.study_uid,
        "source": {
            "account": row.source_account,
            "hospitalId": row.source_hospital,
            "endpoint": row.source_endpoint,
        },
        "purpose": row.purpose,
        "consentRef": row.consent_ref,
        "breakGlassTx": row.break_glass_tx,
        "accessTx": row.access_tx,
        "instancesExpected": row.instances_expected,
        "instancesReceived": row.instances_received,
        "complete": bool(row.complete),
        "receivedAt": _iso(row.received_at),
        "completedAt": _iso(row.completed_at),
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")
