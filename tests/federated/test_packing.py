"""The packed wire format: lossless, same aggregate as tensor by tensor, few Flower objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from federated.packing import Layout, PackingError
from federated.server_app import model_layout, pack_record, unpack_record
from federated.task import build_model, get_weights, model_hash, parameter_names


def _state(name: str, size: int, seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    model = build_model(name, size)
    return dict(zip(parameter_names(model), get_weights(model), strict=True))


def test_densenet_packs_into_one_float_and_one_int_buffer_losslessly() -> None:
    state = _state("densenet121", 32, seed=0)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert counters and all(state[k].dtype == np.int64 for k in counters)
    # Beyond what float32 (2**24) or even float64 (2**53) holds exactly.
    for i, key in enumerate(counters):
        state[key] = np.asarray(2**60 + i, dtype=np.int64)
    layout = Layout.of(state.items())
    packed = layout.pack(state)
    assert {k: (v.dtype, v.shape) for k, v in packed.items()} == {
        "packed.float32": (
            np.dtype(np.float32),
            (sum(v.size for v in state.values()) - len(counters),),
        ),
        "packed.int64": (np.dtype(np.int64), (len(counters),)),
    }
    unpacked = layout.unpack(packed)
    assert [k for k, _ in unpacked] == list(state)
    for key, value in unpacked:
        assert value.dtype == state[key].dtype and value.shape == state[key].shape
        np.testing.assert_array_equal(value, state[key])
    # The global model's SHA-256 is the same whether or not it went through the wire format.
    assert model_hash([v for _, v in unpacked]) == model_hash(list(state.values()))


def test_weighted_mean_of_packed_models_equals_the_mean_tensor_by_tensor() -> None:
    """FedAvg averages the packed buffers elementwise: the result must be the per-tensor one."""
    sites = [_state("small_cnn", 32, seed=s) for s in (1, 2, 3)]
    weights = [0.5, 0.3, 0.2]
    layout = Layout.of(sites[0].items())
    mean_packed: dict[str, np.ndarray] = {}
    for state, w in zip(sites, weights, strict=True):
        for key, buf in layout.pack(state).items():
            mean_packed[key] = mean_packed[key] + buf * w if key in mean_packed else buf * w
    mean_packed = {
        k: (np.rint(v).astype(np.int64) if k.endswith("int64") else v.astype(np.float32))
        for k, v in mean_packed.items()
    }
    for key, value in layout.unpack(mean_packed):
        expected = sum(s[key] * w for s, w in zip(sites, weights, strict=True))
        if np.issubdtype(sites[0][key].dtype, np.integer):
            expected = np.rint(expected).astype(np.int64)
        np.testing.assert_array_equal(value, np.asarray(expected, dtype=sites[0][key].dtype))


def test_a_packed_message_is_a_handful_of_flower_objects_whatever_the_tensor_count() -> None:
    state = _state("densenet121", 32, seed=0)
    # As after training: no two tensors equal (Flower stores identical content once, and a
    # fresh model's BatchNorm tensors are all ones or zeros).
    rng = np.random.default_rng(0)
    state = {
        k: (v + rng.normal(0, 1e-3, v.shape)).astype(v.dtype)
        if v.dtype == np.float32
        else np.asarray(v + i)
        for i, (k, v) in enumerate(state.items())
    }
    named = ArrayRecord({k: Array(v) for k, v in state.items()})
    layout = model_layout(named)
    packed = pack_record(layout, named)
    # Per tensor, Flower moves an Array object plus its chunk(s), one call each per hop.
    assert len(get_all_nested_objects(named)) > 2 * len(state) > 1400
    # Packed: 2 Arrays, the 28 MB float buffer in 5 MB chunks, the record itself.
    assert len(get_all_nested_objects(packed)) <= 12
    back = unpack_record(layout, packed)
    assert list(back.keys()) == list(state)
    assert model_hash(back.to_numpy_ndarrays()) == model_hash(list(state.values()))


def test_a_different_model_is_refused_with_a_clear_error() -> None:
    small = Layout.of(_state("small_cnn", 32, seed=0).items())
    dense = Layout.of(_state("densenet121", 32, seed=0).items())
    assert small.digest() != dense.digest()
    packed_small = small.pack(_state("small_cnn", 32, seed=1))
    with pytest.raises(PackingError, match=r"packed\.float32: float32 x \(\d+,\), layout wants"):
        dense.unpack(packed_small)
    with pytest.raises(PackingError, match="packed buffers"):
        small.unpack({"packed.float32": packed_small["packed.float32"]})
    wrong_shape = _state("small_cnn", 32, seed=0)
    first = next(iter(wrong_shape))
    wrong_shape[first] = wrong_shape[first].ravel()
    with pytest.raises(PackingError, match="shape"):
        small.pack(wrong_shape)


def test_a_site_refuses_weights_packed_for_another_model() -> None:
    """A site on another pacsmesh version must not load misplaced weights."""
    from federated.client_app import _receive
    from federated.packing import LAYOUT_CONFIG_KEY
    from federated.run_config import RunSettings
    from federated.server_app import initial_arrays

    run = RunSettings(model="small_cnn", image_size=32)
    arrays = initial_arrays(run)
    layout = model_layout(arrays)
    packed = {k: v.numpy() for k, v in pack_record(layout, arrays).items()}
    other = Layout.of(_state("densenet121", 32, seed=0).items()).digest()
    with pytest.raises(PackingError, match=f"server's model layout \\({other[:12]}\\) differs"):
        _receive(run, packed, {LAYOUT_CONFIG_KEY: other})
    model, _, received = _receive(run, packed, {LAYOUT_CONFIG_KEY: layout.digest()})
    assert model_hash(get_weights(model)) == model_hash(arrays.to_numpy_ndarrays())
    assert [k for k, _ in received] == list(arrays.keys())
