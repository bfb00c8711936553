"""Chest X-ray finding classifiers behind one interface: 1-channel image in, nine logits out."""

from __future__ import annotations

import itertools

import torch
from torch import nn

MODEL_NAMES: tuple[str, ...] = ("small_cnn", "densenet121")
NUM_FINDINGS = 9
# DenseNet-121 halves the resolution five times; below 32 px the last feature map is empty.
_MIN_IMAGE_SIZE = {"small_cnn": 16, "densenet121": 32}


class UnknownModelError(ValueError):
    """Raised when a run config names a model this package does not build."""


class SmallCNN(nn.Module):
    """Four conv blocks with batch norm, global pooling and a linear head, for CPU runs.

    Batch norm is deliberate: FedBN keeps these layers local, so the small model must have them
    for the FedBN strategy to differ from FedAvg in CPU tests.
    """

    def __init__(self, in_channels: int = 1, num_outputs: int = NUM_FINDINGS, width: int = 16):
        super().__init__()
        chans = [in_channels, width, width * 2, width * 4, width * 8]
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(chans):
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(chans[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch (N, 1, H, W) to logits (N, 9)."""
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def build_model(name: str, image_size: int) -> nn.Module:
    """Build an untrained model by run-config name ("small_cnn" or "densenet121")."""
    if name not in MODEL_NAMES:
        raise UnknownModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if image_size < _MIN_IMAGE_SIZE[name]:
        raise UnknownModelError(
            f"image_size {image_size} is too small for {name}; "
            f"use at least {_MIN_IMAGE_SIZE[name]} px"
        )
    if name == "small_cnn":
        return SmallCNN()
    # Imported here: MONAI's import is slow and the small CNN never needs it.
    from monai.networks.nets.densenet import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=NUM_FINDINGS)
