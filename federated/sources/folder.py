"""A folder of DICOM files with a ``labels.csv`` beside them (the layout ``synthesize`` writes).

labels.csv columns: ``file`` (path relative to the folder) and/or ``sop_instance_uid``, an
optional ``patient_id`` (keeps a patient's images in one split), and one column per finding
with 1, 0 or blank (unknown). Rows whose image is missing are an error; images without a row
are ignored (unlabelled).
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from federated.preprocess import ImageDecodeError, presentation_array
from federated.sources import Record, SourceError, labels_from_row

LABELS_CSV = "labels.csv"


def read_labels_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a labels CSV as dicts; a typed error when it is missing or has no key column."""
    if not path.is_file():
        raise SourceError(f"labels file not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or [])
        if not fields & {"file", "sop_instance_uid"}:
            raise SourceError(f"{path.name} needs a 'file' or 'sop_instance_uid' column")
        return list(reader)


def load_dicom_file(path: Path) -> np.ndarray:
    """Read and decode one DICOM file to a presentation-space array."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise SourceError(f"cannot read DICOM file {path.name}: {exc}") from exc
    try:
        return presentation_array(ds)
    except ImageDecodeError as exc:
        raise SourceError(f"{path.name}: {exc}") from exc


def _index_by_uid(folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name == LABELS_CSV:
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except (InvalidDicomError, OSError):
            continue
        uid = ds.get("SOPInstanceUID")
        if uid:
            index[str(uid)] = path
    return index


def folder_records(folder: Path) -> list[Record]:
    """Records for every labelled DICOM image in ``folder``."""
    if not folder.is_dir():
        raise SourceError(f"data folder not found: {folder}")
    rows = read_labels_csv(folder / LABELS_CSV)
    uid_index: dict[str, Path] | None = None
    records = []
    for row in rows:
        rel = (row.get("file") or "").strip()
        uid = (row.get("sop_instance_uid") or "").strip()
        if rel:
            path = folder / rel
            if not path.resolve().is_relative_to(folder.resolve()):
                raise SourceError(f"labels.csv names a file outside the folder: {rel!r}")
        else:
            if uid_index is None:
                uid_index = _index_by_uid(folder)
            if uid not in uid_index:
                raise SourceError(f"no DICOM file in {folder.name} has SOP Instance UID {uid}")
            path = uid_index[uid]
        if not path.is_file():
            raise SourceError(f"labels.csv names a missing file: {rel or uid}")
        group = (row.get("patient_id") or "").strip() or uid or rel
        records.append(
            Record(
                key=uid or rel,
                group=group,
                labels=labels_from_row(row),
                load=functools.partial(load_dicom_file, path),
            )
        )
    return records
