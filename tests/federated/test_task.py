"""The task interface: models, training, evaluation, weights and their hash."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from federated.data import load_site, make_loader
from federated.models import UnknownModelError
from federated.task import (
    FINDINGS,
    build_model,
    evaluate,
    get_weights,
    masked_bce,
    model_hash,
    parameter_names,
    set_weights,
    train,
)


def test_nine_findings_in_issue_order() -> None:
    assert len(FINDINGS) == 9
    assert FINDINGS[0] == "calcification" and FINDINGS[-1] == "atelectasis"


@pytest.mark.parametrize(("name", "size"), [("small_cnn", 64), ("densenet121", 64)])
def test_models_map_one_channel_images_to_nine_logits(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 9)
    assert torch.isfinite(out).all()


def test_unknown_model_and_too_small_image_are_refused() -> None:
    with pytest.raises(UnknownModelError, match="resnet"):
        build_model("resnet", 64)
    with pytest.raises(UnknownModelError, match="too small"):
        build_model("densenet121", 16)


def test_masked_bce_ignores_unknown_labels() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1.0, math.nan], [math.nan, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0])
    )
    assert torch.isclose(masked_bce(logits, labels), expected)
    all_unknown = masked_bce(logits, torch.full((2, 2), math.nan))
    assert float(all_unknown) == 0.0


def test_train_lowers_loss_and_evaluate_returns_probabilities(synth_sites: list[Path]) -> None:
    torch.manual_seed(0)
    data = load_site(str(synth_sites[0]), 32, "all")
    loader = make_loader(data, batch_size=8, shuffle=True)
    model = build_model("small_cnn", 32)
    first = train(model, loader, epochs=1, lr=3e-3)
    later = train(model, loader, epochs=4, lr=3e-3)
    assert later < first
    loss, probs, labels = evaluate(model, make_loader(data, batch_size=8))
    assert probs.shape == labels.shape == (len(data), 9)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert loss > 0
    np.testing.assert_array_equal(labels, data.labels)


def test_fedprox_term_keeps_weights_near_the_global_model(synth_sites: list[Path]) -> None:
    data = load_site(str(synth_sites[1]), 32, "all")
    drift = {}
    for mu in (0.0, 50.0):
        torch.manual_seed(0)
        model = build_model("small_cnn", 32)
        start = [p.detach().clone() for p in model.parameters()]
        train(
            model,
            make_loader(data, 8, True),
            epochs=2,
            lr=1e-2,
            proximal_mu=mu,
            global_params=start,
        )
        drift[mu] = sum(
            float(((p.detach() - s) ** 2).sum())
            for p, s in zip(model.parameters(), start, strict=True)
        )
    assert drift[50.0] < 0.5 * drift[0.0]


def test_weights_round_trip_and_hash(synth_sites: list[Path]) -> None:
    torch.manual_seed(1)
    a = build_model("small_cnn", 32)
    torch.manual_seed(2)
    b = build_model("small_cnn", 32)
    assert model_hash(get_weights(a)) != model_hash(get_weights(b))
    set_weights(b, get_weights(a))
    assert model_hash(get_weights(b)) == model_hash(get_weights(a))
    assert len(get_weights(a)) == len(parameter_names(a))
    assert any("running_mean" in n for n in parameter_names(a))  # BN buffers travel too
    with pytest.raises(ValueError, match="arrays"):
        set_weights(b, get_weights(a)[:-1])


def test_model_hash_is_canonical() -> None:
    w: list[np.ndarray] = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array(3, dtype=np.int64),
    ]
    h = model_hash(w)
    assert len(h) == 64 and int(h, 16) >= 0
    assert model_hash([x.copy() for x in w]) == h
    # Same bytes, different shape or dtype, or big-endian storage of the same values.
    assert model_hash([w[0].reshape(3, 2), w[1]]) != h
    assert model_hash([w[0].view(np.int32), w[1]]) != h
    assert model_hash([w[0].astype(">f4"), w[1].astype(">i8")]) == h
    assert model_hash([np.asfortranarray(w[0]), w[1]]) == h
