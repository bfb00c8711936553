"""The pacsmesh ClientApp: one hospital's side of a round, on that hospital's data only.

A train message carries the global model and the round's config; the site loads its own data
source (named in its node config, e.g. its node's DICOMweb), trains locally and replies with its
model (or, under SecAgg+, a masked update). An evaluate message asks the site to score the
global model on its validation split; AUROC is computed here, at the site, so only summary
numbers leave the hospital. A train message flagged ``evaluate-first`` asks for both in one
exchange: the site scores the model it received (the previous round's aggregate) *before*
training on it and replies with those metrics (``eval-`` keys) beside its update.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn
from torch.utils.data import DataLoader, Dataset

from federated.data import ChestXrayDataset
from federated.packing import LAYOUT_CONFIG_KEY, Layout, PackingError
from federated.run_config import NodeSettings, RunSettings
from federated.strategies.base import (
    EVALUATE_FIRST_KEY,
    EVALUATED_MODEL_KEY,
    SITE_RECORD,
    flatten_eval_metrics,
)
from federated.strategies.fedbn import FEDBN_CONFIG_KEY, batchnorm_keys
from federated.strategies.privacy import privatize_update
from federated.strategies.secagg import fitins_arrays, fitres_reply, optional_secaggplus_mod

app = ClientApp()

# In the simulation engine every site's ClientApp runs in one process; decoding a site's DICOM
# once per run instead of once per message is most of a short round's time.
_DATASETS: dict[tuple[str, int, str, int, float], ChestXrayDataset] = {}
BN_STATE_FILE = "fedbn-local-bn.pt"


def load_split(node: NodeSettings, run: RunSettings, split: str) -> ChestXrayDataset:
    """The site's train or validation split, cached per process."""
    key = (node.data_source, run.image_size, split, run.seed, run.val_fraction)
    if key not in _DATASETS:
        from federated.data import load_site

        dicomweb = node.data_source.startswith("dicomweb:")
        _DATASETS[key] = load_site(
            node.data_source,
            run.image_size,
            split=split,
            seed=run.seed,
            val_fraction=run.val_fraction,
            token=node.token() if dicomweb else None,
            cache_dir=node.cache_dir if dicomweb else None,
            labels=node.labels,
        )
    return _DATASETS[key]


def _loader(dataset: Dataset[Any], run: RunSettings, shuffle: bool, round_: int) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(run.seed * 1000 + round_)
    return DataLoader(dataset, batch_size=run.batch_size, shuffle=shuffle, generator=generator)


def _receive(
    run: RunSettings,
    packed: dict[str, np.ndarray] | Sequence[np.ndarray],
    config: dict[str, Any],
) -> tuple[nn.Module, Layout, list[tuple[str, np.ndarray]]]:
    """Build the run's model, unpack the global weights into it; return the received tensors.

    ``packed`` is the message's buffers by wire key, or in layout order (a SecAgg+ message's
    legacy parameter list).

    The layout comes from this site's own model; the server's digest in the config must match,
    or the weights would land in the wrong tensors (a site on another pacsmesh version).
    """
    from federated.task import build_model

    model = build_model(run.model, run.image_size)
    state = model.state_dict()
    layout = Layout.of((k, v.detach().numpy()) for k, v in state.items())
    sent = config.get(LAYOUT_CONFIG_KEY)
    if sent != layout.digest():
        raise PackingError(
            f"the server's model layout ({str(sent)[:12]}) differs from this site's "
            f"{run.model} at {run.image_size} px ({layout.digest()[:12]})"
        )
    received = layout.unpack(packed) if isinstance(packed, dict) else layout.unpack_list(packed)
    # load_state_dict copies into the model's own tensors, so views of the buffers suffice.
    model.load_state_dict({k: torch.from_numpy(v) for k, v in received}, strict=True)
    return model, layout, received


def _restore_local_bn(model: nn.Module, state_dir: Path) -> None:
    """FedBN: put this site's own BatchNorm state back over the global one, if it has any."""
    path = state_dir / BN_STATE_FILE
    if path.exists():
        local = torch.load(path, weights_only=True)
        model.load_state_dict(local, strict=False)


def _save_local_bn(model: nn.Module, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    local = {k: state[k].detach().clone() for k in batchnorm_keys(model)}
    tmp = state_dir / (BN_STATE_FILE + ".tmp")
    torch.save(local, tmp)
    tmp.replace(state_dir / BN_STATE_FILE)


def _apply_threads(node: NodeSettings) -> None:
    if node.torch_threads > 0 and torch.get_num_threads() != node.torch_threads:
        torch.set_num_threads(node.torch_threads)


def _site_record(node: NodeSettings, evaluated_model: str = "") -> ConfigRecord:
    record = ConfigRecord({"site-id": node.site_id})
    if evaluated_model:
        record[EVALUATED_MODEL_KEY] = evaluated_model
    return record


def _received_hash(received: list[tuple[str, np.ndarray]]) -> str:
    """SHA-256 of the global model as received (before FedBN puts local BN over it).

    The server logs a metric against the model whose hash the site reports here, so a metric can
    only ever be attributed to the model that was really scored.
    """
    from federated.task import model_hash

    return model_hash([v for _, v in received])


def _score(model: nn.Module, node: NodeSettings, run: RunSettings) -> dict[str, Any]:
    """Loss and per-finding AUROC of ``model`` on this site's validation split."""
    from federated.metrics import site_auroc
    from federated.task import FINDINGS
    from federated.task import evaluate as evaluate_model

    dataset = load_split(node, run, "val")
    started = time.perf_counter()
    loss, probs, labels = evaluate_model(model, _loader(dataset, run, shuffle=False, round_=0))
    seconds = time.perf_counter() - started
    values, _ = site_auroc(probs, labels)
    # NaN marks a finding with one class only in this site's split: AUROC is undefined there.
    per_finding = [float(values.get(f, float("nan"))) for f in FINDINGS]
    known = [a for a in per_finding if not np.isnan(a)]
    return {
        "num-examples": len(dataset),
        "loss": float(loss),
        "eval-seconds": seconds,
        "auroc-macro": float(np.mean(known)) if known else float("nan"),
        "auroc": per_finding,
    }


@app.train(mods=[optional_secaggplus_mod])
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this site's data and reply with the result."""
    from federated.task import train as train_model

    run = RunSettings.from_run_config(context.run_config)
    node = NodeSettings.from_node_config(context.node_config, context.node_id)
    _apply_threads(node)
    secagg_in = fitins_arrays(msg)
    config: dict[str, Any]
    if secagg_in is not None:
        buffers, secagg_config = secagg_in
        config = dict(secagg_config)
        model, layout, received = _receive(run, buffers, config)
    else:
        arrays = msg.content.array_records["arrays"]
        config = dict(msg.content.config_records["config"].items())
        packed = {k: v.numpy() for k, v in arrays.items()}
        model, layout, received = _receive(run, packed, config)
    keys = layout.names
    server_round = int(config.get("server-round", 0))
    fedbn = bool(config.get(FEDBN_CONFIG_KEY, False))

    if fedbn:
        _restore_local_bn(model, node.state_dir)
    # Scored before training touches it, in eval mode under no_grad: exactly what a separate
    # evaluate message would have measured; it changes neither the update nor its DP clipping.
    scored: dict[str, Any] = {}
    evaluated_model = ""
    if bool(config.get(EVALUATE_FIRST_KEY, False)):
        scored = flatten_eval_metrics(_score(model, node, run))
        evaluated_model = _received_hash(received)
    global_params = [p.detach().clone() for p in model.parameters()]
    dataset = load_split(node, run, "train")
    started = time.perf_counter()
    loss = train_model(
        model,
        _loader(dataset, run, shuffle=True, round_=server_round),
        epochs=run.local_epochs,
        lr=run.lr,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        global_params=global_params,
    )
    state = model.state_dict()
    new = [state[k].detach().cpu().numpy() for k in keys]
    old = [np.asarray(v) for _, v in received]
    local_only = [False] * len(keys)
    if fedbn:
        _save_local_bn(model, node.state_dir)
        bn = set(batchnorm_keys(model))
        # The site's BN state never leaves it: reply with the BN values it was sent.
        new = [o if k in bn else n for k, n, o in zip(keys, new, old, strict=True)]
        local_only = [k in bn for k in keys]
    # Compute time as the site sees it; the benchmark subtracts it from the round's wall time
    # to get the framework's overhead (process start, serialisation, transport).
    metrics: dict[str, Any] = {
        "train-loss": float(loss),
        "num-examples": len(dataset),
        "train-seconds": time.perf_counter() - started,
    }
    metrics |= scored
    if run.dp_enabled:
        rng = np.random.default_rng(secrets.randbits(128))
        new, report = privatize_update(
            new, old, run.dp_clip, run.dp_epsilon, run.dp_delta, rng, private=local_only
        )
        metrics |= {
            "dp-sigma": report.sigma,
            "dp-norm-before": report.norm_before,
            "dp-norm-after-clip": report.norm_after_clip,
        }
    if secagg_in is not None:
        new_buffers = layout.buffer_list(layout.pack(new))
        old_buffers = layout.buffer_list(layout.pack(old))
        update = [
            n.astype(np.float64) - o.astype(np.float64)
            for n, o in zip(new_buffers, old_buffers, strict=True)
        ]
        # Under SecAgg+ only the update is masked; metrics (as a separate evaluate reply's
        # would be) travel in plain beside it.
        site = {"site-id": node.site_id} | (
            {EVALUATED_MODEL_KEY: evaluated_model} if evaluated_model else {}
        )
        return fitres_reply(msg, update, len(dataset), site | metrics)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in layout.pack(new).items()}),
            "metrics": MetricRecord(metrics),
            SITE_RECORD: _site_record(node, evaluated_model),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global model on this site's validation split."""
    run = RunSettings.from_run_config(context.run_config)
    node = NodeSettings.from_node_config(context.node_config, context.node_id)
    _apply_threads(node)
    arrays = msg.content.array_records["arrays"]
    config = dict(msg.content.config_records["config"].items())
    model, _, received = _receive(run, {k: v.numpy() for k, v in arrays.items()}, config)
    if bool(config.get(FEDBN_CONFIG_KEY, False)):
        _restore_local_bn(model, node.state_dir)
    metrics = MetricRecord(_score(model, node, run))
    site = _site_record(node, _received_hash(received))
    content = RecordDict({"metrics": metrics, SITE_RECORD: site})
    return Message(content=content, reply_to=msg)
