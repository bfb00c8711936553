"""Data sources on small files generated in each layout: folder/synth, NIH, CheXpert."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from federated.data import load_site, split_records
from federated.sources import SourceError, open_source
from federated.sources.chexpert import chexpert_value
from federated.sources.nih import nih_labels
from federated.task import FINDINGS

IDX = {f: i for i, f in enumerate(FINDINGS)}


# --- folder of DICOM (the synth layout) --------------------------------------------------------


def test_folder_source_reads_every_labelled_image(synth_sites: list[Path]) -> None:
    records = open_source(str(synth_sites[0]))
    assert len(records) == 24
    with (synth_sites[0] / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r.key for r in records] == [row["sop_instance_uid"] for row in rows]
    for record, row in zip(records, rows, strict=True):
        assert record.labels.tolist() == [float(row[f]) for f in FINDINGS]
    image = records[0].load()
    assert image.ndim == 2 and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_folder_source_by_uid_only_and_blank_labels(
    synth_sites: list[Path], tmp_path: Path
) -> None:
    site = tmp_path / "site"
    shutil.copytree(synth_sites[1], site)
    with (site / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # A hospital's CSV keyed by SOP Instance UID, with one finding left blank (unknown).
    with (site / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sop_instance_uid", *FINDINGS])
        writer.writeheader()
        for row in rows[:5]:
            writer.writerow(
                {
                    "sop_instance_uid": row["sop_instance_uid"],
                    **{f: row[f] for f in FINDINGS},
                    "nodule": "",
                }
            )
    records = open_source(f"folder:{site}")
    assert len(records) == 5
    assert all(math.isnan(r.labels[IDX["nodule"]]) for r in records)


def test_folder_source_errors_are_typed(tmp_path: Path, synth_sites: list[Path]) -> None:
    with pytest.raises(SourceError, match="not found"):
        open_source(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="labels file not found"):
        open_source(str(empty))
    bad = tmp_path / "bad"
    shutil.copytree(synth_sites[0], bad)
    (bad / "labels.csv").write_text("file,cardiomegaly\n../../etc/passwd,1\n")
    with pytest.raises(SourceError, match="outside the folder"):
        open_source(str(bad))
    (bad / "labels.csv").write_text("file,cardiomegaly\nimg-00000.dcm,2\n")
    with pytest.raises(SourceError, match="must be 0, 1 or blank"):
        open_source(str(bad))
    (bad / "img-00000.dcm").write_bytes(b"not dicom")
    (bad / "labels.csv").write_text("file,cardiomegaly\nimg-00000.dcm,1\n")
    with pytest.raises(SourceError, match="cannot read DICOM"):
        open_source(str(bad))[0].load()


def test_splits_are_by_patient_deterministic_and_disjoint(synth_sites: list[Path]) -> None:
    records = open_source(str(synth_sites[0]))
    parts = {
        s: split_records(records, s, seed=3, val_fraction=0.25, test_fraction=0.25)
        for s in ("train", "val", "test")
    }
    keys = {s: {r.key for r in p} for s, p in parts.items()}
    assert sum(len(k) for k in keys.values()) == 24
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"])
    assert len(keys["val"]) == len(keys["test"]) == 6
    again = split_records(records, "val", seed=3, val_fraction=0.25, test_fraction=0.25)
    assert {r.key for r in again} == keys["val"]
    other = split_records(records, "val", seed=4, val_fraction=0.25, test_fraction=0.25)
    assert {r.key for r in other} != keys["val"]
    with pytest.raises(SourceError, match="unknown split"):
        split_records(records, "holdout")


def test_load_site_items(synth_sites: list[Path]) -> None:
    data = load_site(str(synth_sites[2]), 48, "train", seed=0, val_fraction=0.2)
    image, labels = data[0]
    assert image.shape == (1, 48, 48) and labels.shape == (9,)
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1) < 1e-2
    assert data.labels.shape == (len(data), 9)


# --- NIH ChestX-ray14 ---------------------------------------------------------------------------


def _png(path: Path, value: int, sixteen_bit: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((40, 36), value, dtype=np.uint16 if sixteen_bit else np.uint8)
    arr[10:20, 10:20] = 0
    Image.fromarray(arr).save(path)


@pytest.fixture
def nih_root(tmp_path: Path) -> Path:
    root = tmp_path / "nih"
    entries = [
        ("00000001_000.png", "Cardiomegaly", "1", "images_001/images"),
        ("00000001_001.png", "Cardiomegaly|Effusion", "1", "images_001/images"),
        ("00000002_000.png", "No Finding", "2", "images_001/images"),
        ("00000003_000.png", "Mass|Nodule|Infiltration", "3", "images_002/images"),
        ("00000004_000.png", "Pneumothorax|Atelectasis|Consolidation|Fibrosis", "4", "images"),
        ("00000005_000.png", "Hernia", "5", None),  # listed, not on this site's disk
    ]
    root.mkdir()
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age"]
    with (root / "Data_Entry_2017.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*header, "Patient Gender", "View Position"])
        for i, (name, labels, patient, folder) in enumerate(entries):
            writer.writerow([name, labels, "0", patient, "50", "M", "PA"])
            if folder:
                _png(root / folder / name, 100 + 20 * i, sixteen_bit=(i == 3))
    return root


def test_nih_layout_maps_labels_and_masks_missing_findings(nih_root: Path) -> None:
    records = {r.key: r for r in open_source(f"nih:{nih_root}")}
    assert set(records) == {
        "00000001_000.png",
        "00000001_001.png",
        "00000002_000.png",
        "00000003_000.png",
        "00000004_000.png",
    }
    both = records["00000001_001.png"].labels
    assert both[IDX["cardiomegaly"]] == 1 and both[IDX["pleural_effusion"]] == 1
    assert both[IDX["nodule"]] == 0 and both[IDX["pneumothorax"]] == 0
    for record in records.values():
        assert math.isnan(record.labels[IDX["calcification"]])
        assert math.isnan(record.labels[IDX["pneumoperitoneum"]])
    assert records["00000003_000.png"].labels[IDX["nodule"]] == 1  # Mass is not a nodule
    four = records["00000004_000.png"].labels
    for name in ("pneumothorax", "atelectasis", "consolidation", "fibrosis"):
        assert four[IDX[name]] == 1
    assert records["00000001_000.png"].group == records["00000001_001.png"].group == "1"
    image = records["00000003_000.png"].load()  # the 16-bit PNG
    assert image.shape == (40, 36) and image.max() <= 1.0 and image[15, 15] == 0.0
    data = load_site(f"nih:{nih_root}", 32, "all")
    assert data[0][0].shape == (1, 32, 32)


def test_nih_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"Data_Entry_2017\.csv"):
        open_source(f"nih:{tmp_path}")
    with pytest.raises(SourceError, match="unknown NIH finding"):
        nih_labels("Cardiomegaly|Broken Leg")


# --- CheXpert -----------------------------------------------------------------------------------

CHEXPERT_COLUMNS = [
    "Path",
    "Sex",
    "Age",
    "Frontal/Lateral",
    "AP/PA",
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]


@pytest.fixture
def chexpert_root(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    rows = {
        "train.csv": [
            (
                "train/patient00001/study1/view1_frontal.jpg",
                "Frontal",
                {"Cardiomegaly": "1.0", "Atelectasis": "-1.0", "Pleural Effusion": ""},
            ),
            ("train/patient00001/study1/view2_lateral.jpg", "Lateral", {"Cardiomegaly": "1.0"}),
            (
                "train/patient00002/study1/view1_frontal.jpg",
                "Frontal",
                {"Pneumothorax": "1.0", "Consolidation": "0.0", "Lung Lesion": "1.0"},
            ),
        ],
        "valid.csv": [
            (
                "valid/patient64541/study1/view1_frontal.jpg",
                "Frontal",
                {"Pleural Effusion": "1.0", "Atelectasis": "0.0"},
            ),
        ],
    }
    root.mkdir()
    for csv_name, entries in rows.items():
        with (root / csv_name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CHEXPERT_COLUMNS)
            writer.writeheader()
            for rel, view, labels in entries:
                base = {"Path": f"CheXpert-v1.0-small/{rel}", "Frontal/Lateral": view}
                writer.writerow({**base, "Sex": "Female", "Age": "60", "AP/PA": "AP", **labels})
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((30, 30), 128, np.uint8)).save(path, quality=95)
    return root


def test_chexpert_layout_frontal_only_and_uncertainty_policies(chexpert_root: Path) -> None:
    records = open_source(f"chexpert:{chexpert_root}")
    assert len(records) == 3  # the lateral view is left out
    first = records[0].labels
    assert first[IDX["cardiomegaly"]] == 1
    assert math.isnan(first[IDX["atelectasis"]])  # -1 under the default "ignore" policy
    assert first[IDX["pleural_effusion"]] == 0  # blank = not mentioned = negative
    for name in ("calcification", "fibrosis", "nodule", "pneumoperitoneum"):
        assert all(math.isnan(r.labels[IDX[name]]) for r in records)  # not in CheXpert
    assert records[1].labels[IDX["pneumothorax"]] == 1
    assert [r.group for r in records] == ["patient00001", "patient00002", "patient64541"]
    assert abs(float(records[2].load().mean()) - 128 / 255) < 0.02

    ones = load_site(f"chexpert:{chexpert_root}", 32, "all", uncertainty="ones")
    zeros = load_site(f"chexpert:{chexpert_root}", 32, "all", uncertainty="zeros")
    assert ones.labels[0, IDX["atelectasis"]] == 1 and zeros.labels[0, IDX["atelectasis"]] == 0


def test_chexpert_errors(tmp_path: Path, chexpert_root: Path) -> None:
    with pytest.raises(SourceError, match=r"train\.csv"):
        open_source(f"chexpert:{tmp_path}")
    with pytest.raises(SourceError, match="uncertainty policy"):
        load_site(f"chexpert:{chexpert_root}", 32, uncertainty="maybe")
    with pytest.raises(SourceError, match="not -1, 0, 1"):
        chexpert_value("0.5", "ignore")
