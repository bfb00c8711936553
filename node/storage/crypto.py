"""Envelope encryption for the archive.

- The node's key-encryption key (KEK, 256 bits) wraps one data-encryption key (DEK) per study
  with AES-256-GCM; the wrap's associated data names the study, so a wrapped DEK cannot be
  moved to another study.
- Blobs are sealed with a segmented AES-256-GCM stream (in the spirit of Tink's streaming AEAD
  and the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár): plaintext is cut into
  fixed segments, each sealed on its own with a nonce made of a random per-blob prefix, the
  segment counter and a last-segment flag. Any reordering, truncation or extension of segments
  fails authentication, every segment is authenticated before its plaintext is released, and
  any byte range can be decrypted without reading the rest (frames, Range requests).
- The associated data of every segment binds the blob to its SOP Instance UID and purpose, so
  two blobs cannot be swapped in the store without detection.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.errors import BlobIntegrityError, KeyEncryptionKeyError

KEY_BYTES = 32
TAG_BYTES = 16
SEGMENT_BYTES = 1 << 20  # plaintext per segment: large enough that per-call overhead vanishes
MAGIC = b"PMB1"
HEADER = struct.Struct(">4sI7sx")  # magic, segment size, nonce prefix, reserved
HEADER_BYTES = HEADER.size


def key_id(key: bytes) -> str:
    """A short public fingerprint of a key, to tell which KEK wrapped what."""
    return hashlib.sha256(b"pacsmesh-kek-id\x00" + key).hexdigest()[:16]


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return secrets.token_bytes(KEY_BYTES)


# --- the key-encryption key -------------------------------------------------------------------


def read_key_file(path: Path) -> bytes:
    """Read a base64 KEK file, refusing one that other users can read."""
    try:
        mode = path.stat().st_mode & 0o777
        raw = path.read_text().strip()
    except FileNotFoundError as exc:
        raise KeyEncryptionKeyError(f"key-encryption key file not found: {path}") from exc
    except OSError as exc:
        raise KeyEncryptionKeyError(f"cannot read key-encryption key file {path}: {exc}") from exc
    if mode & 0o077:
        raise KeyEncryptionKeyError(
            f"key-encryption key file {path} is readable by others (mode {mode:o}); chmod 600 it"
        )
    return decode_key(raw, str(path))


def decode_key(raw: str, where: str) -> bytes:
    """Decode a base64 256-bit key, with a clear message when it is not one."""
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise KeyEncryptionKeyError(f"key-encryption key in {where} is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise KeyEncryptionKeyError(
            f"key-encryption key in {where} has {len(key)} bytes; 32 are required"
        )
    return key


def write_key_file(path: Path, key: bytes) -> None:
    """Write a KEK file atomically with mode 0600 (never briefly world-readable)."""
    replace_secret_file(path, base64.b64encode(key) + b"\n")


# --- node secrets: private files, written whole or not at all ----------------------------------
# Each is written to a temporary file beside its place (mode 0600 from its creation, in a 0700
# folder when the folder is new), fsynced, then moved into place and the folder fsynced: a
# reader never sees half a file or a briefly readable one, and after a crash either the old
# file or the new one is there.


def _private_temp(path: Path, data: bytes) -> Path:
    """`data` in a new, fsynced, owner-only file beside `path`; the caller moves it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def create_secret_file(path: Path, data: bytes) -> bytes:
    """Create a node secret once (a signing key, a pseudonym key) and return what the file holds.

    Hard-linked into place, so it never replaces a secret another process created meanwhile
    (theirs wins, and both then use it).
    """
    tmp = _private_temp(path, data)
    try:
        os.link(tmp, path)
        fsync_dir(path.parent)
    except FileExistsError:
        data = path.read_bytes()
    finally:
        tmp.unlink()
    return data


def replace_secret_file(path: Path, data: bytes) -> None:
    """Write a private file, replacing what it held (a token a job renews, a key, a CSV of
    de-identified labels): a reader sees the old content or the new one."""
    tmp = _private_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def load_or_create_secret(
    path: Path, what: str, min_bytes: int = KEY_BYTES, max_bytes: int | None = None
) -> bytes:
    """The random secret in `path` (`what` names it in errors), made on first use (KEY_BYTES).

    ValueError when the file holds fewer than `min_bytes` or more than `max_bytes` bytes.
    """
    if not path.exists():
        return create_secret_file(path, new_key())
    secret = path.read_bytes()
    if len(secret) < min_bytes:
        raise ValueError(f"the {what} {path} is shorter than {min_bytes} bytes")
    if max_bytes is not None and len(secret) > max_bytes:
        raise ValueError(f"the {what} {path} is longer than {max_bytes} bytes")
    return secret


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KeyRing:
    """Wraps and unwraps study DEKs under one KEK."""

    def __init__(self, kek: bytes) -> None:
        if len(kek) != KEY_BYTES:
            raise KeyEncryptionKeyError("key-encryption key must be 32 bytes")
        self._aead = AESGCM(kek)
        self.kek_id = key_id(kek)

    def wrap(self, dek: bytes, study_uid: str) -> bytes:
        """Seal a DEK for one study."""
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, dek, b"pacsmesh-dek\x00" + study_uid.encode())

    def unwrap(self, wrapped: bytes, study_uid: str) -> bytes:
        """Open a DEK; fails when the KEK is wrong or the wrapped key was moved or altered."""
        try:
            return self._aead.decrypt(
                wrapped[:12], wrapped[12:], b"pacsmesh-dek\x00" + study_uid.encode()
            )
        except InvalidTag as exc:
            raise KeyEncryptionKeyError(
                "a study key does not open with this key-encryption key"
            ) from exc

    def check_value(self) -> str:
        """A value stored with the index so that start-up can tell a wrong KEK at once."""
        return base64.b64encode(self.wrap(b"pacsmesh-kek-check", "-")).decode()

    def verify_check_value(self, value: str) -> bool:
        """True when `value` was made by `check_value` under this same KEK."""
        try:
            return self.unwrap(base64.b64decode(value), "-") == b"pacsmesh-kek-check"
        except (KeyEncryptionKeyError, ValueError):
            return False


# --- sealed values (small: metadata) ----------------------------------------------------------


def seal(dek: bytes, plaintext: bytes, binding: bytes) -> bytes:
    """Seal a small value in one piece (nonce || ciphertext || tag)."""
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(dek).encrypt(nonce, plaintext, b"pacsmesh-value\x00" + binding)


def unseal(dek: bytes, sealed: bytes, binding: bytes) -> bytes:
    """Open a value made by `seal`, failing loudly on any tampering."""
    try:
        return AESGCM(dek).decrypt(sealed[:12], sealed[12:], b"pacsmesh-value\x00" + binding)
    except InvalidTag as exc:
        raise BlobIntegrityError("stored metadata failed authentication") from exc


# --- segmented blob stream --------------------------------------------------------------------


def blob_aad(sop_instance_uid: str) -> bytes:
    """Associated data binding a blob to the instance it holds."""
    return b"pacsmesh-blob-v1\x00" + sop_instance_uid.encode()


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">I?", index, last)


class EncryptingWriter:
    """Seals a plaintext stream into `sink`, one segment at a time (bounded memory)."""

    def __init__(self, sink: BinaryIO, dek: bytes, aad: bytes, segment: int = SEGMENT_BYTES):
        self._sink = sink
        self._aead = AESGCM(dek)
        self._aad = aad
        self._segment = segment
        self._prefix = secrets.token_bytes(7)
        self._buf = bytearray()
        self._index = 0
        self.plaintext_size = 0
        self.closed = False
        sink.write(HEADER.pack(MAGIC, segment, self._prefix))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Add plaintext; full segments are sealed and written once more data follows them."""
        self._buf += data
        self.plaintext_size += len(data)
        # Keep at least one byte back: the last segment is only known when the stream closes.
        if len(self._buf) <= self._segment:
            return
        # Seal straight from the buffer (no per-segment copies) and compact once at the end.
        done = 0
        with memoryview(self._buf) as view:
            while len(self._buf) - done > self._segment:
                self._emit(view[done : done + self._segment], last=False)
                done += self._segment
        del self._buf[:done]

    def close(self) -> None:
        """Seal the final segment (possibly empty)."""
        if not self.closed:
            self._emit(bytes(self._buf), last=True)
            self._buf.clear()
            self.closed = True

    def _emit(self, chunk: bytes | memoryview, last: bool) -> None:
        nonce = _nonce(self._prefix, self._index, last)
        self._sink.write(self._aead.encrypt(nonce, chunk, self._aad))
        self._index += 1


def sealed_size(plaintext_size: int, segment: int = SEGMENT_BYTES) -> int:
    """Ciphertext size of a blob holding `plaintext_size` bytes."""
    segments = max(1, -(-plaintext_size // segment))
    return HEADER_BYTES + plaintext_size + segments * TAG_BYTES


class BlobReader:
    """Random-access decryption of a sealed blob; each segment is authenticated before use."""

    def __init__(self, source: BinaryIO, dek: bytes, aad: bytes) -> None:
        self._src = source
        self._aead = AESGCM(dek)
        self._aad = aad
        head = source.read(HEADER_BYTES)
        if len(head) != HEADER_BYTES:
            raise BlobIntegrityError("stored object is truncated")
        magic, self._segment, self._prefix = HEADER.unpack(head)
        if magic != MAGIC or self._segment <= 0:
            raise BlobIntegrityError("stored object has an unknown format")
        total = source.seek(0, io.SEEK_END) - HEADER_BYTES
        seg_ct = self._segment + TAG_BYTES
        self._segments = max(1, -(-total // seg_ct))
        last_ct = total - (self._segments - 1) * seg_ct
        if last_ct < TAG_BYTES:
            raise BlobIntegrityError("stored object is truncated")
        self.size = (self._segments - 1) * self._segment + last_ct - TAG_BYTES

    def close(self) -> None:
        """Close the underlying file."""
        self._src.close()

    def segment(self, index: int) -> bytes:
        """Decrypt and authenticate one segment."""
        seg_ct = self._segment + TAG_BYTES
        self._src.seek(HEADER_BYTES + index * seg_ct)
        data = self._src.read(seg_ct)
        last = index == self._segments - 1
        try:
            return self._aead.decrypt(_nonce(self._prefix, index, last), data, self._aad)
        except InvalidTag as exc:
            raise BlobIntegrityError("stored object failed authentication") from exc

    def iter_range(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Plaintext bytes [start, end) as a stream of chunks."""
        end = self.size if end is None else min(end, self.size)
        if start >= end:
            return
        first, last = start // self._segment, (end - 1) // self._segment
        for index in range(first, last + 1):
            chunk = self.segment(index)
            lo = start - index * self._segment if index == first else 0
            hi = end - index * self._segment if index == last else len(chunk)
            yield chunk[lo:hi] if (lo or hi != len(chunk)) else chunk

    def read_all(self) -> bytes:
        """The whole plaintext (for objects known to be small enough)."""
        return b"".join(self.iter_range())

    def as_file(self) -> BlobFile:
        """A seekable read-only file over the plaintext (for pydicom's lazy reading)."""
        return BlobFile(self)


class BlobFile(io.RawIOBase):
    """Seekable plaintext view of a `BlobReader`, caching the current segment."""

    def __init__(self, reader: BlobReader) -> None:
        self._r = reader
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._r.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._r.size - self._pos)
        done = 0
        seg = self._r._segment
        while done < want:
            index = (self._pos + done) // seg
            if self._cached is None or self._cached[0] != index:
                self._cached = (index, self._r.segment(index))
            chunk = self._cached[1]
            off = (self._pos + done) - index * seg
            n = min(want - done, len(chunk) - off)
            buffer[done : done + n] = chunk[off : off + n]
            done += n
        self._pos += done
        return done
