"""Instance headers as DICOM JSON (PS3.18 Annex F), with BulkDataURIs for large values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset

from node.services import retrieve
from node.services.archive import Archive
from node.services.dicom_json import to_dicom_json
from node.storage import records
from node.storage.records import InstanceRow


def _pixel_vr(ds: Dataset, row: InstanceRow) -> str:
    """PS3.5 §8.2: encapsulated or 8-bit pixel data is OB, wider native data OW."""
    native = row.transfer_syntax_uid in (
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
    )
    return "OW" if native and int(ds.get("BitsAllocated") or 8) > 8 else "OB"


def instance_metadata(
    archive: Archive, rows: list[InstanceRow], root: str
) -> dict[str, dict[str, Any]]:
    """DICOM JSON per SOP Instance UID, in the order of `rows`."""
    headers = retrieve.load_headers(archive, rows)
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        ds = headers.get(row.sop_instance_uid)
        if ds is None:
            continue
        base = (
            f"{root}/studies/{row.study_uid}/series/{row.series_uid}"
            f"/instances/{row.sop_instance_uid}/bulkdata/"
        )

        def uri(path: str, base: str = base) -> str:
            return base + path

        doc = to_dicom_json(ds, bulkdata_uri=uri)
        if row.number_of_frames is not None or "00280010" in doc:
            # The sealed header stops before Pixel Data; name it as a bulk data reference.
            doc["7FE00010"] = {"vr": _pixel_vr(ds, row), "BulkDataURI": f"{base}7FE00010"}
        out[row.sop_instance_uid] = doc
    return out


def metadata_loader(archive: Archive, root: str) -> Callable[[list[str]], dict[str, Any]]:
    """A `load_metadata(sop_uids) -> {sop_uid: DICOM JSON}` callable for QIDO includefield."""

    def load(sop_uids: list[str]) -> dict[str, Any]:
        with archive.engine.connect() as conn:
            rows = records.find_instances(conn, sop_uids)
        return instance_metadata(archive, rows, root)

    return load
