"""SecAgg+ (Bell et al., 2020) through Flower's SecAgg+ workflow and client mod.

With SecAgg+ the server learns only the sample-weighted *sum* of the sites' updates: each site
masks its quantised update with pairwise masks that cancel in the sum and a private mask whose
seed is secret-shared among its neighbours, so dropped sites can still be unmasked.

Flower implements the protocol as a legacy-strategy workflow (``SecAggPlusWorkflow``) and a
client mod (``secaggplus_mod``). This module adapts them to pacsmesh's Message-API round loop:
one SecAgg+ training round at a time, with the round's model, config and sites chosen by the
ServerApp. Sites send their *update* (local - global), not their weights.

Precision: a site multiplies its update by its weight ``w = num_examples / max_weight`` and the
protocol clips ``w * update`` to +-clipping_range and quantises it to ``quantization_range``
levels; the server divides the unmasked sum by the total weight. The error per parameter is
about ``2 * clipping_range / quantization_range / sum(w)`` (~1e-6 with the defaults and a few
dozen examples per site). The modulus (2**32) bounds the sum: with 2**24 levels up to 256 sites.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from federated.packing import Layout
from federated.strategies.base import EVALUATED_MODEL_KEY, SiteReport


def optional_secaggplus_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run Flower's SecAgg+ client mod only for SecAgg+ protocol messages.

    The same ClientApp serves plain rounds and SecAgg+ rounds; SecAgg+ messages carry the
    protocol's ConfigRecord, plain ones do not.
    """
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


class _RoundAdapter(LegacyStrategy):
    """A one-round legacy strategy: hands the workflow our sites and keeps its aggregate."""

    def __init__(self, node_ids: Sequence[int], config: dict[str, Scalar]) -> None:
        self.node_ids = set(node_ids)
        self.config = config
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.failures: list[Any] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Unused: the ServerApp owns the global model."""
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Every site the ServerApp sampled trains on the current global model."""
        proxies = [p for p in client_manager.all().values() if _node_id(p) in self.node_ids]
        return [(p, FitIns(parameters, dict(self.config))) for p in proxies]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """The workflow already put the unmasked weighted mean into every result."""
        self.results, self.failures = results, failures
        if not results:
            return None, {}
        return results[0][1].parameters, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Unused: evaluation runs as a plain Message-API round."""
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[Any],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Unused."""
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Unused."""
        return None


def _node_id(proxy: ClientProxy) -> int:
    return int(cast(GridClientProxy, proxy).node_id)


def secagg_train_round(
    grid: Grid,
    context: Context,
    server_round: int,
    arrays: ArrayRecord,
    layout: Layout,
    config: ConfigRecord,
    node_ids: Sequence[int],
    num_shares: int,
    threshold: int,
    clipping_range: float,
    quantization_range: int,
    max_weight: float,
    timeout: float,
) -> tuple[ArrayRecord | None, list[SiteReport], list[int]]:
    """Run one SecAgg+ training round; return the new global arrays and per-site reports.

    The returned arrays are ``global + weighted mean of the sites' updates``; ``None`` when the
    protocol could not finish (too few sites left to reconstruct the masks). The model and the
    updates travel packed (``layout``: one array per dtype); the protocol's clipping,
    quantisation and masks are elementwise, so packing changes the object count, not the sum.
    """
    manager = SimpleClientManager()
    for node_id in node_ids:
        manager.register(GridClientProxy(node_id, grid, grid.run.run_id))
    config_dict: dict[str, Scalar] = {k: cast(Scalar, v) for k, v in config.items()}
    config_dict["server-round"] = server_round
    adapter = _RoundAdapter(node_ids, config_dict)
    legacy = LegacyContext(
        context,
        config=ServerConfig(num_rounds=server_round),
        strategy=adapter,
        client_manager=manager,
    )
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: server_round}
    )
    base = layout.pack({k: v.numpy() for k, v in arrays.items()})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord(
        {k: Array(v) for k, v in base.items()}
    )
    workflow = SecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=threshold,
        max_weight=max_weight,
        clipping_range=clipping_range,
        quantization_range=quantization_range,
        timeout=timeout,
    )
    try:
        workflow(grid, legacy)
    finally:
        # The legacy records live in the shared server context; do not leak them into the next
        # round (a stale aggregate would survive a failed round).
        legacy.state.config_records.pop(MAIN_CONFIGS_RECORD, None)
        legacy.state.array_records.pop(MAIN_PARAMS_RECORD, None)

    reports = [
        SiteReport(
            site_id=str(fitres.metrics.get("site-id", f"node-{_node_id(proxy)}")),
            node_id=_node_id(proxy),
            metrics={
                k: v for k, v in fitres.metrics.items() if k not in ("site-id", EVALUATED_MODEL_KEY)
            }
            | {"num-examples": fitres.num_examples},
            evaluated_model=str(fitres.metrics.get(EVALUATED_MODEL_KEY, "")),
        )
        for proxy, fitres in adapter.results
    ]
    reports.sort(key=lambda r: r.site_id)
    reported = {r.node_id for r in reports}
    failed = sorted(set(node_ids) - reported)
    if not adapter.results:
        return None, reports, failed
    mean_update = parameters_to_ndarrays(adapter.results[0][1].parameters)
    buffers = layout.buffer_list(base)
    if [u.size for u in mean_update] != [b.size for b in buffers]:
        raise RuntimeError(
            f"SecAgg+ returned arrays of {[u.size for u in mean_update]} values, "
            f"the packed model has {[b.size for b in buffers]}"
        )
    summed: list[np.ndarray] = []
    for buffer, update in zip(buffers, mean_update, strict=True):
        new = buffer.astype(np.float64) + update.reshape(buffer.shape)
        if np.issubdtype(buffer.dtype, np.integer):
            new = np.rint(new)
        summed.append(new.astype(buffer.dtype))
    out = ArrayRecord({k: Array(v) for k, v in layout.unpack_list(summed)})
    return out, reports, failed


def fitres_reply(
    msg: Message, update: Sequence[np.ndarray], num_examples: int, metrics: dict[str, Scalar]
) -> Message:
    """Build the legacy FitRes reply that Flower's SecAgg+ client mod masks and sends."""
    from flwr.common import Code, Status
    from flwr.compat.common import recorddict_compat as compat

    fitres = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters([np.asarray(u, dtype=np.float32) for u in update]),
        num_examples=num_examples,
        metrics=metrics,
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


def fitins_arrays(msg: Message) -> tuple[list[np.ndarray], dict[str, Scalar]] | None:
    """The global arrays and config of a SecAgg+ train message, or None for a plain one."""
    if "fitins.parameters" not in msg.content.array_records:
        return None
    from flwr.compat.common import recorddict_compat as compat

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    return parameters_to_ndarrays(fitins.parameters), dict(fitins.config)
