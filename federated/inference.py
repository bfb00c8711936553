"""Inference for the node: a DICOM dataset in, nine calibrated probabilities and the model hash out.

A checkpoint holds the weights, the model name and input size, and one temperature per
finding fitted on validation data (temperature scaling, Guo et al., 2017, applied per output
of a multi-label model): p = sigmoid(logit / T). The hash reported is ``task.model_hash`` of the
weights, the same digest the federation records per round, so the node can check it against
the ledger before running a model.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from torch import nn

from federated.preprocess import ImageDecodeError, dataset_to_input
from federated.task import FINDINGS, build_model, get_weights, model_hash, predict_logits

CHECKPOINT_FORMAT = "pacsmesh-cxr-checkpoint-v1"
_LOG_T_GRID = np.linspace(math.log(0.05), math.log(20.0), 481)


class InferenceError(ValueError):
    """The model or the image cannot be used; the message says why (no patient data)."""


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to run."""

    model: nn.Module
    model_name: str
    image_size: int
    temperature: np.ndarray  # (9,)
    sha256: str


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-finding temperature minimising the masked BCE of sigmoid(logit / T) on validation data.

    A 1-D search over log T in [0.05, 20] per finding: the loss is smooth and cheap, and a
    grid cannot diverge the way a gradient step can on a finding with few positives. A finding
    without both classes among its known labels keeps T = 1 (nothing to calibrate against).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if logits.shape != labels.shape or logits.ndim != 2 or logits.shape[1] != len(FINDINGS):
        raise InferenceError(f"expected logits and labels of shape (N, 9), got {logits.shape}")
    temps = np.ones(len(FINDINGS), dtype=np.float32)
    grid = np.exp(_LOG_T_GRID)[:, None]
    for j in range(len(FINDINGS)):
        known = ~np.isnan(labels[:, j])
        y = labels[known, j]
        if y.size == 0 or y.min() == y.max():
            continue
        z = logits[known, j][None, :] / grid  # (G, n)
        # BCE with logits, numerically stable: max(z, 0) - z*y + log(1 + exp(-|z|)).
        nll = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean(axis=1)
        temps[j] = float(grid[int(np.argmin(nll)), 0])
    return temps


def calibrate(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu"
) -> np.ndarray:
    """Fit the per-finding temperatures of a trained model on a validation loader."""
    logits, labels = predict_logits(model, loader, device)
    if len(logits) == 0:
        raise InferenceError("cannot calibrate on an empty validation set")
    return fit_temperature(logits, labels)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    model_name: str,
    image_size: int,
    temperature: np.ndarray | None = None,
) -> str:
    """Write a checkpoint (weights, model name, size, temperatures); return the model hash."""
    temps = np.ones(len(FINDINGS), np.float32) if temperature is None else np.asarray(temperature)
    if temps.shape != (len(FINDINGS),) or not np.all(temps > 0):
        raise InferenceError("temperature must be 9 positive numbers")
    digest = model_hash(get_weights(model))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": model_name,
        "image_size": int(image_size),
        "findings": list(FINDINGS),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "temperature": torch.from_numpy(temps.astype(np.float32)),
        "model_sha256": digest,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return digest


def load_checkpoint(path: Path, device: str = "cpu") -> LoadedModel:
    """Load and verify a checkpoint: format, findings and the weights' hash must all match."""
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"model checkpoint not found: {path.name}")
    try:
        # weights_only: a checkpoint from another site must not be able to run code on load.
        payload: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise InferenceError(f"{path.name} is not a readable checkpoint") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InferenceError(f"{path.name} is not a {CHECKPOINT_FORMAT} checkpoint")
    if list(payload["findings"]) != list(FINDINGS):
        raise InferenceError(f"{path.name} predicts different findings")
    model = build_model(str(payload["model_name"]), int(payload["image_size"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise InferenceError(f"{path.name}: weights do not fit {payload['model_name']}") from exc
    digest = model_hash(get_weights(model))
    if digest != payload["model_sha256"]:
        raise InferenceError(f"{path.name}: weights do not match the recorded model hash")
    model.to(device).eval()
    return LoadedModel(
        model=model,
        model_name=str(payload["model_name"]),
        image_size=int(payload["image_size"]),
        temperature=payload["temperature"].cpu().numpy().astype(np.float32),
        sha256=digest,
    )


@functools.lru_cache(maxsize=4)
def _cached_load(path: str, mtime_ns: int, size: int, device: str) -> LoadedModel:
    return load_checkpoint(Path(path), device)


def predict(
    ds: pydicom.Dataset,
    model_path: Path | str,
    *,
    expected_sha256: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Calibrated probability per finding for one chest radiograph, with the model's SHA-256.

    ``expected_sha256`` (the hash the ledger knows) makes a different model an error rather
    than a silent substitution. Returns {"model_sha256", "model_name", "probabilities"}.
    """
    path = Path(model_path)
    try:
        stat = path.stat()
    except OSError:
        raise InferenceError(f"model checkpoint not found: {path.name}") from None
    loaded = _cached_load(str(path.resolve()), stat.st_mtime_ns, stat.st_size, device)
    if expected_sha256 is not None and loaded.sha256 != expected_sha256.lower():
        raise InferenceError("the model's hash is not the one expected")
    modality = str(ds.get("Modality", ""))
    if modality and modality not in ("CR", "DX"):
        raise InferenceError(f"expected a CR or DX radiograph, got modality {modality}")
    try:
        image = dataset_to_input(ds, loaded.image_size)
    except ImageDecodeError as exc:
        raise InferenceError(str(exc)) from exc
    with torch.no_grad():
        logits = loaded.model(torch.from_numpy(image)[None, None].to(device))[0].cpu().numpy()
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64) / loaded.temperature))
    return {
        "model_sha256": loaded.sha256,
        "model_name": loaded.model_name,
        "probabilities": {f: float(p) for f, p in zip(FINDINGS, probs, strict=True)},
    }
