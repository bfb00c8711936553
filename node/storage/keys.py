"""The node's key-encryption key (where it comes from, checking it, rotating it) and study DEKs.

KEK sources: `file` (DATA_DIR/keys/kek.key, created 0600 on first start), `file:PATH`, or
`env:VARIABLE` holding the base64 key. The index stores a check value sealed under the KEK, so a
wrong key fails start-up with a clear message instead of failing on the first read.

Rotation writes the new key beside the old one (`kek.key.next`), re-wraps every DEK and the
check value in ONE database transaction, then renames the new key into place. A crash between
the steps is finished or rolled back at the next start by asking which key opens the check value.
"""

from __future__ import annotations

import base64
import os
import threading
from collections import OrderedDict
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.errors import KeyEncryptionKeyError
from node.storage.crypto import KeyRing, new_key, read_key_file, write_key_file
from node.storage.index import NodeMeta, StudyKey

META: Table = NodeMeta.__table__  # type: ignore[attr-defined]
KEYS: Table = StudyKey.__table__  # type: ignore[attr-defined]

CHECK_KEY = "kek_check"
ID_KEY = "kek_id"


def kek_path(data_dir: Path, source: str) -> Path | None:
    """The KEK file a source names, or None for non-file sources."""
    if source == "file":
        return data_dir / "keys" / "kek.key"
    if source.startswith("file:"):
        return Path(source[5:])
    return None


def _meta(conn: Connection, key: str) -> str | None:
    value: str | None = conn.execute(
        select(META.c.value).where(META.c.key == key)
    ).scalar_one_or_none()
    return value


def _set_meta(conn: Connection, key: str, value: str) -> None:
    if _meta(conn, key) is None:
        conn.execute(META.insert().values(key=key, value=value))
    else:
        conn.execute(update(META).where(META.c.key == key).values(value=value))


def open_keyring(engine: Engine, data_dir: Path, source: str) -> KeyRing:
    """Load the KEK from its source, initialising a fresh archive, and check it fits the index."""
    with engine.begin() as conn:
        check = _meta(conn, CHECK_KEY)
        known_id = _meta(conn, ID_KEY)
    path = kek_path(data_dir, source)
    if path is not None:
        _finish_interrupted_rotation(path, check)
        if not path.exists():
            if check is not None:
                raise KeyEncryptionKeyError(
                    f"key-encryption key file {path} is missing, but this archive was created "
                    f"with key {known_id}; restore the key file (without it the data is lost)"
                )
            if source != "file":
                raise KeyEncryptionKeyError(f"key-encryption key file not found: {path}")
            write_key_file(path, new_key())
        kek = read_key_file(path)
    elif source.startswith("env:"):
        var = source[4:]
        raw = os.environ.get(var)
        if not raw:
            raise KeyEncryptionKeyError(f"key-encryption key variable {var} is not set")
        from node.storage.crypto import decode_key

        kek = decode_key(raw, f"${var}")
    else:
        raise KeyEncryptionKeyError(f"unknown key-encryption key source {source!r}")
    ring = KeyRing(kek)
    with engine.begin() as conn:
        if check is None:
            _set_meta(conn, CHECK_KEY, ring.check_value())
            _set_meta(conn, ID_KEY, ring.kek_id)
        elif not ring.verify_check_value(check):
            raise KeyEncryptionKeyError(
                f"wrong key-encryption key: this archive was created with key {known_id}, "
                f"the key given is {ring.kek_id}"
            )
    return ring


def _finish_interrupted_rotation(path: Path, check: str | None) -> None:
    nxt = path.with_name(path.name + ".next")
    if not nxt.exists():
        return
    if check is not None and KeyRing(read_key_file(nxt)).verify_check_value(check):
        os.replace(nxt, path)  # the re-wrap committed: the new key is the key
    else:
        nxt.unlink()  # the re-wrap never committed: the old key is still the key


def rotate_kek(engine: Engine, data_dir: Path, source: str, new_source: str | None = None) -> str:
    """Re-wrap every study DEK under a new KEK; returns the new key's id.

    File sources get a freshly generated key. For `env:` sources the new key is read from
    `new_source` (another `env:` variable) and the operator switches the variable afterwards.
    """
    old = open_keyring(engine, data_dir, source)
    path = kek_path(data_dir, source)
    if path is not None:
        new_kek = new_key()
        nxt = path.with_name(path.name + ".next")
        write_key_file(nxt, new_kek)
    else:
        if not new_source or not new_source.startswith("env:"):
            raise KeyEncryptionKeyError("rotating an env: key needs --new-kek-source env:VAR")
        raw = os.environ.get(new_source[4:], "")
        from node.storage.crypto import decode_key

        new_kek = decode_key(raw, new_source)
    new = KeyRing(new_kek)
    with engine.begin() as conn:
        rows = conn.execute(select(KEYS.c.study_uid, KEYS.c.wrapped_dek)).all()
        for row in rows:
            study_uid: str = row[0]
            dek = old.unwrap(row[1], study_uid)
            conn.execute(
                update(KEYS)
                .where(KEYS.c.study_uid == study_uid)
                .values(wrapped_dek=new.wrap(dek, study_uid), kek_id=new.kek_id)
            )
        _set_meta(conn, CHECK_KEY, new.check_value())
        _set_meta(conn, ID_KEY, new.kek_id)
    if path is not None:
        os.replace(path.with_name(path.name + ".next"), path)
    return new.kek_id


class StudyKeys:
    """Study DEKs: created on a study's first instance, unwrapped once and cached in memory."""

    def __init__(self, ring: KeyRing, capacity: int = 4096) -> None:
        self._ring = ring
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def _remember(self, study_uid: str, dek: bytes) -> bytes:
        with self._lock:
            self._cache[study_uid] = dek
            self._cache.move_to_end(study_uid)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return dek

    def cached(self, study_uid: str) -> bytes | None:
        """The study's DEK if it is already unwrapped in memory (no database access)."""
        with self._lock:
            return self._cache.get(study_uid)

    def get(self, conn: Connection, study_uid: str) -> bytes | None:
        """The study's DEK, or None when the study has none (never stored, or shredded)."""
        dek = self.cached(study_uid)
        if dek is not None:
            return dek
        wrapped = conn.execute(
            select(KEYS.c.wrapped_dek).where(KEYS.c.study_uid == study_uid)
        ).scalar_one_or_none()
        if wrapped is None:
            return None
        return self._remember(study_uid, self._ring.unwrap(wrapped, study_uid))

    def get_or_create(self, conn: Connection, study_uid: str) -> bytes:
        """The study's DEK, creating it if this is the study's first instance.

        Commits on `conn`'s own transaction; concurrent creators converge on one key.
        """
        dek = self.get(conn, study_uid)
        if dek is not None:
            return dek
        candidate = new_key()
        values = {
            "study_uid": study_uid,
            "wrapped_dek": self._ring.wrap(candidate, study_uid),
            "kek_id": self._ring.kek_id,
        }
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(insert(KEYS).values(**values).on_conflict_do_nothing())
        with self._lock:
            self._cache.pop(study_uid, None)
        dek = self.get(conn, study_uid)
        assert dek is not None
        return dek

    def forget(self, study_uid: str) -> None:
        """Drop a shredded study's key from memory too."""
        with self._lock:
            self._cache.pop(study_uid, None)


def encode_key(key: bytes) -> str:
    """Base64 form of a key, as key files and env variables hold it."""
    return base64.b64encode(key).decode()
