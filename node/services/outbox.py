"""The HL7 outbox: messages to the order system are written here in the same transaction as
the event that causes them (a study matched, a report made final), so an acknowledged event
can never lose its message; a delivery worker sends them until the receiver acknowledges."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, insert

from node.storage.workflow_index import OutboundMessage

KINDS = frozenset({"order-status", "report"})


def enqueue(conn: Connection, kind: str, payload: dict[str, Any]) -> int:
    """Queue one outbound message; returns its key. Call inside the event's transaction."""
    if kind not in KINDS:
        raise ValueError(f"unknown outbound message kind {kind!r}")
    table = OutboundMessage.__table__  # type: ignore[attr-defined]
    result = conn.execute(
        insert(table).values(kind=kind, payload=json.dumps(payload, sort_keys=True, default=str))
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])
