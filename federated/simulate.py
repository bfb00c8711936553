"""A whole federation on one machine: Flower's simulation runtime with an in-process backend.

Flower's simulation runtime (``flwr.server.superlink.fleet.vce``) moves Messages between an
in-memory SuperLink state and virtual SuperNodes; its only shipped backend runs ClientApps in Ray
actors, and Ray is not installed here (nor worth its start-up cost on two cores). This module
keeps Flower's runtime — in-memory link state, ``InMemoryGrid``, the ``run_api`` worker loop,
the real ServerApp and ClientApp objects — and plugs in a backend that calls the ClientApp in
the worker thread. One worker: sites train one after another, each using every core.
"""

from __future__ import annotations

import copy
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from federated.run_config import FederatedConfigError, RunSettings
from federated.run_log import RoundRecord
from federated.server_app import FederationResult, run_federation


class SimulationError(RuntimeError):
    """The simulated federation could not run (exit code 5 on the CLI)."""

    exit_code = 5


@dataclass(frozen=True)
class Site:
    """One simulated hospital: its id and where its images come from."""

    site_id: str
    data_source: str


@dataclass
class MessageTiming:
    """How long one ClientApp call took, and how many array bytes it returned."""

    site_id: str
    message_type: str
    seconds: float
    reply_bytes: int


@dataclass
class SimulationResult:
    """A finished simulated run: the ServerApp's result plus ClientApp timings."""

    federation: FederationResult
    timings: list[MessageTiming] = field(default_factory=list)


def discover_sites(data_dir: Path) -> list[Site]:
    """The sites of a synthetic (or hand-made) data dir: one sub-folder per hospital."""
    if not data_dir.is_dir():
        raise SimulationError(f"data dir {data_dir} does not exist")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise SimulationError(f"{data_dir} has no site folders (expected site-1, site-2, ...)")
    return [Site(site_id=p.name, data_source=str(p.resolve())) for p in folders]


class InProcessBackend:
    """A Flower simulation backend that runs the ClientApp in the calling thread.

    ``unavailable`` simulates outages: site id -> first round from which the site's every
    message fails, as a SuperNode that lost its network would (a drill for dropped sites).
    """

    def __init__(
        self,
        unavailable: Mapping[str, int] | None = None,
        on_timing: Callable[[MessageTiming], None] | None = None,
    ) -> None:
        self.unavailable = dict(unavailable or {})
        self.on_timing = on_timing
        self._app_fn: Callable[[], ClientApp] | None = None
        self._lock = threading.Lock()

    @property
    def num_workers(self) -> int:
        """One ClientApp at a time."""
        return 1

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        """Keep the loader of the ClientApp."""
        self._app_fn = app_fn

    def is_worker_idle(self) -> bool:
        """The single worker is idle unless it holds the lock."""
        return not self._lock.locked()

    def terminate(self) -> None:
        """Nothing to release."""

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        """Run the ClientApp on one Message."""
        if self._app_fn is None:
            raise SimulationError("backend used before build()")
        site_id = str(context.node_config.get("site-id", ""))
        server_round = _round_of(message)
        down_from = self.unavailable.get(site_id)
        if down_from is not None and server_round >= down_from:
            raise ConnectionError(f"{site_id} is unavailable from round {down_from}")
        # A real SuperNode receives its own deserialised copy; Flower's SecAgg+ workflow sends one
        # shared RecordDict to every site and the client mod mutates it, so copy like a wire.
        message = copy.deepcopy(message)
        with self._lock:
            started = time.perf_counter()
            reply = self._app_fn()(message, context)
            elapsed = time.perf_counter() - started
        if self.on_timing is not None:
            size = sum(r.count_bytes() for r in reply.content.array_records.values())
            self.on_timing(MessageTiming(site_id, message.metadata.message_type, elapsed, size))
        return reply, context


def _round_of(message: Message) -> int:
    group = message.metadata.group_id
    if group.isdigit():
        return int(group)
    for record in message.content.config_records.values():
        value = record.get("server-round")
        if isinstance(value, int):
            return value
    return 0


def simulate(
    sites: Sequence[Site],
    run: RunSettings,
    on_round: Callable[[RoundRecord], None] | None = None,
    unavailable: Mapping[str, int] | None = None,
    state_root: Path | None = None,
) -> SimulationResult:
    """Run the pacsmesh ServerApp against one virtual SuperNode per site; block until done."""
    if len(sites) < run.min_available_nodes:
        raise FederatedConfigError(
            f"{len(sites)} site(s) given but min-available-nodes is {run.min_available_nodes}"
        )
    from flwr.common.constant import HEARTBEAT_INTERVAL_INF
    from flwr.compat.client.run_info_store import DeprecatedRunInfoStore, RunInfo
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.metrics import VceMetrics
    from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    from federated.client_app import app as client_app

    run_config = run.to_run_config()
    state_factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    state = state_factory.state()
    assert isinstance(state, InMemoryLinkState)
    flwr_run = Run.create_empty(run_id=secrets.randbits(63) or 1)
    flwr_run.primary_task_id = secrets.randbits(63) or 1
    flwr_run.federation = NOOP_FEDERATION
    flwr_run.override_config = dict(run_config)
    state.run_ids[flwr_run.run_id] = RunRecord(run=flwr_run)
    state.task_store[flwr_run.primary_task_id] = Task(
        task_id=flwr_run.primary_task_id, run_id=flwr_run.run_id
    )

    base_state = state_root or (Path(run.run_dir) / "sites" if run.run_dir else None)
    nodes_mapping: dict[int, int] = {}
    stores: dict[int, DeprecatedRunInfoStore] = {}
    for index, site in enumerate(sites):
        node_id = state.create_node(
            "pacsmesh-simulation", site.site_id, secrets.token_bytes(32), HEARTBEAT_INTERVAL_INF
        )
        state.acknowledge_node_heartbeat(node_id=node_id, heartbeat_interval=HEARTBEAT_INTERVAL_INF)
        nodes_mapping[node_id] = index
        node_config: dict[str, Any] = {
            "site-id": site.site_id,
            "data-source": site.data_source,
            "partition-id": index,
            "num-partitions": len(sites),
        }
        if base_state is not None:
            node_config["state-dir"] = str(base_state / site.site_id)
        store = DeprecatedRunInfoStore(node_id=node_id, node_config=node_config)
        store.run_infos[flwr_run.run_id] = RunInfo(
            initial_run_config=dict(run_config),
            context=Context(
                run_id=flwr_run.run_id,
                node_id=node_id,
                node_config=node_config,
                state=RecordDict(),
                run_config=dict(run_config),
            ),
        )
        stores[node_id] = store

    grid = InMemoryGrid(state_factory=state_factory)
    grid.set_run(flwr_run)
    server_context = Context(
        run_id=flwr_run.run_id,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config=dict(run_config),
    )
    timings: list[MessageTiming] = []
    backend = InProcessBackend(unavailable=unavailable, on_timing=timings.append)
    outcome: dict[str, Any] = {}
    f_stop = threading.Event()

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome["result"] = run_federation(grid, context, run, on_round=on_round)

    def serve() -> None:
        try:
            server_app(grid=grid, context=server_context)
        except BaseException as exc:  # re-raised in the caller's thread below
            outcome["error"] = exc
        finally:
            f_stop.set()

    server_thread = threading.Thread(target=serve, name="pacsmesh-serverapp", daemon=True)
    server_thread.start()
    vce_api.run_api(
        lambda: client_app,
        lambda: backend,  # type: ignore[arg-type,return-value]
        nodes_mapping,
        state_factory,
        stores,
        f_stop,
        VceMetrics(),
    )
    server_thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return SimulationResult(federation=outcome["result"], timings=timings)
