"""The HL7 outbox: messages to the order system are written here in the same transaction as
the event that causes them (a study matched, a report made final), so an acknowledged event
can never lose its message; a delivery worker sends them until the receiver acknowledges."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, insert

from node.storage.workflow_index import OutboundMessage

KINDS = frozenset({"order-status", "report"})

# The "order" object of every payload about an order (the schema the HL7 builders read).
ORDER_FIELDS = (
    "placer_order_number",
    "filler_order_number",
    "procedure_code",
    "procedure_code_system",
    "procedure_code_meaning",
    "requested_procedure_description",
    "modality",
)


def order_facts(order: Mapping[Any, Any] | None) -> dict[str, Any]:
    """A payload's "order" object from an imaging_order row (all None without an order)."""
    return {f: (order[f] if order is not None else None) for f in ORDER_FIELDS}


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
