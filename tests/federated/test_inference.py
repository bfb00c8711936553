"""Inference for the node: calibrated probabilities and the model hash from a DICOM dataset."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from federated.data import load_site, make_loader
from federated.inference import (
    InferenceError,
    calibrate,
    fit_temperature,
    load_checkpoint,
    predict,
    save_checkpoint,
)
from federated.task import FINDINGS, build_model, get_weights, model_hash, train


def test_temperature_recovers_a_known_scale() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 9))
    labels = (rng.random((4000, 9)) < 1 / (1 + np.exp(-true_logits))).astype(float)
    overconfident = true_logits * 3.0  # a model 3x too sure of itself
    temps = fit_temperature(overconfident, labels)
    assert np.allclose(temps, 3.0, rtol=0.15), temps
    labels[:, 2] = 1.0  # one class only: nothing to calibrate, T stays 1
    labels[:5, 3] = math.nan
    temps = fit_temperature(overconfident, labels)
    assert temps[2] == 1.0 and abs(temps[3] - 3.0) < 0.5


@pytest.fixture(scope="module")
def checkpoint(synth_sites: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("small_cnn", 48)
    train_set = load_site(str(synth_sites[0]), 48, "train", seed=0)
    val_set = load_site(str(synth_sites[0]), 48, "val", seed=0)
    train(model, make_loader(train_set, 8, shuffle=True), epochs=2, lr=3e-3)
    temps = calibrate(model, make_loader(val_set, 16))
    path = tmp_path_factory.mktemp("model") / "global.pt"
    save_checkpoint(path, model, "small_cnn", 48, temps)
    return path


def test_predict_returns_nine_calibrated_probabilities_and_the_hash(
    checkpoint: Path, synth_sites: list[Path]
) -> None:
    ds = pydicom.dcmread(next(synth_sites[1].glob("*.dcm")))
    result = predict(ds, checkpoint)
    loaded = load_checkpoint(checkpoint)
    assert result["model_sha256"] == loaded.sha256 == model_hash(get_weights(loaded.model))
    assert list(result["probabilities"]) == list(FINDINGS)
    assert all(0.0 < p < 1.0 for p in result["probabilities"].values())
    # The stored temperatures are applied: p = sigmoid(logit / T).
    from federated.preprocess import dataset_to_input

    with torch.no_grad():
        logits = loaded.model(torch.from_numpy(dataset_to_input(ds, 48))[None, None])[0]
    expected = torch.sigmoid(logits / torch.from_numpy(loaded.temperature)).numpy()
    np.testing.assert_allclose(list(result["probabilities"].values()), expected, rtol=1e-5)
    assert predict(ds, checkpoint, expected_sha256=loaded.sha256.upper()) == result


def test_predict_on_a_real_chest_cr(checkpoint: Path, shared_data: Path) -> None:
    ds = pydicom.dcmread(shared_data / "chest-cr-philips-j2k.dcm")
    result = predict(ds, checkpoint)
    assert len(result["probabilities"]) == 9


def test_predict_refuses_wrong_model_or_image(
    checkpoint: Path, synth_sites: list[Path], tmp_path: Path
) -> None:
    ds = pydicom.dcmread(next(synth_sites[0].glob("*.dcm")))
    with pytest.raises(InferenceError, match="hash is not the one expected"):
        predict(ds, checkpoint, expected_sha256="0" * 64)
    with pytest.raises(InferenceError, match="not found"):
        predict(ds, tmp_path / "missing.pt")
    mr = pydicom.dcmread(next(synth_sites[0].glob("*.dcm")))
    mr.Modality = "MR"
    with pytest.raises(InferenceError, match="modality MR"):
        predict(mr, checkpoint)
    del ds.PixelData
    with pytest.raises(InferenceError, match="no pixel data"):
        predict(ds, checkpoint)


def test_tampered_or_foreign_checkpoints_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    payload = torch.load(checkpoint, weights_only=True)
    first = next(iter(payload["state_dict"]))
    payload["state_dict"][first] = payload["state_dict"][first] + 0.01
    tampered = tmp_path / "tampered.pt"
    torch.save(payload, tampered)
    with pytest.raises(InferenceError, match="do not match the recorded model hash"):
        load_checkpoint(tampered)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InferenceError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(InferenceError, match="9 positive"):
        save_checkpoint(
            tmp_path / "x.pt", build_model("small_cnn", 32), "small_cnn", 32, np.zeros(9)
        )
