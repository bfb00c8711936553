"""Burned-in declarations of instances stored before the index recorded them.

The store path records whether each instance declares burned-in annotation
(`store.index_attributes`), and the training view filters on it in SQL. An instance stored
before migration 0007 has nothing recorded, and the migration cannot read its sealed header (it
runs before the node opens its key ring). So the training view asks here, for the studies it is
about to serve, and each such header is read once, ever: an archive upgrades at once, and pays
one header read per image of consented studies the first time a training request reaches them.
An instance whose header cannot be read stays unrecorded, and is never served.
"""

from __future__ import annotations

import logging
from typing import Final

from node.services import retrieve
from node.services.archive import Archive
from node.services.store import declares_burned_in
from node.storage import records

log = logging.getLogger("pacsmesh.training")

_BATCH: Final = 500  # headers held in memory at a time


def record_unrecorded(archive: Archive, study_uids: list[str]) -> int:
    """Record the declarations of these studies' unrecorded images; how many were read."""
    with archive.engine.connect() as conn:
        rows = records.unrecorded_burned_in(conn, study_uids)
    for i in range(0, len(rows), _BATCH):
        headers = retrieve.load_headers(archive, rows[i : i + _BATCH])
        with archive.engine.begin() as conn:
            records.record_burned_in(
                conn, {uid: declares_burned_in(header) for uid, header in headers.items()}
            )
    if rows:
        log.info("recorded the burned-in declaration of %d older instances", len(rows))
    return len(rows)
