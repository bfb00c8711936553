"""CheXpert (Irvin et al., 2019): JPG images and ``train.csv`` / ``valid.csv``.

Layout as distributed: ``CheXpert-v1.0[-small]/{train,valid}.csv`` and the JPGs under
``{train,valid}/patientNNNNN/studyN/viewN_frontal.jpg``; the CSV ``Path`` column starts with the
dataset folder name. Only frontal views are used (the task is frontal chest radiographs).

Label mapping: Atelectasis, Cardiomegaly, Consolidation, Pleural Effusion and Pneumothorax map
one to one. CheXpert has no calcification, fibrosis, nodule or pneumoperitoneum label ("Lung
Lesion" lumps nodules with masses): those four are unknown (NaN, masked).

Cell values: 1 positive, 0 negative, blank = not mentioned in the report, taken as negative
(the labeller's convention), -1 = uncertain, handled by the *uncertainty policy*:
``ignore`` (default; unknown, masked — the U-Ignore policy of the CheXpert paper), ``ones``
(U-Ones) or ``zeros`` (U-Zeros).
"""

from __future__ import annotations

import csv
import functools
import math
import re
from pathlib import Path

import numpy as np

from federated.sources import Record, SourceError
from federated.sources.nih import load_image_file
from federated.task import FINDINGS

CHEXPERT_TO_FINDING: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Pleural Effusion": "pleural_effusion",
    "Pneumothorax": "pneumothorax",
}
UNCERTAINTY_POLICIES = {"ignore": math.nan, "ones": 1.0, "zeros": 0.0}
_PATIENT = re.compile(r"patient\d+")


def chexpert_value(cell: str, policy: str) -> float:
    """One CheXpert cell under an uncertainty policy."""
    cell = cell.strip()
    if cell == "":
        return 0.0
    try:
        number = float(cell)
    except ValueError:
        raise SourceError(f"CheXpert label {cell!r} is not -1, 0, 1 or blank") from None
    if number == -1.0:
        return UNCERTAINTY_POLICIES[policy]
    if number not in (0.0, 1.0):
        raise SourceError(f"CheXpert label {cell!r} is not -1, 0, 1 or blank")
    return number


def _resolve(root: Path, csv_path: str) -> Path:
    rel = Path(csv_path)
    # "CheXpert-v1.0-small/train/..." is relative to the folder holding the dataset folder.
    for candidate in (root.parent / rel, root / rel, root / Path(*rel.parts[1:])):
        if candidate.is_file():
            return candidate
    return root / Path(*rel.parts[1:])


def chexpert_records(root: Path, uncertainty: str = "ignore") -> list[Record]:
    """Records for every frontal image listed in train.csv / valid.csv and present on disk."""
    if uncertainty not in UNCERTAINTY_POLICIES:
        raise SourceError(
            f"unknown uncertainty policy {uncertainty!r}; "
            f"choose one of {', '.join(UNCERTAINTY_POLICIES)}"
        )
    if not root.is_dir():
        raise SourceError(f"CheXpert folder not found: {root}")
    csvs = [root / n for n in ("train.csv", "valid.csv") if (root / n).is_file()]
    if not csvs:
        raise SourceError(f"no train.csv or valid.csv in {root}")
    records = []
    for csv_path in csvs:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"Path", *CHEXPERT_TO_FINDING} - set(reader.fieldnames or [])
            if missing:
                raise SourceError(f"{csv_path.name} lacks column(s): {', '.join(sorted(missing))}")
            for row in reader:
                if (row.get("Frontal/Lateral") or "Frontal").strip() != "Frontal":
                    continue
                path = _resolve(root, row["Path"])
                if not path.is_file():
                    continue
                by_finding = {
                    CHEXPERT_TO_FINDING[c]: chexpert_value(row[c], uncertainty)
                    for c in CHEXPERT_TO_FINDING
                }
                labels = np.array([by_finding.get(f, math.nan) for f in FINDINGS], np.float32)
                patient = _PATIENT.search(row["Path"])
                records.append(
                    Record(
                        key=row["Path"],
                        group=patient.group(0) if patient else row["Path"],
                        labels=labels,
                        load=functools.partial(load_image_file, path),
                    )
                )
    if not records:
        raise SourceError(f"none of the frontal images listed in the CSVs is under {root}")
    return records
