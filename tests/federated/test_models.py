"""Model construction and the shared interface (1 channel in, 9 logits out)."""

from __future__ import annotations

import pytest
import torch

from federated.models import MODEL_NAMES, SmallCNN
from federated.task import build_model, get_weights, model_hash


def test_densenet121_is_monai_2d_single_channel_nine_outputs() -> None:
    from monai.networks.nets.densenet import DenseNet121

    model = build_model("densenet121", 224)
    assert isinstance(model, DenseNet121)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.out_features == 9
    assert sum(p.numel() for p in model.parameters()) > 6_000_000


@pytest.mark.parametrize("size", [32, 64, 96])
def test_small_cnn_accepts_any_size(size: int) -> None:
    model = build_model("small_cnn", size).eval()
    assert isinstance(model, SmallCNN)
    with torch.no_grad():
        assert model(torch.zeros(3, 1, size, size)).shape == (3, 9)


def test_models_are_reproducible_from_the_torch_seed() -> None:
    for name in MODEL_NAMES:
        torch.manual_seed(5)
        a = model_hash(get_weights(build_model(name, 64)))
        torch.manual_seed(5)
        assert model_hash(get_weights(build_model(name, 64))) == a
