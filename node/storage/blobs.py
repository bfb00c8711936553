"""The blob store: sealed objects on disk, written atomically.

A write goes to `tmp/` (already ciphertext: plaintext never touches the disk), is fsynced,
renamed into `blobs/xx/yy/NAME` and the directory fsynced; only then does the caller commit the
index row. A crash therefore leaves at most a temp file or an unindexed blob, and
`reconcile` removes both at start-up.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from node.storage.crypto import BlobReader, EncryptingWriter, fsync_dir


@dataclass(frozen=True)
class ReconcileReport:
    """What start-up found and cleaned."""

    temp_files_removed: int
    orphan_blobs_removed: int
    missing_blobs: list[str]


class PendingBlob:
    """A blob being written: ciphertext in a temp file until `commit`."""

    def __init__(self, store: BlobStore, dek: bytes, aad: bytes) -> None:
        self._store = store
        self.name = secrets.token_hex(16)
        self.temp_path = store.tmp_dir / f"{self.name}.part"
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file: BinaryIO = os.fdopen(fd, "wb", buffering=1 << 20)
        self._writer = EncryptingWriter(self._file, dek, aad)
        self.done = False

    @property
    def plaintext_size(self) -> int:
        """Bytes of plaintext written so far."""
        return self._writer.plaintext_size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append plaintext (it is sealed before it reaches the file)."""
        self._writer.write(data)

    def commit(self) -> str:
        """Seal the last segment, make the blob durable and visible; returns its name."""
        self._writer.close()
        self._file.flush()
        if self._store.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        final = self._store.path_of(self.name)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.temp_path, final)
        if self._store.fsync:
            fsync_dir(final.parent)
        self.done = True
        return self.name

    def abort(self) -> None:
        """Throw the partial blob away."""
        if not self.done:
            self._file.close()
            self.temp_path.unlink(missing_ok=True)
            self.done = True


class BlobStore:
    """Sealed blobs under a data directory."""

    def __init__(self, data_dir: Path, fsync: bool = True) -> None:
        self.blob_dir = data_dir / "blobs"
        self.tmp_dir = data_dir / "tmp"
        self.fsync = fsync
        for d in (self.blob_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path_of(self, name: str) -> Path:
        """Where a blob lives (two levels of fan-out keep directories small)."""
        return self.blob_dir / name[:2] / name[2:4] / name

    def begin(self, dek: bytes, aad: bytes) -> PendingBlob:
        """Start writing a new blob sealed under `dek`."""
        return PendingBlob(self, dek, aad)

    def open(self, name: str, dek: bytes, aad: bytes) -> BlobReader:
        """Open a blob for authenticated reading."""
        return BlobReader(open(self.path_of(name), "rb"), dek, aad)

    def delete(self, name: str) -> None:
        """Remove a blob (its key is shredded separately)."""
        self.path_of(name).unlink(missing_ok=True)

    def names(self) -> Iterable[str]:
        """Every blob on disk."""
        for top in os.scandir(self.blob_dir):
            if not top.is_dir():
                continue
            for mid in os.scandir(top.path):
                if mid.is_dir():
                    for entry in os.scandir(mid.path):
                        yield entry.name

    def reconcile(self, indexed: set[str]) -> ReconcileReport:
        """Remove crash leftovers: temp files and blobs the index never committed."""
        temps = 0
        for entry in os.scandir(self.tmp_dir):
            os.unlink(entry.path)
            temps += 1
        orphans = 0
        on_disk = set()
        for name in list(self.names()):
            on_disk.add(name)
            if name not in indexed:
                self.delete(name)
                orphans += 1
        return ReconcileReport(temps, orphans, sorted(indexed - on_disk))
