"""Admin endpoints for the imaging workflow: the reconciliation queue and the HL7 outbox.

The node process owns the data directory (and its lock), so admin commands talk to it here
rather than opening the database beside it. Issue #6 puts these behind the admin role.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from node.api.deps import ArchiveDep
from node.services import matching, orders, outbox_admin


class ResolveRequest(BaseModel):
    """Attach a queued study to an order."""

    accession_number: str = Field(min_length=1, max_length=16)
    resolved_by: str = Field(default="admin", min_length=1, max_length=64)


def build_router() -> APIRouter:
    """The /admin routes."""
    router = APIRouter(tags=["admin"])

    @router.get("/reconciliation")
    def list_reconciliation(
        archive: ArchiveDep, include_resolved: Annotated[bool, Query()] = False
    ) -> list[dict[str, Any]]:
        with archive.engine.connect() as conn:
            return matching.list_reconciliation(conn, include_resolved)

    @router.post("/reconciliation/{study_uid}/resolve")
    def resolve(study_uid: str, body: ResolveRequest, archive: ArchiveDep) -> dict[str, Any]:
        return matching.resolve(archive.engine, study_uid, body.accession_number, body.resolved_by)

    @router.get("/orders")
    def open_orders(archive: ArchiveDep) -> list[dict[str, Any]]:
        with archive.engine.connect() as conn:
            return orders.list_open_orders(conn)

    @router.get("/outbox")
    def outbox(
        archive: ArchiveDep, status: Annotated[str | None, Query()] = None
    ) -> list[dict[str, Any]]:
        with archive.engine.connect() as conn:
            return outbox_admin.list_messages(conn, status)

    @router.post("/outbox/{message_key}/retry")
    def retry(message_key: int, archive: ArchiveDep) -> dict[str, Any]:
        with archive.engine.begin() as conn:
            outbox_admin.retry_message(conn, message_key)
        return {"message_key": message_key, "status": "pending"}

    return router
