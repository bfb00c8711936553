"""Each round's metrics belong to that round's model, however the evaluation reached the server.

By default a round's train message also asks every site to evaluate the model it brings (the
previous round's aggregate) before training, so round r's metrics arrive in round r+1's
exchange and the last model gets one evaluate-only exchange. These tests score the checkpointed
models directly on the sites' validation data and compare with the run log, and restart runs at
the awkward moments to show every round is logged exactly once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from federated.checkpoints import CheckpointStore
from federated.data import load_site
from federated.metrics import site_auroc
from federated.run_config import RunSettings
from federated.server_app import (
    EVALUATED_FINALLY,
    EVALUATED_SEPARATELY,
    EVALUATED_WITH_NEXT_TRAIN,
    RUN_LOG_FILE,
    RoundFailedError,
)
from federated.simulate import SimulationResult, Site, simulate
from federated.task import FINDINGS, build_model
from federated.task import evaluate as evaluate_model

IMAGE_SIZE = 32
BATCH = 8


def _settings(run_dir: Path, rounds: int = 3, **overrides: object) -> RunSettings:
    config: dict[str, object] = {
        "num-server-rounds": rounds,
        "image-size": IMAGE_SIZE,
        "batch-size": BATCH,
        "run-dir": str(run_dir),
    }
    config.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return RunSettings.from_run_config(config)


def _simulate(paths: list[Path], settings: RunSettings, **kwargs: Any) -> SimulationResult:
    return simulate([Site(p.name, str(p)) for p in paths], settings, **kwargs)


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / RUN_LOG_FILE).read_text().splitlines()]


def _direct_scores(run_dir: Path, server_round: int, site: Path) -> tuple[float, list[float]]:
    """Loss and per-finding AUROC of a checkpointed model on a site's validation split,
    computed here without the ClientApp."""
    checkpoint = CheckpointStore(run_dir / "checkpoints").load(server_round)
    model = build_model("small_cnn", IMAGE_SIZE)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in checkpoint.arrays.items()})
    val = load_site(str(site), IMAGE_SIZE, split="val", seed=0, val_fraction=0.2)
    loss, probs, labels = evaluate_model(model, DataLoader(val, batch_size=BATCH))
    values, _ = site_auroc(probs, labels)
    return loss, [values.get(f, math.nan) for f in FINDINGS]


def _assert_logged_metrics_are_of_the_checkpointed_model(
    run_dir: Path, line: dict[str, Any], sites: list[Path]
) -> None:
    checkpoint = CheckpointStore(run_dir / "checkpoints").load(line["server_round"])
    assert line["model_sha256"] == checkpoint.model_hash
    assert line["evaluation"]["model_sha256"] == checkpoint.model_hash
    for site in sites:
        logged = line["site_metrics"][site.name]["evaluate"]
        # The site itself says which model it scored.
        assert logged["model_sha256"] == checkpoint.model_hash
        loss, auroc = _direct_scores(run_dir, line["server_round"], site)
        assert logged["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
        expected = [None if math.isnan(a) else pytest.approx(a, abs=1e-6) for a in auroc]
        assert logged["auroc"] == expected


def test_each_rounds_metrics_are_of_that_rounds_model_and_the_final_model_is_evaluated(
    synth_sites: list[Path], tmp_path: Path
) -> None:
    result = _simulate(synth_sites, _settings(tmp_path))
    lines = _lines(tmp_path)
    assert [line["server_round"] for line in lines] == [1, 2, 3]
    # Rounds 1 and 2 were scored inside the next round's train messages; the final model in
    # the one evaluate-only exchange at the end.
    assert [line["evaluation"]["carried_by"] for line in lines] == [
        EVALUATED_WITH_NEXT_TRAIN,
        EVALUATED_WITH_NEXT_TRAIN,
        EVALUATED_FINALLY,
    ]
    for line in lines:
        assert line["evaluation"]["sites"] == ["site-1", "site-2", "site-3"]
        assert line["global_metrics"]["num_sites"] == 3
        _assert_logged_metrics_are_of_the_checkpointed_model(tmp_path, line, synth_sites)
    # The run's final metrics are those of the final model.
    final = result.federation.rounds[-1]
    assert final.server_round == 3
    assert final.model_sha256 == CheckpointStore(tmp_path / "checkpoints").load(3).model_hash
    assert len({line["model_sha256"] for line in lines}) == 3


@pytest.mark.parametrize("strategy", ["fedavg", "fedbn"])
def test_one_exchange_per_round_logs_what_separate_evaluate_messages_log(
    synth_sites: list[Path], tmp_path: Path, strategy: str
) -> None:
    fused = _simulate(synth_sites, _settings(tmp_path / "fused", 2, strategy=strategy))
    separate = _simulate(
        synth_sites,
        _settings(tmp_path / "separate", 2, strategy=strategy, evaluate_with_train=False),
    )
    assert [r.evaluation["carried_by"] for r in separate.federation.rounds] == [
        EVALUATED_SEPARATELY,
        EVALUATED_SEPARATELY,
    ]
    # One train message per site per round, plus one final evaluate message per site; the
    # separate mode sends an evaluate message per site every round.
    assert [t.message_type for t in fused.timings].count("evaluate") == 3
    assert [t.message_type for t in separate.timings].count("evaluate") == 6
    # Same models (up to the order in which replies were summed, which the simulation does not
    # fix: bit-identical hashes are not guaranteed between any two runs)...
    a_final, b_final = fused.federation.final_arrays, separate.federation.final_arrays
    assert a_final is not None and b_final is not None
    for key in a_final:
        np.testing.assert_allclose(a_final[key].numpy(), b_final[key].numpy(), atol=1e-5)
    for a, b in zip(fused.federation.rounds, separate.federation.rounds, strict=True):
        assert a.server_round == b.server_round
        # ...and the same metrics for each (FedBN: each site scored with its own BatchNorm
        # both ways), each tied to its own run's model of that round.
        for site in ("site-1", "site-2", "site-3"):
            got, want = a.site_metrics[site]["evaluate"], b.site_metrics[site]["evaluate"]
            assert got["model_sha256"] == a.model_sha256
            assert want["model_sha256"] == b.model_sha256
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
            np.testing.assert_allclose(got["auroc"], want["auroc"], atol=1e-3)
        assert a.global_metrics["auroc_macro"] == pytest.approx(
            b.global_metrics["auroc_macro"], abs=1e-3
        )


def test_secagg_rounds_carry_the_previous_models_metrics_in_plain(
    synth_sites: list[Path], tmp_path: Path
) -> None:
    _simulate(synth_sites, _settings(tmp_path, 2, secagg=True))
    lines = _lines(tmp_path)
    assert [line["evaluation"]["carried_by"] for line in lines] == [
        EVALUATED_WITH_NEXT_TRAIN,
        EVALUATED_FINALLY,
    ]
    for line in lines:
        assert line["privacy"]["secagg"] is True
        # The evaluation keys never leak into the training metrics.
        for site in line["site_metrics"].values():
            assert not any(k.startswith("eval-") for k in site["train"])
        _assert_logged_metrics_are_of_the_checkpointed_model(tmp_path, line, synth_sites)


def test_resume_after_a_crash_once_a_rounds_metrics_were_logged_does_not_log_them_twice(
    synth_sites: list[Path], tmp_path: Path
) -> None:
    class Crash(Exception):
        pass

    def crash_at_round_two(record: Any) -> None:
        if record.server_round == 2:
            raise Crash

    settings = _settings(tmp_path, 3)
    # Line 2 is written during round 3's exchange; the crash hits before round 3's checkpoint.
    with pytest.raises(Crash):
        _simulate(synth_sites, settings, on_round=crash_at_round_two)
    assert CheckpointStore(tmp_path / "checkpoints").rounds() == [1, 2]
    assert [line["server_round"] for line in _lines(tmp_path)] == [1, 2]

    resumed = _simulate(synth_sites, settings)
    assert resumed.federation.resumed_from == 2
    assert [r.server_round for r in resumed.federation.rounds] == [3]
    lines = _lines(tmp_path)
    assert [line["server_round"] for line in lines] == [1, 2, 3]
    for line in lines:
        _assert_logged_metrics_are_of_the_checkpointed_model(tmp_path, line, synth_sites)


@pytest.mark.parametrize("evaluate_with_train", [True, False])
def test_resume_after_a_failed_round_logs_the_unevaluated_round_once(
    synth_sites: list[Path], tmp_path: Path, evaluate_with_train: bool
) -> None:
    # Every site is down from round 3: round 2's model is checkpointed but its evaluation
    # (due in round 3's train messages) never arrives.
    down = {site.name: 3 for site in synth_sites}
    with pytest.raises(RoundFailedError, match="round 3"):
        _simulate(synth_sites, _settings(tmp_path, 3), unavailable=down)
    assert CheckpointStore(tmp_path / "checkpoints").rounds() == [1, 2]
    assert [line["server_round"] for line in _lines(tmp_path)] == [1]

    # Resumed with either setting of the switch, round 2 is evaluated and logged exactly once.
    settings = _settings(tmp_path, 3, evaluate_with_train=evaluate_with_train)
    resumed = _simulate(synth_sites, settings)
    assert resumed.federation.resumed_from == 2
    assert [r.server_round for r in resumed.federation.rounds] == [2, 3]
    lines = _lines(tmp_path)
    assert [line["server_round"] for line in lines] == [1, 2, 3]
    assert lines[1]["evaluation"]["carried_by"] == (
        EVALUATED_WITH_NEXT_TRAIN if evaluate_with_train else EVALUATED_SEPARATELY
    )
    # Round 2's record kept its training facts across the restart.
    assert lines[1]["participants"] == ["site-1", "site-2", "site-3"]
    assert set(lines[1]["site_metrics"]["site-1"]["train"]) >= {"train-loss", "num-examples"}
    for line in lines:
        _assert_logged_metrics_are_of_the_checkpointed_model(tmp_path, line, synth_sites)


def test_dp_rounds_log_the_noised_models_metrics_and_clip_as_before(
    synth_sites: list[Path], tmp_path: Path
) -> None:
    clip = 0.5
    _simulate(synth_sites, _settings(tmp_path, 2, dp_clip=clip, dp_epsilon=8.0))
    lines = _lines(tmp_path)
    assert lines[0]["evaluation"]["carried_by"] == EVALUATED_WITH_NEXT_TRAIN
    for line in lines:
        assert line["privacy"]["dp"] is True
        for site in line["site_metrics"].values():
            # Evaluating first does not touch the update that is clipped and noised.
            assert site["train"]["dp-norm-after-clip"] == pytest.approx(clip)
        # The metrics are those of the noised global model that was checkpointed.
        _assert_logged_metrics_are_of_the_checkpointed_model(tmp_path, line, synth_sites)
