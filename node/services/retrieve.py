"""Reading stored instances back: whole objects as streams, headers as datasets."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pydicom
from pydicom.dataset import Dataset

from node.errors import NotFoundError
from node.services.archive import Archive
from node.services.store import header_binding
from node.storage import records
from node.storage.crypto import BlobReader, blob_aad, unseal
from node.storage.records import InstanceRow


def resolve(
    archive: Archive, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[InstanceRow]:
    """The instances a WADO URL addresses; 404 when there are none."""
    with archive.engine.connect() as conn:
        rows = records.list_instances(conn, study_uid, series_uid, sop_uid)
    if not rows:
        what = "instance" if sop_uid else "series" if series_uid else "study"
        raise NotFoundError(f"{what} not found")
    return rows


def _dek(archive: Archive, study_uid: str) -> bytes:
    # Every retrieve needs the key: skip the pool checkout when it is already in memory.
    dek = archive.keys.cached(study_uid)
    if dek is not None:
        return dek
    with archive.engine.connect() as conn:
        dek = archive.keys.get(conn, study_uid)
    if dek is None:
        raise NotFoundError("study not found")
    return dek


def open_blob(archive: Archive, row: InstanceRow) -> BlobReader:
    """Authenticated random-access reader over one instance's Part-10 bytes."""
    dek = _dek(archive, row.study_uid)
    try:
        return archive.blobs.open(row.blob_name, dek, blob_aad(row.sop_instance_uid))
    except FileNotFoundError as exc:
        raise NotFoundError("instance data is missing from the store") from exc


def iter_instance(archive: Archive, row: InstanceRow) -> Iterator[bytes]:
    """The instance's bytes as authenticated chunks (bounded memory)."""
    reader = open_blob(archive, row)
    try:
        yield from reader.iter_range()
    finally:
        reader.close()


def read_instance(archive: Archive, row: InstanceRow) -> bytes:
    """The whole instance in memory (for decoding: frames, rendering, transcoding)."""
    reader = open_blob(archive, row)
    try:
        return reader.read_all()
    finally:
        reader.close()


def load_dataset(archive: Archive, row: InstanceRow) -> Dataset:
    """The full dataset, pixel data included."""
    return pydicom.dcmread(io.BytesIO(read_instance(archive, row)))


def load_headers(archive: Archive, rows: list[InstanceRow]) -> dict[str, Dataset]:
    """Header datasets (everything before Pixel Data) per SOP Instance UID."""
    with archive.engine.connect() as conn:
        sealed = records.metadata_of(conn, [r.sop_instance_uid for r in rows])
    by_uid = {r.sop_instance_uid: r for r in rows}
    out: dict[str, Dataset] = {}
    for sop_uid, (study_uid, blob) in sealed.items():
        header = unseal(_dek(archive, study_uid), blob, header_binding(sop_uid))
        if header:
            out[sop_uid] = pydicom.dcmread(io.BytesIO(header), stop_before_pixels=True)
        else:  # large pixel-less objects keep their header only in the blob
            reader = open_blob(archive, by_uid[sop_uid]) if sop_uid in by_uid else None
            if reader is None:
                continue
            with reader.as_file() as f:
                out[sop_uid] = pydicom.dcmread(f, stop_before_pixels=True, defer_size=1024)
    return out
