"""Study transfers: the provenance of every copy this node received from another hospital.

One row per transfer (its id is the one both sides' audit events name). A row is written as
soon as the owner starts sending and updated when the stream ends, so a broken transfer stays
visible as incomplete with the number of instances that did arrive (each of them stored
atomically by the store service). A retried transfer is a new row with a new id.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Field, SQLModel


def _now() -> datetime:
    return datetime.now(UTC)


class StudyTransfer(SQLModel, table=True):
    """One study received from its owner: from whom, on what basis, how much, how complete."""

    __tablename__ = "study_transfer"

    transfer_id: str = Field(primary_key=True, max_length=32)  # uuid4 hex, chosen here
    study_uid: str = Field(max_length=64, index=True)
    source_account: str = Field(max_length=42)  # the owner's member account, lower case
    source_hospital: str = Field(max_length=128)  # its hospital id in the registry
    source_endpoint: str = Field(max_length=512)
    purpose: str = Field(max_length=16)  # treatment | research | ai-training
    consent_ref: str | None = Field(default=None, max_length=66)  # 0x + 64 hex
    break_glass_tx: str | None = Field(default=None, max_length=66)  # 0x + 64 hex
    access_tx: str | None = Field(default=None, max_length=66)  # recordAccess transaction
    instances_expected: int | None = None  # as the owner announced it
    instances_received: int = 0
    complete: bool = False
    received_at: datetime = Field(default_factory=_now)
    completed_at: datetime | None = None
