"""A whole federation on one machine: the real ServerApp and ClientApp in Flower's runtime."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from federated.checkpoints import CheckpointStore
from federated.client_app import BN_STATE_FILE
from federated.run_config import FederatedConfigError, NodeSettings, RunSettings
from federated.server_app import RUN_LOG_FILE, initial_arrays
from federated.simulate import SimulationResult, Site, simulate
from federated.strategies.fedbn import batchnorm_keys
from federated.strategies.privacy import gaussian_sigma
from federated.task import FINDINGS, build_model, model_hash


def _sites(paths: list[Path]) -> list[Site]:
    return [Site(p.name, str(p)) for p in paths]


def _run(paths: list[Path], run_dir: Path | None = None, **overrides: object) -> SimulationResult:
    config: dict[str, object] = {"num-server-rounds": 2, "image-size": 32, "batch-size": 8}
    if run_dir is not None:
        config["run-dir"] = str(run_dir)
    config.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return simulate(_sites(paths), RunSettings.from_run_config(config))


def test_three_sites_two_rounds_log_metrics_hash_and_checkpoints(
    synth_sites: list[Path], tmp_path: Path
) -> None:
    printed: list[int] = []
    result = simulate(
        _sites(synth_sites),
        RunSettings.from_run_config(
            {"num-server-rounds": 2, "image-size": 32, "batch-size": 8, "run-dir": str(tmp_path)}
        ),
        on_round=lambda record: printed.append(record.server_round),
    )
    rounds = result.federation.rounds
    assert printed == [1, 2]
    lines = [json.loads(x) for x in (tmp_path / RUN_LOG_FILE).read_text().splitlines()]
    assert [line["server_round"] for line in lines] == [1, 2]
    assert len({line["run_id"] for line in lines}) == 1
    for line in lines:
        assert line["participants"] == ["site-1", "site-2", "site-3"]
        assert line["dropped"] == []
        assert set(line["site_metrics"]) == {"site-1", "site-2", "site-3"}
        for site in line["site_metrics"].values():
            assert len(site["evaluate"]["auroc"]) == len(FINDINGS)
            assert site["train"]["num-examples"] > 0
        macro = line["global_metrics"]["auroc_macro"]
        assert 0.0 <= macro <= 1.0
    # The logged SHA-256 is the hash of the checkpointed model, and of that model once loaded.
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.rounds() == [1, 2]
    final = store.load(2)
    model = build_model("small_cnn", 32)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in final.arrays.items()})
    weights = [v.numpy() for v in model.state_dict().values()]
    assert model_hash(weights) == lines[1]["model_sha256"] == final.model_hash
    assert rounds[1].model_sha256 != rounds[0].model_sha256


def test_dropped_site_does_not_stop_the_round(synth_sites: list[Path]) -> None:
    result = simulate(
        _sites(synth_sites),
        RunSettings.from_run_config({"num-server-rounds": 2, "image-size": 32, "batch-size": 8}),
        unavailable={"site-3": 2},
    )
    first, second = result.federation.rounds
    assert first.participants == ["site-1", "site-2", "site-3"]
    assert second.participants == ["site-1", "site-2"]
    assert second.dropped == ["site-3"]
    assert second.global_metrics["num_sites"] == 2


def test_too_few_sites_fail_the_round_with_a_clear_error(synth_sites: list[Path]) -> None:
    from federated.server_app import RoundFailedError

    with pytest.raises(RoundFailedError, match="1 site"):
        simulate(
            _sites(synth_sites),
            RunSettings.from_run_config({"num-server-rounds": 1, "image-size": 32}),
            unavailable={"site-2": 1, "site-3": 1},
        )


def test_restart_resumes_after_the_last_checkpoint(synth_sites: list[Path], tmp_path: Path) -> None:
    class Crash(Exception):
        pass

    def crash_after_first(record: object) -> None:
        raise Crash

    settings = RunSettings.from_run_config(
        {"num-server-rounds": 3, "image-size": 32, "batch-size": 8, "run-dir": str(tmp_path)}
    )
    with pytest.raises(Crash):
        simulate(_sites(synth_sites), settings, on_round=crash_after_first)
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.rounds() == [1]
    # A torn last line, as a crash mid-write would leave, must not break the resumed run.
    with (tmp_path / RUN_LOG_FILE).open("a") as handle:
        handle.write('{"server_round": 2, "trunc')

    resumed = simulate(_sites(synth_sites), settings)
    assert resumed.federation.resumed_from == 1
    assert [r.server_round for r in resumed.federation.rounds] == [2, 3]
    lines = [json.loads(x) for x in (tmp_path / RUN_LOG_FILE).read_text().splitlines()]
    assert [line["server_round"] for line in lines] == [1, 2, 3]
    assert len({line["run_id"] for line in lines}) == 1
    assert store.rounds() == [1, 2, 3]


def test_fedbn_keeps_batchnorm_at_each_site(synth_sites: list[Path], tmp_path: Path) -> None:
    result = _run(synth_sites, tmp_path, strategy="fedbn")
    bn_keys = batchnorm_keys(build_model("small_cnn", 32))
    local = {
        site.name: torch.load(tmp_path / "sites" / site.name / BN_STATE_FILE, weights_only=True)
        for site in synth_sites
    }
    assert set(local["site-1"]) == set(bn_keys)
    # Each site learnt its own scanner statistics...
    first_mean = next(k for k in bn_keys if k.endswith("running_mean"))
    assert not torch.allclose(local["site-1"][first_mean], local["site-2"][first_mean])
    # ...and none of it reached the server: the global BN entries are still the initial ones.
    start = initial_arrays(RunSettings(image_size=32))
    final = result.federation.final_arrays
    assert final is not None
    for key in bn_keys:
        np.testing.assert_array_equal(final[key].numpy(), start[key].numpy())
    conv = next(k for k in final if k not in bn_keys)
    assert not np.array_equal(final[conv].numpy(), start[conv].numpy())


def _distance_from_start(result: SimulationResult) -> float:
    start = initial_arrays(RunSettings(image_size=32))
    final = result.federation.final_arrays
    assert final is not None
    return math.sqrt(
        sum(
            float(np.sum((final[k].numpy().astype(np.float64) - start[k].numpy()) ** 2))
            for k in final
            # Trainable weights only: BN running statistics follow the data, not the loss.
            if "running_" not in k and "num_batches" not in k
        )
    )


def test_fedprox_proximal_term_keeps_sites_near_the_global_model(synth_sites: list[Path]) -> None:
    plain = _run(synth_sites, num_server_rounds=1)
    prox = _run(synth_sites, num_server_rounds=1, strategy="fedprox", proximal_mu=50.0)
    assert _distance_from_start(prox) < 0.8 * _distance_from_start(plain)


def test_secagg_aggregate_equals_the_plain_aggregate(synth_sites: list[Path]) -> None:
    plain = _run(synth_sites, num_server_rounds=1)
    secure = _run(synth_sites, num_server_rounds=1, secagg=True)
    record = secure.federation.rounds[0]
    assert record.participants == ["site-1", "site-2", "site-3"]
    assert record.privacy["secagg"] is True
    a, b = plain.federation.final_arrays, secure.federation.final_arrays
    assert a is not None and b is not None
    worst = max(
        float(np.max(np.abs(a[k].numpy().astype(np.float64) - b[k].numpy())))
        for k in a
        if "num_batches" not in k
    )
    # Quantisation: 2 * clipping range / 2**24 levels / total weight (~0.07) is ~2e-6.
    assert worst < 1e-4, worst
    assert worst > 0.0  # really went through quantisation, not the plain path


def test_client_side_dp_clips_updates_and_adds_noise(synth_sites: list[Path]) -> None:
    clip, epsilon, delta = 0.5, 8.0, 1e-5
    plain = _run(synth_sites, num_server_rounds=1)
    private = _run(
        synth_sites, num_server_rounds=1, dp_clip=clip, dp_epsilon=epsilon, dp_delta=delta
    )
    record = private.federation.rounds[0]
    sigma = gaussian_sigma(clip, epsilon, delta)
    assert record.privacy["dp"] is True
    assert record.privacy["dp_sigma"] == pytest.approx(sigma)
    assert record.privacy["dp_epsilon_per_round"] == epsilon
    for site in record.site_metrics.values():
        train = site["train"]
        assert train["dp-norm-before"] > clip  # the clip really bit
        assert train["dp-norm-after-clip"] == pytest.approx(clip)
    # Noise present: the aggregate is off the plain one by about sigma / sqrt(3 sites).
    a, b = plain.federation.final_arrays, private.federation.final_arrays
    assert a is not None and b is not None
    diffs = np.concatenate(
        [(b[k].numpy() - a[k].numpy()).ravel() for k in a if "num_batches" not in k]
    )
    assert 0.3 * sigma / math.sqrt(3) < float(np.std(diffs)) < 2.0 * sigma / math.sqrt(3)
    assert len(private.federation.rounds) == 1


def test_bad_configs_are_refused_with_clear_messages() -> None:
    with pytest.raises(FederatedConfigError, match="unknown strategy"):
        RunSettings.from_run_config({"strategy": "fedsgd"})
    with pytest.raises(FederatedConfigError, match="num-server-rounds must be an integer"):
        RunSettings.from_run_config({"num-server-rounds": "many"})
    with pytest.raises(FederatedConfigError, match="secagg-threshold"):
        RunSettings.from_run_config({"secagg": True, "secagg-threshold": 3})
    with pytest.raises(FederatedConfigError, match="data-source"):
        NodeSettings.from_node_config({"site-id": "site-1"}, node_id=7)
