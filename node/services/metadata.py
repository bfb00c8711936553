"""Instance headers as DICOM JSON (PS3.18 Annex F), with BulkDataURIs for large values."""

from __future__ import annotations

from typing import Any

from pydicom.dataelem import DataElement

from node.services import retrieve
from node.services.archive import Archive
from node.storage.records import InstanceRow

BULK_THRESHOLD = 1024


def instance_metadata(archive: Archive, rows: list[InstanceRow], root: str) -> list[dict[str, Any]]:
    """One DICOM JSON dataset per instance, in the order of `rows`."""
    headers = retrieve.load_headers(archive, rows)
    out = []
    for row in rows:
        ds = headers.get(row.sop_instance_uid)
        if ds is None:
            continue
        base = (
            f"{root}/studies/{row.study_uid}/series/{row.series_uid}"
            f"/instances/{row.sop_instance_uid}/bulkdata/"
        )

        def bulk(element: DataElement, base: str = base) -> str:
            return f"{base}{element.tag:08X}"

        doc = ds.to_json_dict(
            bulk_data_threshold=BULK_THRESHOLD,
            bulk_data_element_handler=bulk,
            suppress_invalid_tags=True,
        )
        if row.number_of_frames is not None or "00280010" in doc:
            doc["7FE00010"] = {"vr": "OB", "BulkDataURI": f"{base}7FE00010"}
        out.append(doc)
    return out


def metadata_loader(archive: Archive, root: str) -> Any:
    """A `load_metadata(sop_uids) -> {sop_uid: DICOM JSON}` callable for QIDO includefield."""

    def load(sop_uids: list[str]) -> dict[str, dict[str, Any]]:
        from node.storage import records

        with archive.engine.connect() as conn:
            rows = [r for u in sop_uids if (r := records.find_instance(conn, u)) is not None]
        docs = instance_metadata(archive, rows, root)
        return {row.sop_instance_uid: doc for row, doc in zip(rows, docs, strict=False)}

    return load
