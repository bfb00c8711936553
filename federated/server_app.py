"""The pacsmesh ServerApp: the consortium's round loop.

Each round: sample the connected sites, send them the global model, aggregate their replies with
the configured strategy (optionally under SecAgg+) and checkpoint the new model. Every site
scores each global model on its own validation split: by default in the *next* round's train
message, before training on it (one exchange per site and round; the last model gets one
evaluate-only exchange at the end), or with ``evaluate-with-train = false`` in a separate
evaluate message right after aggregation. A round's run-log line (model SHA-256, participants,
that model's metrics) is written once its evaluation is in; until then the record rides in the
round's checkpoint. A restarted ServerApp with the same run dir resumes after the last
checkpoint and logs every round exactly once.
Sites that fail or vanish mid-round are left out of that round's aggregate; the round fails only
when fewer than ``min-train-nodes`` sites reply.

The server keeps, hashes and checkpoints the model by tensor name; messages carry it packed,
one array per dtype (``federated.packing``), because Flower's cost per message grows with the
number of arrays.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from federated.checkpoints import Checkpoint, CheckpointStore
from federated.packing import LAYOUT_CONFIG_KEY, Layout
from federated.polling import PromptGrid
from federated.run_config import RunSettings
from federated.run_log import RoundRecord, RunLog, json_safe
from federated.strategies import build_strategy
from federated.strategies.base import EVALUATE_FIRST_KEY, SiteReport, split_eval_report
from federated.strategies.secagg import secagg_train_round

app = ServerApp()

RUN_LOG_FILE = "run-log.jsonl"
CHECKPOINT_DIR = "checkpoints"
RUN_META_FILE = "run.json"


class RoundFailedError(RuntimeError):
    """Too few sites replied for a round to count (exit code 4 on the CLI)."""

    exit_code = 4


@dataclass
class FederationResult:
    """The outcome of a whole run, as the CLI and the evaluation harness read it."""

    run_id: str
    rounds: list[RoundRecord] = field(default_factory=list)
    final_arrays: ArrayRecord | None = None
    resumed_from: int = 0


RoundCallback = Callable[[RoundRecord], None]


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: run the federation described by the run config."""
    run = RunSettings.from_run_config(context.run_config)
    run_federation(grid, context, run)


def initial_arrays(run: RunSettings) -> ArrayRecord:
    """A fresh model's state dict, seeded so every method in an evaluation starts alike."""
    import torch

    from federated.task import build_model

    torch.manual_seed(run.seed)
    model = build_model(run.model, run.image_size)
    return ArrayRecord(
        {k: Array(v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items()}
    )


def model_layout(arrays: ArrayRecord) -> Layout:
    """How the global model is packed for the wire (see ``federated.packing``)."""
    return Layout.of((k, v.numpy()) for k, v in arrays.items())


def pack_record(layout: Layout, arrays: ArrayRecord) -> ArrayRecord:
    """The model as one ``Array`` per dtype: what train and evaluate messages carry."""
    packed = layout.pack({k: v.numpy() for k, v in arrays.items()})
    return ArrayRecord({k: Array(v) for k, v in packed.items()})


def unpack_record(layout: Layout, packed: ArrayRecord) -> ArrayRecord:
    """The model by tensor name, as the server keeps, hashes and checkpoints it."""
    named = layout.unpack({k: v.numpy() for k, v in packed.items()})
    # Not np.ascontiguousarray: it turns 0-d tensors (BN counters) into shape (1,).
    return ArrayRecord({k: Array(v) for k, v in named})


def arrays_hash(arrays: ArrayRecord) -> str:
    """SHA-256 of the global model, as ``task.model_hash`` defines it (state-dict order)."""
    from federated.task import model_hash

    return model_hash(arrays.to_numpy_ndarrays())


def run_federation(
    grid: Grid,
    context: Context,
    run: RunSettings,
    on_round: RoundCallback | None = None,
) -> FederationResult:
    """Run (or resume) the federation; return every round's record and the final model."""
    grid = grid if isinstance(grid, PromptGrid) else PromptGrid(grid)
    run_dir = Path(run.run_dir) if run.run_dir else None
    store = CheckpointStore(run_dir / CHECKPOINT_DIR) if run_dir else None
    run_log = RunLog(run_dir / RUN_LOG_FILE) if run_dir else None
    run_id = _run_id(run_dir)

    arrays = initial_arrays(run)
    start = 0
    # The record of the newest model while its evaluation is still to come.
    pending: RoundRecord | None = None
    latest = store.latest() if store else None
    if latest is not None:
        arrays = _arrays_from_checkpoint(latest, arrays)
        start = latest.server_round
        pending = _pending_after_restart(latest, run_log)
        log(INFO, "Resuming after round %d (model %s)", start, latest.model_hash[:12])
    if run_log is not None:
        # Keep exactly the lines whose evaluation is in; an unfinished round is logged again.
        run_log.truncate_after(start if pending is None else start - 1)

    strategy = build_strategy(run)
    layout = model_layout(arrays)
    # The packed form of ``arrays``, kept while it is valid: the aggregate arrives packed, and
    # re-packing it for the evaluate message and the next round would copy the model twice.
    packed: ArrayRecord | None = None
    site_names: dict[int, str] = {}
    result = FederationResult(run_id=run_id, resumed_from=start, final_arrays=arrays)

    def finish(record: RoundRecord, reports: list[SiteReport], carried_by: str) -> None:
        """Log a round once its model's evaluation is in (metrics of ``record``'s model only)."""
        _complete(record, reports, carried_by)
        if run_log is not None:
            run_log.append(record)
        result.rounds.append(record)
        log(
            INFO,
            "Round %d: sites %s, macro AUROC %.3f, model %s",
            record.server_round,
            ",".join(record.participants),
            record.global_metrics.get("auroc_macro") or float("nan"),
            record.model_sha256[:12],
        )
        if on_round is not None:
            on_round(record)

    def evaluate_exchange(server_round: int) -> tuple[list[SiteReport], float]:
        """A separate evaluate-only exchange of the current global model."""
        nonlocal packed
        started = time.perf_counter()
        if packed is None:
            packed = pack_record(layout, arrays)
        messages = strategy.configure_evaluate(
            server_round,
            packed,
            ConfigRecord({LAYOUT_CONFIG_KEY: layout.digest()}),
            grid,
        )
        replies = grid.send_and_receive(messages, timeout=run.round_timeout)
        strategy.aggregate_evaluate(server_round, replies)
        return strategy.last_evaluate_reports, time.perf_counter() - started

    for server_round in range(start + 1, run.num_server_rounds + 1):
        if pending is not None and not run.evaluate_with_train:
            # Resumed with the switch off: the checkpointed model still awaits its evaluation.
            reports, seconds = evaluate_exchange(pending.server_round)
            pending.timing["evaluate_s"] = seconds
            finish(pending, reports, EVALUATED_SEPARATELY)
            pending = None
        # The train messages also carry "evaluate the model you receive": that model is the
        # previous round's aggregate, whose record is ``pending``.
        evaluate_first = pending is not None
        started = time.perf_counter()
        train_config = ConfigRecord(
            {
                "local-epochs": run.local_epochs,
                "lr": run.lr,
                "server-round": server_round,
                LAYOUT_CONFIG_KEY: layout.digest(),
            }
        )
        if evaluate_first:
            train_config[EVALUATE_FIRST_KEY] = True
        if run.secagg:
            node_ids = _sample(grid, run)
            if run.strategy == "fedprox":
                train_config["proximal-mu"] = run.proximal_mu
            if run.strategy == "fedbn":
                train_config["fedbn"] = True
            new_arrays, train_reports, failed_ids = secagg_train_round(
                grid,
                context,
                server_round,
                arrays,
                layout,
                train_config,
                node_ids,
                num_shares=min(run.secagg_num_shares, len(node_ids)),
                threshold=run.secagg_threshold,
                clipping_range=run.secagg_clipping_range,
                quantization_range=run.secagg_quantization_range,
                max_weight=run.secagg_max_weight,
                timeout=run.round_timeout,
            )
            new_packed = None
        else:
            if packed is None:
                packed = pack_record(layout, arrays)
            strategy.remember_reference(packed)
            messages = strategy.configure_train(server_round, packed, train_config, grid)
            replies = grid.send_and_receive(messages, timeout=run.round_timeout)
            new_packed, _ = strategy.aggregate_train(server_round, replies)
            new_arrays = None if new_packed is None else unpack_record(layout, new_packed)
            train_reports = strategy.last_train_reports
            # An error reply for a vanished node comes from the SuperLink itself, so the sites
            # that dropped out are those sent a message that sent no result back.
            sent = {m.metadata.dst_node_id for m in messages}
            failed_ids = sorted(sent - {r.node_id for r in train_reports})
        trained = time.perf_counter()
        split = [split_eval_report(r) for r in train_reports]
        train_reports = [t for t, _ in split]
        if new_arrays is None or len(train_reports) < run.min_train_nodes:
            # The previous model stays pending in its checkpoint: a resumed run evaluates it
            # again rather than log a round that most sites never scored.
            raise RoundFailedError(
                f"round {server_round}: {len(train_reports)} site(s) replied, "
                f"{run.min_train_nodes} needed"
            )
        if pending is not None:
            pending.timing["next_train_s"] = trained - started
            finish(pending, [e for _, e in split if e is not None], EVALUATED_WITH_NEXT_TRAIN)
            pending = None
        arrays, packed = new_arrays, new_packed
        site_names.update({r.node_id: r.site_id for r in train_reports})

        record = RoundRecord(
            run_id=run_id,
            server_round=server_round,
            strategy=run.strategy,
            model=run.model,
            model_sha256=arrays_hash(arrays),
            participants=[r.site_id for r in train_reports],
            dropped=[site_names.get(n, f"node-{n}") for n in failed_ids],
            site_metrics={r.site_id: {"train": dict(r.metrics)} for r in train_reports},
            global_metrics={},
            privacy=_privacy(run, train_reports),
            timing={"train_s": trained - started},
        )
        if run.evaluate_with_train:
            pending = record
        else:
            reports, seconds = evaluate_exchange(server_round)
            record.timing["evaluate_s"] = seconds
            # Log line first, checkpoint second: on resume the log is cut back to the last
            # checkpoint, so the two always agree.
            finish(record, reports, EVALUATED_SEPARATELY)
        if store is not None:
            store.save(
                Checkpoint(
                    server_round=server_round,
                    arrays={k: v.numpy() for k, v in arrays.items()},
                    model_hash=record.model_sha256,
                    pending=_pending_json(pending),
                )
            )
        result.final_arrays = arrays
    if pending is not None:
        # The last aggregate has no next round to ride on: one evaluate-only exchange.
        reports, seconds = evaluate_exchange(pending.server_round)
        pending.timing["evaluate_s"] = seconds
        finish(pending, reports, EVALUATED_FINALLY)
    return result


# How a round's evaluation reached the server (``RoundRecord.evaluation["carried_by"]``).
EVALUATED_WITH_NEXT_TRAIN = "next-train-message"
EVALUATED_FINALLY = "final-evaluate-message"
EVALUATED_SEPARATELY = "evaluate-message"


def _complete(record: RoundRecord, reports: list[SiteReport], carried_by: str) -> None:
    """Fill in a round's evaluation from sites' reports about *its* model.

    A report about any other model (the site's hash differs) is left out and logged: a metric
    must never be recorded against a model it was not computed on.
    """
    mine = [r for r in reports if r.evaluated_model == record.model_sha256]
    for other in (r for r in reports if r.evaluated_model != record.model_sha256):
        log(
            WARNING,
            "Round %d: %s evaluated model %s, not %s; its metrics are left out",
            record.server_round,
            other.site_id,
            other.evaluated_model[:12] or "(unknown)",
            record.model_sha256[:12],
        )
    for site, metrics in _site_metrics(mine).items():
        record.site_metrics.setdefault(site, {})["evaluate"] = metrics
    record.global_metrics = global_metrics(mine)
    record.evaluation = {
        "model_sha256": record.model_sha256,
        "carried_by": carried_by,
        "sites": sorted(r.site_id for r in mine),
    }
    record.finished_at = time.time()


def _pending_json(pending: RoundRecord | None) -> str:
    if pending is None:
        return ""
    return json.dumps(json_safe(asdict(pending)), sort_keys=True, allow_nan=False)


def _pending_after_restart(latest: Checkpoint, run_log: RunLog | None) -> RoundRecord | None:
    """The checkpointed round's record if its evaluation never reached the log.

    The log line of round r is written (during round r+1's exchange, or the final one) before
    anything later is checkpointed; a crash between that line and the next checkpoint leaves the
    line in place, and it must not be written twice.
    """
    if not latest.pending:
        return None
    if run_log is not None:
        for line in run_log.records():
            if (
                line.get("server_round") == latest.server_round
                and line.get("model_sha256") == latest.model_hash
            ):
                return None
    return RoundRecord.from_json(json.loads(latest.pending))


def _sample(grid: Grid, run: RunSettings) -> list[int]:
    """Wait for enough connected sites and pick ``fraction-train`` of them (SecAgg+ rounds)."""
    import random

    deadline = time.monotonic() + run.round_timeout
    while len(nodes := list(grid.get_node_ids())) < run.min_available_nodes:
        if time.monotonic() > deadline:
            raise RoundFailedError(
                f"only {len(nodes)} site(s) connected, {run.min_available_nodes} needed"
            )
        time.sleep(1.0)
    size = max(int(len(nodes) * run.fraction_train), run.min_train_nodes)
    return sorted(random.sample(nodes, min(size, len(nodes))))


def _arrays_from_checkpoint(checkpoint: Checkpoint, fresh: ArrayRecord) -> ArrayRecord:
    from federated.checkpoints import CheckpointError

    if set(checkpoint.arrays) != set(fresh.keys()):
        raise CheckpointError(
            f"checkpoint of round {checkpoint.server_round} does not fit model "
            "(different tensors); use a new run dir for a different model"
        )
    # Checkpoints written before the packed wire format hold 0-d tensors (BatchNorm's counters)
    # as shape (1,); the model hash encodes both alike, so the reshape is lossless.
    arrays = ArrayRecord()
    for key, value in fresh.items():
        stored = checkpoint.arrays[key]
        if stored.size != int(np.prod(value.shape)):
            raise CheckpointError(
                f"checkpoint of round {checkpoint.server_round} does not fit model "
                f"({key} has {stored.size} values, the model {int(np.prod(value.shape))})"
            )
        arrays[key] = Array(np.asarray(stored).reshape(value.shape))
    if arrays_hash(arrays) != checkpoint.model_hash:
        raise CheckpointError(f"checkpoint of round {checkpoint.server_round} fails its hash")
    return arrays


def _run_id(run_dir: Path | None) -> str:
    """A run keeps its id across restarts (stored beside the log)."""
    if run_dir is None:
        return uuid.uuid4().hex
    meta = run_dir / RUN_META_FILE
    if meta.exists():
        return str(json.loads(meta.read_text())["run_id"])
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    meta.write_text(json.dumps({"run_id": run_id}))
    return run_id


def _site_metrics(eval_reports: list[SiteReport]) -> dict[str, dict[str, Any]]:
    sites: dict[str, dict[str, Any]] = {}
    for report in eval_reports:
        metrics = dict(report.metrics)
        sites[report.site_id] = {
            "model_sha256": report.evaluated_model,
            "num_examples": metrics.get("num-examples"),
            "loss": metrics.get("loss"),
            "auroc_macro": metrics.get("auroc-macro"),
            "auroc": metrics.get("auroc"),
            "eval_seconds": metrics.get("eval-seconds"),
        }
    return sites


def global_metrics(eval_reports: list[SiteReport]) -> dict[str, Any]:
    """Consortium metrics: AUROC per finding within each site, then averaged over sites.

    Averaging per-site AUROCs (not pooling predictions) is what tells a hospital how the model
    ranks *its* patients; the worst site's macro AUROC shows who the model serves least well.
    """
    if not eval_reports:
        return {}
    per_site = np.array(
        [[_num(a) for a in r.metrics.get("auroc", [])] for r in eval_reports], dtype=np.float64
    )
    site_macro = np.array([_num(r.metrics.get("auroc-macro")) for r in eval_reports])
    weights = np.array([float(r.metrics.get("num-examples", 0)) for r in eval_reports])
    losses = np.array([_num(r.metrics.get("loss")) for r in eval_reports])
    with np.errstate(all="ignore"):
        per_finding = [float(x) for x in _nanmean(per_site, axis=0)] if per_site.size else []
    known_finding = [x for x in per_finding if not math.isnan(x)]
    known_site = site_macro[~np.isnan(site_macro)]
    return {
        "auroc_per_finding": per_finding,
        "auroc_macro": float(np.mean(known_finding)) if known_finding else float("nan"),
        "auroc_worst_site": float(known_site.min()) if known_site.size else float("nan"),
        "loss": float(np.average(losses, weights=weights)) if weights.sum() > 0 else float("nan"),
        "num_sites": len(eval_reports),
    }


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    counts = np.sum(~np.isnan(values), axis=axis)
    sums = np.nansum(values, axis=axis)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _privacy(run: RunSettings, reports: list[SiteReport]) -> dict[str, Any]:
    privacy: dict[str, Any] = {"secagg": run.secagg, "dp": run.dp_enabled}
    if run.secagg:
        privacy |= {
            "secagg_num_shares": run.secagg_num_shares,
            "secagg_threshold": run.secagg_threshold,
        }
    if run.dp_enabled:
        sigmas = [float(r.metrics["dp-sigma"]) for r in reports if "dp-sigma" in r.metrics]
        privacy |= {
            "dp_clip": run.dp_clip,
            "dp_epsilon_per_round": run.dp_epsilon,
            "dp_delta_per_round": run.dp_delta,
            "dp_sigma": sigmas[0] if sigmas else None,
        }
    return privacy
