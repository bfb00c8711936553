"""Local accounts: add, remove, list, password sign-in, and whether a token's holder stands.

Used by the token endpoint, by token verification and by `pacsmesh node user`, which runs
beside a live node and so touches only the index database (never the archive's data-directory
lock). The database is the one place an account's standing lives: the node looks it up for
every request, so a change the CLI makes in its own process takes effect on the next request.
"""

from __future__ import annotations

import re
import threading
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from node.auth.errors import AuthenticationError
from node.auth.passwords import hash_password, verify_password
from node.auth.policy import ROLES, SERVICE_ROLES, PatientBinding
from node.errors import ConflictError, InvalidRequestError, NotFoundError, StorageError
from node.storage.users_index import NodeUser

USERS: Table = NodeUser.__table__  # type: ignore[attr-defined]
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12


@dataclass(frozen=True)
class Account:
    """A local account as callers see it (never the hash)."""

    username: str
    role: str
    patient: PatientBinding | None
    disabled: bool
    has_password: bool
    created_at: datetime


def _tokens_valid_after(now: datetime) -> int:
    # Token `iat` claims are whole seconds: a token issued in the second an account was enabled
    # must pass, so the mark is that second's start.
    return int(now.timestamp())


def _account(row: object) -> Account:
    mrn = getattr(row, "patient_mrn", None)
    patient = PatientBinding(mrn, getattr(row, "patient_issuer", None) or "") if mrn else None
    return Account(
        username=row.username,  # type: ignore[attr-defined]
        role=row.role,  # type: ignore[attr-defined]
        patient=patient,
        disabled=bool(row.disabled),  # type: ignore[attr-defined]
        has_password=row.password_hash is not None,  # type: ignore[attr-defined]
        created_at=row.created_at,  # type: ignore[attr-defined]
    )


def add_user(
    engine: Engine,
    username: str,
    role: str,
    *,
    password: str | None = None,
    patient: PatientBinding | None = None,
) -> Account:
    """Create an account; patients must name their MRN, staff must not."""
    if not _USERNAME_RE.match(username):
        raise InvalidRequestError(
            "invalid username: 1-64 letters, digits or . _ @ -, starting with a letter or digit"
        )
    if role not in ROLES and role not in SERVICE_ROLES:
        known = ", ".join((*ROLES, *SERVICE_ROLES))
        raise InvalidRequestError(f"unknown role; choose one of {known}")
    if role in SERVICE_ROLES and password is not None:
        # A service credential is a token an administrator issues with a bounded lifetime
        # (`pacsmesh node user token`); a password would let it sign in for fresh ones.
        raise InvalidRequestError(f"a {role} account is token-only: it takes no password")
    if (role == "patient") != (patient is not None):
        raise InvalidRequestError("a patient account needs --patient MRN; other roles take none")
    if password is not None and len(password) < MIN_PASSWORD:
        raise InvalidRequestError(f"password too short: at least {MIN_PASSWORD} characters")
    now = datetime.now(UTC)
    values = {
        "username": username,
        "password_hash": hash_password(password) if password is not None else None,
        "role": role,
        "patient_mrn": patient.mrn if patient else None,
        "patient_issuer": patient.issuer if patient else None,
        "disabled": False,
        "tokens_valid_after": _tokens_valid_after(now),
        "created_at": now,
        "updated_at": now,
    }
    try:
        with engine.begin() as conn:
            conn.execute(insert(USERS).values(**values))
    except IntegrityError:
        raise ConflictError("a user with that name already exists") from None
    return get_user(engine, username)


def get_user(engine: Engine, username: str) -> Account:
    """One account, or NotFoundError."""
    with engine.connect() as conn:
        row = conn.execute(select(USERS).where(USERS.c.username == username)).first()
    if row is None:
        raise NotFoundError("no such user")
    return _account(row)


def remove_user(engine: Engine, username: str) -> None:
    """Delete an account; the node refuses its tokens from the next request on."""
    with engine.begin() as conn:
        if conn.execute(delete(USERS).where(USERS.c.username == username)).rowcount == 0:
            raise NotFoundError("no such user")


def set_disabled(engine: Engine, username: str, disabled: bool) -> None:
    """Disable (or re-enable) an account: sign-in, token issuance and every token it holds.

    Either way the tokens issued before now stay refused: enabling an account does not revive
    the tokens it held when it was disabled.
    """
    now = datetime.now(UTC)
    values = {
        "disabled": disabled,
        "tokens_valid_after": _tokens_valid_after(now),
        "updated_at": now,
    }
    with engine.begin() as conn:
        changed = conn.execute(
            update(USERS).where(USERS.c.username == username).values(**values)
        ).rowcount
    if changed == 0:
        raise NotFoundError("no such user")


def list_users(engine: Engine) -> list[Account]:
    """Every account, by name."""
    with engine.connect() as conn:
        rows = conn.execute(select(USERS).order_by(USERS.c.username)).all()
    return [_account(r) for r in rows]


def authenticate(engine: Engine, username: str, password: str) -> Account | None:
    """The account if the password is right and the account enabled; None otherwise.

    Unknown users cost the same hashing work as known ones (no user enumeration by timing).
    """
    with engine.connect() as conn:
        row = conn.execute(select(USERS).where(USERS.c.username == username)).first()
    stored = row.password_hash if row is not None else None
    ok = verify_password(password, stored)
    if row is None or not ok or row.disabled:
        return None
    return _account(row)


# Built once (see TokenHolders for what that saves, measured).
_STANDING = select(USERS.c.disabled, USERS.c.tokens_valid_after).where(
    USERS.c.username == bindparam("username")
)


class TokenHolders:
    """Check 6 of token verification: does the account a token of this node names still stand?

    One indexed lookup (the unique user name) for every request, so a removal or a disable made
    by `pacsmesh node user` in another process cuts the account off at once. The lookups share
    one connection kept for them and one prebuilt statement; on SQLite, whose file this process
    reads itself, a lookup does not wait on another process (`in_process`), so the event loop
    may ask without a hand-off to a worker thread. Measured with
    `benchmarks/auth_overhead.py --requests 300` (RESULTS.md, "Token lifecycle"): the token
    check cost +0.46-0.60 ms at p50 through a pool checkout, a statement built per call and a
    thread hand-off, and +0.09-0.22 ms this way.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.in_process = engine.dialect.name == "sqlite"
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def __call__(self, username: str, issued_at: int) -> None:
        """Refuse (AuthenticationError) a token issued at `issued_at` to `username` when the
        account was removed, is disabled, or was re-created or re-enabled since."""
        row = self._standing(username)
        if row is None:
            raise AuthenticationError("token revoked: its account no longer exists")
        if row.disabled:
            raise AuthenticationError("token revoked: its account is disabled")
        if issued_at < row.tokens_valid_after:
            raise AuthenticationError(
                "token revoked: issued before its account was last enabled or re-created"
            )

    def close(self) -> None:
        """Give the kept connection back (before the engine is disposed)."""
        with self._lock:
            self._drop()

    def _standing(self, username: str) -> Row[Any] | None:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self.engine.connect()
                try:
                    return self._conn.execute(_STANDING, {"username": username}).first()
                finally:
                    self._conn.rollback()  # no snapshot kept: the next lookup sees the newest
            except SQLAlchemyError:
                self._drop()  # the next lookup connects afresh
                # Never a yes without the answer: the request waits for the database (503).
                raise StorageError(
                    "accounts cannot be checked now: the index database is unreachable"
                ) from None

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None
