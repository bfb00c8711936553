"""What an admin sees and does with the HL7 outbox: list messages, resend a rejected one."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, select, update

from node.errors import ConflictError, InvalidRequestError, NotFoundError
from node.storage.workflow_index import OutboundMessage

OUTBOX: Table = OutboundMessage.__table__  # type: ignore[attr-defined]
STATUSES = ("pending", "delivered", "rejected")


def list_messages(
    conn: Connection, status: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Outbox rows, newest first; the payload is summarised (kind, accession, study)."""
    if status is not None and status not in STATUSES:
        raise InvalidRequestError(f"status must be one of {', '.join(STATUSES)}")
    query = select(OUTBOX).order_by(OUTBOX.c.message_key.desc()).limit(limit)
    if status is not None:
        query = query.where(OUTBOX.c.status == status)
    out = []
    for row in conn.execute(query):
        payload = json.loads(row.payload)
        out.append(
            {
                "message_key": row.message_key,
                "kind": row.kind,
                "status": row.status,
                "attempts": row.attempts,
                "accession_number": payload.get("accession_number"),
                "study_uid": payload.get("study_uid"),
                "next_attempt_at": row.next_attempt_at.isoformat(),
                "created_at": row.created_at.isoformat(),
                "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
                "last_error": row.last_error,
            }
        )
    return out


def retry_message(conn: Connection, message_key: int) -> None:
    """Put a rejected message back in the queue (after the OCS side was fixed)."""
    row = conn.execute(select(OUTBOX.c.status).where(OUTBOX.c.message_key == message_key)).first()
    if row is None:
        raise NotFoundError("no outbound message has this key")
    if row.status != "rejected":
        raise ConflictError(f"the message is {row.status}; only rejected messages are resent")
    conn.execute(
        update(OUTBOX)
        .where(OUTBOX.c.message_key == message_key)
        .values(status="pending", next_attempt_at=datetime.now(UTC))
    )
