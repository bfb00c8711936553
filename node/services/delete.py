"""Deleting studies, series and instances; deleting a study's last instance shreds its key."""

from __future__ import annotations

from dataclasses import dataclass

from node.services.archive import Archive
from node.services.retrieve import resolve
from node.storage import records
from node.storage.records import InstanceRow


@dataclass(frozen=True)
class DeleteResult:
    """What a delete removed."""

    instances: int
    studies_shredded: list[str]


def delete_rows(archive: Archive, rows: list[InstanceRow]) -> DeleteResult:
    """Remove instances: index first (one transaction, keys of emptied studies included), then
    their blobs. A crash in between leaves unindexed blobs that start-up removes; a shredded
    study's blobs are unreadable from the moment the transaction commits."""
    with archive.engine.begin() as conn:
        gone = records.delete_instances(conn, rows)
    for study_uid in gone:
        archive.keys.forget(study_uid)
    for row in rows:
        archive.blobs.delete(row.blob_name)
    return DeleteResult(len(rows), gone)


def delete_instances(
    archive: Archive, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> DeleteResult:
    """Delete what a DICOMweb URL addresses (404 when nothing matches)."""
    return delete_rows(archive, resolve(archive, study_uid, series_uid, sop_uid))


def delete_by_sop_uids(archive: Archive, sop_uids: list[str]) -> DeleteResult:
    """Delete instances by SOP Instance UID (rolling back a refused request)."""
    with archive.engine.connect() as conn:
        rows = records.find_instances(conn, sop_uids)
    return delete_rows(archive, rows)
