"""The archive a node serves: index, blob store and keys, opened once at start-up."""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy import Engine

from node.errors import StorageError
from node.settings import NodeSettings
from node.storage import records
from node.storage.blobs import BlobStore, ReconcileReport
from node.storage.db import open_index
from node.storage.keys import StudyKeys, open_keyring

log = logging.getLogger("pacsmesh.archive")


@dataclass
class Archive:
    """Everything the services need to read and write stored instances."""

    settings: NodeSettings
    engine: Engine
    blobs: BlobStore
    keys: StudyKeys
    reconcile_report: ReconcileReport | None = None
    _lock_file: IO[str] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: NodeSettings, *, exclusive: bool = True) -> Archive:
        """Initialise or open the data directory, check the KEK, clean crash leftovers."""
        data_dir = settings.data_dir
        os.umask(0o077)  # everything the node writes (index, keys, blobs) is private to it
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = _lock(data_dir) if exclusive else None
        engine = open_index(settings.index_url)
        ring = open_keyring(engine, data_dir, settings.kek_source)
        archive = cls(settings, engine, BlobStore(data_dir, settings.fsync), StudyKeys(ring))
        archive._lock_file = lock
        if exclusive:
            archive.reconcile_report = archive.reconcile()
        return archive

    def reconcile(self) -> ReconcileReport:
        """Remove what a crash left half-done: temp files, unindexed blobs, unused keys."""
        with self.engine.begin() as conn:
            indexed = records.all_blob_names(conn)
            records.drop_keys_without_studies(conn)
        report = self.blobs.reconcile(indexed)
        if report.temp_files_removed or report.orphan_blobs_removed:
            log.warning(
                "start-up reconciliation removed %d temp files and %d unindexed blobs",
                report.temp_files_removed,
                report.orphan_blobs_removed,
            )
        if report.missing_blobs:
            log.error("%d indexed instances have no blob on disk", len(report.missing_blobs))
        return report

    def close(self) -> None:
        """Release the database and the data-directory lock."""
        self.engine.dispose()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _lock(data_dir: Path) -> IO[str]:
    """One process owns a data directory at a time (the server, or an admin command)."""
    f = open(data_dir / "node.lock", "a+")  # noqa: SIM115
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        f.close()
        raise StorageError(
            f"data directory {data_dir} is in use by another pacsmesh process; stop it first"
        ) from exc
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
