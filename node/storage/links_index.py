"""Patient links: which network identity (a patient-held key's address) a local patient has.

A row is written only after the patient's EIP-712 signature over the link was verified
(`node.services.patient_links`); the signature is kept so an auditor can re-check it. Unlinking
sets `unlinked_at` and keeps the row: a used signature can never link again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Field, SQLModel


def _now() -> datetime:
    return datetime.now(UTC)


class PatientLink(SQLModel, table=True):
    """One signed link between a local patient (MRN + issuer) and a patient address."""

    __tablename__ = "patient_link"

    link_key: int | None = Field(default=None, primary_key=True)
    mrn: str = Field(max_length=64, index=True)
    issuer: str = Field(default="", max_length=64)
    address: str = Field(max_length=42, index=True)  # checksummed
    signature: str = Field(max_length=132, unique=True)  # 0x + r, s, v in hex
    nonce: str = Field(max_length=66)  # the signed nonce, 0x-hex
    issued_at: int  # the signed issuedAt (Unix seconds)
    linked_at: datetime = Field(default_factory=_now)
    unlinked_at: datetime | None = Field(default=None)
