"""Local user accounts: who may sign in at this node, with which role.

Passwords are stored only as scrypt hashes (`node.auth.passwords`); an account without one
(a service account) can only receive tokens from `pacsmesh node user token`. A patient account
names the patient (MRN and its issuer) its tokens are bound to.

`tokens_valid_after` (whole seconds since the epoch) is when the account was created or last
enabled or disabled: the node refuses its tokens issued before then, so a token from before a
disable stays dead after the account is enabled again, and a removed account's tokens do not
come back with a new account of the same name.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Field, SQLModel


def _now() -> datetime:
    return datetime.now(UTC)


class NodeUser(SQLModel, table=True):
    """One local account. `user` is reserved in PostgreSQL, hence `node_user`."""

    __tablename__ = "node_user"

    user_key: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64, unique=True)
    password_hash: str | None = Field(default=None, max_length=255)
    role: str = Field(max_length=16)
    patient_mrn: str | None = Field(default=None, max_length=64)
    patient_issuer: str | None = Field(default=None, max_length=64)
    disabled: bool = Field(default=False)
    tokens_valid_after: int = Field(default=0)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
