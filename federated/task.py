"""The learning task in plain PyTorch: model, train, evaluate, weights and their hash.

No Flower import here: the ClientApp, the centralized baseline and the node's inference all
share these functions, so they must not depend on the federation framework.

Labels are float vectors of length 9 in the order of ``FINDINGS``: 1 positive, 0 negative and
NaN *unknown* (a public dataset that does not annotate a finding, or an uncertain CheXpert
label under the "ignore" policy). Unknown entries are masked out of the loss and the metrics.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from federated.models import build_model

__all__ = [
    "FINDINGS",
    "build_model",
    "evaluate",
    "get_weights",
    "masked_bce",
    "model_hash",
    "parameter_names",
    "set_weights",
    "train",
]

FINDINGS: tuple[str, ...] = (
    "calcification",
    "cardiomegaly",
    "consolidation",
    "fibrosis",
    "nodule",
    "pleural_effusion",
    "pneumoperitoneum",
    "pneumothorax",
    "atelectasis",
)

Batch = tuple[torch.Tensor, torch.Tensor]


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over the known (non-NaN) labels only."""
    known = ~torch.isnan(labels)
    if not bool(known.any()):
        # Keeps the graph connected so backward() works on an all-unknown batch.
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits[known], labels[known])


def train(
    model: nn.Module,
    loader: Iterable[Batch],
    epochs: int,
    lr: float,
    device: str = "cpu",
    proximal_mu: float = 0.0,
    global_params: list[torch.Tensor] | None = None,
) -> float:
    """Train in place with Adam; return the mean training loss over all batches.

    With ``proximal_mu > 0`` the FedProx term mu/2 * ||w - w_global||^2 (Li et al., 2020, eq. 2)
    is added, against ``global_params`` (the trainable parameters as received this round, in
    ``model.parameters()`` order; taken from the model itself when omitted).
    """
    model.to(device)
    model.train()
    anchors: list[torch.Tensor] = []
    if proximal_mu > 0.0:
        source = global_params if global_params is not None else list(model.parameters())
        anchors = [p.detach().clone().to(device) for p in source]
        params = list(model.parameters())
        if len(anchors) != len(params):
            raise ValueError(
                f"global_params has {len(anchors)} tensors, the model has {len(params)}"
            )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    total, batches = 0.0, 0
    for _ in range(epochs):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = masked_bce(model(images), labels)
            if anchors:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors, strict=True)
                )
                loss = loss + (proximal_mu / 2.0) * prox
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.detach())
            batches += 1
    return total / batches if batches else 0.0


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: Iterable[Batch], device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Run the model over a loader; return logits (N, 9) and labels (N, 9) as float arrays."""
    model.to(device)
    model.eval()
    logits, labels = [], []
    for images, batch_labels in loader:
        logits.append(model(images.to(device)).float().cpu())
        labels.append(batch_labels.float().cpu())
    if not logits:
        empty = np.zeros((0, len(FINDINGS)), dtype=np.float32)
        return empty, empty.copy()
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def evaluate(
    model: nn.Module, loader: Iterable[Batch], device: str = "cpu"
) -> tuple[float, np.ndarray, np.ndarray]:
    """Return the masked BCE loss, probabilities (N, 9) and labels (N, 9; NaN = unknown)."""
    logits, labels = predict_logits(model, loader, device)
    if len(logits) == 0:
        return 0.0, logits, labels
    loss = float(masked_bce(torch.from_numpy(logits), torch.from_numpy(labels)))
    probs = torch.sigmoid(torch.from_numpy(logits)).numpy()
    return loss, probs, labels


def parameter_names(model: nn.Module) -> list[str]:
    """State-dict keys in the order ``get_weights`` returns them (FedBN picks BN ones by name)."""
    return list(model.state_dict().keys())


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Every state-dict tensor (parameters and BN buffers) as numpy arrays, in key order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays produced by ``get_weights`` (same order) into the model."""
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise ValueError(f"got {len(weights)} arrays for a model with {len(keys)} tensors")
    state = {k: torch.from_numpy(np.asarray(w).copy()) for k, w in zip(keys, weights, strict=True)}
    model.load_state_dict(state, strict=True)


def model_hash(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 hex digest of the weights in a canonical encoding.

    Encoding: b"pacsmesh-weights-v1", the array count (uint32 LE), then per array its numpy
    dtype string (e.g. "<f4", length-prefixed), ndim (uint32 LE), each dimension (uint64 LE)
    and its C-order little-endian bytes. Shape and dtype are hashed so that two models with the
    same bytes but different layouts never collide.
    """
    digest = hashlib.sha256(b"pacsmesh-weights-v1")
    digest.update(struct.pack("<I", len(weights)))
    for weight in weights:
        arr = np.ascontiguousarray(weight)
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _little_endian()):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        dtype = arr.dtype.str.replace("=", "<").replace("|", "<").encode()
        digest.update(struct.pack("<I", len(dtype)) + dtype)
        digest.update(struct.pack("<I", arr.ndim))
        digest.update(b"".join(struct.pack("<Q", d) for d in arr.shape))
        digest.update(arr.tobytes(order="C"))
    return digest.hexdigest()


def _little_endian() -> bool:
    import sys

    return sys.byteorder == "little"
