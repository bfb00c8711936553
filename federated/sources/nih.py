"""NIH ChestX-ray14 (Wang et al., 2017): PNG images and ``Data_Entry_2017.csv``.

Layout as distributed: ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``) at the root,
PNGs anywhere below it (``images/`` or ``images_001/images/`` ...), found by file name.
"Finding Labels" is pipe-separated ("Cardiomegaly|Effusion") or "No Finding".

Label mapping onto our nine findings (``NIH_TO_FINDING``): Atelectasis, Cardiomegaly,
Consolidation, Effusion (-> pleural_effusion), Fibrosis, Nodule and Pneumothorax map one to one.
NIH has no calcification or pneumoperitoneum label: those two are *unknown* (NaN, masked out of
loss and AUROC), never negative. NIH labels that are not ours (Infiltration, Mass, Pneumonia,
Edema, Emphysema, Pleural_Thickening, Hernia) are dropped; "Mass" is not folded into nodule
because the two differ by definition (> 3 cm vs <= 3 cm).
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from federated.preprocess import image_array
from federated.sources import Record, SourceError
from federated.task import FINDINGS

NIH_TO_FINDING: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Effusion": "pleural_effusion",
    "Fibrosis": "fibrosis",
    "Nodule": "nodule",
    "Pneumothorax": "pneumothorax",
}
NIH_LABELS = frozenset(
    {*NIH_TO_FINDING, "Infiltration", "Mass", "Pneumonia", "Edema", "Emphysema",
     "Pleural_Thickening", "Hernia", "No Finding"}
)  # fmt: skip
UNKNOWN_IN_NIH = tuple(f for f in FINDINGS if f not in NIH_TO_FINDING.values())
CSV_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")


def load_image_file(path: Path) -> np.ndarray:
    """Read a PNG/JPG to a presentation-space array; a typed error if it is not an image."""
    try:
        with Image.open(path) as img:
            img.load()
            return image_array(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise SourceError(f"cannot read image {path.name}: {exc}") from exc


def nih_labels(finding_labels: str) -> np.ndarray:
    """Our nine labels from an NIH "Finding Labels" cell."""
    names = {n.strip() for n in finding_labels.split("|") if n.strip()}
    unexpected = names - NIH_LABELS
    if unexpected:
        raise SourceError(f"unknown NIH finding label(s): {', '.join(sorted(unexpected))}")
    present = {NIH_TO_FINDING[n] for n in names if n in NIH_TO_FINDING}
    return np.array(
        [math.nan if f in UNKNOWN_IN_NIH else float(f in present) for f in FINDINGS],
        dtype=np.float32,
    )


def nih_records(root: Path) -> list[Record]:
    """Records for every NIH image listed in the data-entry CSV and present on disk."""
    if not root.is_dir():
        raise SourceError(f"NIH ChestX-ray14 folder not found: {root}")
    csv_path = next((root / n for n in CSV_NAMES if (root / n).is_file()), None)
    if csv_path is None:
        raise SourceError(f"no {CSV_NAMES[0]} in {root}")
    images = {p.name: p for p in root.rglob("*.png")}
    records = []
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"Image Index", "Finding Labels"} - set(reader.fieldnames or [])
        if missing:
            raise SourceError(f"{csv_path.name} lacks column(s): {', '.join(sorted(missing))}")
        for row in reader:
            name = row["Image Index"].strip()
            path = images.get(name)
            if path is None:
                continue  # the CSV lists all 112,120 images; a site may hold a subset
            records.append(
                Record(
                    key=name,
                    group=(row.get("Patient ID") or "").strip() or name,
                    labels=nih_labels(row["Finding Labels"]),
                    load=functools.partial(load_image_file, path),
                )
            )
    if not records:
        raise SourceError(f"none of the images listed in {csv_path.name} is under {root}")
    return records
