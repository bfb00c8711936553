"""What a training credential receives, de-identified on the way out (PS3.15 Annex E).

Instances, their metadata and QIDO-RS results all pass through `node.services.deid` under the
node's training UID key and its option settings, one instance at a time and in memory only
(no plaintext on disk). Beyond the Basic Profile, every URL-valued attribute (VR UR) that the
table would keep, such as Retrieve URL, is removed: a URL can carry the original UIDs or a
host name. A QIDO result's
Retrieve URL is rebuilt from the de-identified UIDs, so QIDO -> WADO works with what the
credential sees.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, Final

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from node.errors import NotFoundError
from node.services import retrieve
from node.services.deid import deidentify, deidentify_attributes
from node.services.deid_table import annex_e_table
from node.services.dicom_json import to_dicom_json
from node.services.query import QueryLevel
from node.services.query_keys import RETRIEVE_URL
from node.services.training import TrainingView, refusal
from node.services.transcode import transcode
from node.storage import records
from node.storage.records import InstanceRow

DicomJson = dict[str, Any]
_KEY_TAGS: Final = ("0020000D", "0020000E", "00080018")
_SEGMENTS: Final = ("studies", "series", "instances")
_LEVEL_DEPTH: Final = {QueryLevel.STUDY: 1, QueryLevel.SERIES: 2, QueryLevel.INSTANCE: 3}


def _drop_urls(ds: Dataset) -> None:
    """Remove every UR attribute the profile keeps, at any depth: a URL such as Retrieve URL
    can name the original UIDs or a host (those the table replaces already hold a dummy)."""
    table = annex_e_table()
    for elem in list(ds):
        if elem.VR == "UR" and table.action(int(elem.tag)) is None:
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value or []:
                _drop_urls(item)


def _drop_group_lengths(ds: Dataset) -> None:
    # Group lengths are retired (PS3.5 §7.2) and stale once values change.
    for tag in [t for t in ds.keys() if t.element == 0 and t.group != 2]:  # noqa: SIM118
        del ds[tag]


def export_instance(view: TrainingView, row: InstanceRow, transfer_syntax: str) -> bytes:
    """One instance, de-identified, as Part-10 bytes in `transfer_syntax` (in memory)."""
    ds = retrieve.load_dataset(view.archive, row)
    if refusal(ds) is not None:
        # Checked on the sealed header before the response started; the full object agrees
        # unless it changed meanwhile, and then it is not sent.
        raise NotFoundError("instance not found")
    deidentify(ds, view.secret, view.options)
    _drop_urls(ds)
    _drop_group_lengths(ds)
    if transfer_syntax != row.transfer_syntax_uid:
        return transcode(ds, transfer_syntax)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def export_metadata(view: TrainingView, rows: list[InstanceRow]) -> list[DicomJson]:
    """These instances' headers as DICOM JSON, de-identified, every value inline.

    No Pixel Data reference: the credential receives pixels with the instance (WADO-RS
    retrieve), not through bulk data URIs, which it may not call. A header that refuses
    training (changed since the index recorded it) is left out, as `export_instance` would.
    """
    headers = retrieve.load_headers(view.archive, rows)
    out: list[DicomJson] = []
    for row in rows:
        header = headers.get(row.sop_instance_uid)
        if header is None or refusal(header) is not None:
            continue
        deidentify(header, view.secret, view.options)
        _drop_urls(header)
        out.append(to_dicom_json(header))
    return out


def raw_metadata_loader(view: TrainingView) -> Callable[[list[str]], dict[str, DicomJson]]:
    """QIDO includefield values from the stored headers, inline (no bulk data URIs), not yet
    de-identified: `export_results` de-identifies the whole result once."""

    def load(sop_uids: list[str]) -> dict[str, DicomJson]:
        with view.archive.engine.connect() as conn:
            rows = records.find_instances(conn, sop_uids)
        headers = retrieve.load_headers(view.archive, rows)
        return {uid: to_dicom_json(ds) for uid, ds in headers.items()}

    return load


def export_results(
    view: TrainingView, results: list[DicomJson], level: QueryLevel, base_url: str
) -> tuple[list[DicomJson], list[str]]:
    """QIDO-RS results de-identified, and the stored studies they came from (for the audit)."""
    out: list[DicomJson] = []
    studies: list[str] = []
    depth = _LEVEL_DEPTH[level]
    for result in results:
        keys = [_first(result, tag) for tag in _KEY_TAGS[:depth]]
        if keys[0] is not None:
            studies.append(keys[0])
        ds = Dataset.from_json(result)
        deidentify_attributes(ds, view.secret, view.options)
        _drop_urls(ds)
        cleaned = to_dicom_json(ds)
        # Only what the result carried (de-identified); nothing de-identification added.
        doc = {tag: cleaned[tag] for tag in result if tag in cleaned}
        if RETRIEVE_URL in result and all(k is not None for k in keys):
            path = "/".join(
                f"{seg}/{view.deid_uid(uid)}"
                for seg, uid in zip(_SEGMENTS, keys, strict=False)
                if uid is not None
            )
            doc[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base_url.rstrip('/')}/{path}"]}
        out.append(dict(sorted(doc.items())))
    return out, list(dict.fromkeys(studies))


def _first(result: DicomJson, tag: str) -> str | None:
    values = (result.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None
