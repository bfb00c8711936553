"""The DICOMweb source against a pacsmesh node, with the site's AI-training credential.

An administrator makes the credential as docs/security-auth.md says (`pacsmesh node user add
… --role trainer`, `user token … --out FILE`) and rewrites the labels for it (`pacsmesh node
training labels`); patients link their ledger key and sign grants on the embedded chain. The
source, as the ClientApp runs it, then loads exactly the consented images, de-identified, with
their labels; without the credential, or with one for something else, it is refused clearly.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from federated.sources import SourceError, SourceOptions, open_source
from federated.synth import synthesize
from ledger.consent import Purpose
from tests.conftest import REPO_ROOT
from tests.node.training_helpers import TrainingSite, training_site

CONSENTING = (0, 1, 3)  # these patients grant AI training; 2 grants treatment; 4, 5 never link


def node_cli(site: TrainingSite, *args: str) -> str:
    """`pacsmesh node …` beside the running node, as its administrator runs it."""
    settings = site.node.archive.settings
    cmd = [sys.executable, "-m", "node.cli", "node", *args, "--data-dir", str(settings.data_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NODE_PORT": str(settings.port)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TrainingSite, Path]]:
    """A node holding one synthetic site's chest radiographs, some patients consenting."""
    base = tmp_path_factory.mktemp("fed-node")
    synth = synthesize(base / "synth", sites=1, per_site=6, seed=5, image_size=64)[0]
    with training_site(base / "node") as site:
        images = [pydicom.dcmread(p) for p in sorted(synth.glob("*.dcm"))]
        site.store(images)
        for index, ds in enumerate(images[:4]):
            site.link(ds.PatientID)
            purpose = Purpose.AI_TRAINING if index in CONSENTING else Purpose.TREATMENT
            site.grant(ds.PatientID, purpose)
        node_cli(site, "user", "add", "trainer-a", "--role", "trainer")
        yield site, synth


def _consented(synth: Path) -> dict[str, dict[str, str]]:
    with (synth / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {rows[i]["sop_instance_uid"]: rows[i] for i in CONSENTING}


def test_the_client_loads_exactly_the_consented_images_with_their_labels(
    hospital: tuple[TrainingSite, Path], tmp_path: Path
) -> None:
    site, synth = hospital
    token_file = tmp_path / "training.token"
    node_cli(site, "user", "token", "trainer-a", "--ttl", "1h", "--out", str(token_file))
    assert token_file.stat().st_mode & 0o077 == 0
    labels = tmp_path / "labels-deid.csv"
    node_cli(site, "training", "labels", str(synth / "labels.csv"), "--out", str(labels))

    records = open_source(
        f"dicomweb:{site.dicomweb}",
        SourceOptions(labels=labels, token=token_file.read_text().strip()),
    )
    consented = _consented(synth)
    mapper = site.mapper
    assert sorted(r.key for r in records) == sorted(mapper(uid) for uid in consented)
    reference = {mapper(r.key): r for r in open_source(str(synth))}
    for record in records:
        expected = reference[record.key]
        np.testing.assert_array_equal(record.labels, expected.labels)
        np.testing.assert_allclose(record.load(), expected.load(), atol=1e-3)


def test_the_labels_command_keeps_only_labels_under_the_uids_training_sees(
    hospital: tuple[TrainingSite, Path], tmp_path: Path
) -> None:
    site, synth = hospital
    out = tmp_path / "labels-deid.csv"
    node_cli(site, "training", "labels", str(synth / "labels.csv"), "--out", str(out))
    assert out.stat().st_mode & 0o077 == 0
    text = out.read_text()
    with (synth / "labels.csv").open(newline="") as fh:
        source = list(csv.DictReader(fh))
    with out.open(newline="") as fh:
        written = list(csv.DictReader(fh))
    assert "file" not in written[0] and "patient_id" not in written[0]
    for before, after in zip(source, written, strict=True):
        assert after["sop_instance_uid"] == site.mapper(before["sop_instance_uid"])
        assert after["study_instance_uid"] == site.mapper(before["study_instance_uid"])
        for uid_or_name in (before["patient_id"], before["sop_instance_uid"], before["file"]):
            assert uid_or_name not in text
        assert {k: v for k, v in after.items() if not k.endswith("_uid")} == {
            k: v for k, v in before.items() if k in after and not k.endswith("_uid")
        }


def test_without_the_right_credential_the_source_is_refused_clearly(
    hospital: tuple[TrainingSite, Path], tmp_path: Path
) -> None:
    site, synth = hospital
    url = f"dicomweb:{site.dicomweb}"
    labels = tmp_path / "labels-deid.csv"
    node_cli(site, "training", "labels", str(synth / "labels.csv"), "--out", str(labels))
    with pytest.raises(SourceError, match=r"HTTP 401 \(check the training token\)"):
        open_source(url, SourceOptions(labels=labels))
    # A credential for storing captures cannot read the archive.
    node_cli(site, "user", "add", "capture-1", "--role", "admin")
    device = node_cli(
        site, "user", "token", "capture-1", "--ttl", "10m", "--scope", "system/ImagingStudy.write"
    )
    with pytest.raises(SourceError, match="HTTP 403") as refused:
        open_source(url, SourceOptions(labels=labels, token=device))
    assert device not in str(refused.value)
