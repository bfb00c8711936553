"""The Deployment Engine on loopback: SuperLink + three SuperNodes, TLS, SuperNode auth.

Everything is real: Flower's SuperLink and SuperNode processes, a CA and server certificate
made at test time, EC keys registered through the Control API, the pacsmesh FAB submitted
with ``flwr run``. One run covers the consortium story: two registered sites and one whose
SuperNode is killed mid-run finish the run; an unregistered machine is refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from federated.deployment import (
    SuperLinkAddresses,
    flower_env,
    generate_dev_pki,
    generate_node_keys,
    list_supernodes,
    register_supernode,
    run_app,
    superlink_argv,
    supernode_argv,
    write_connection,
)
from federated.synth import synthesize
from tests.ports import free_port


@dataclass
class Proc:
    """A started process whose output is collected in the background."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)


def start(name: str, argv: list[str], env: dict[str, str]) -> Proc:
    popen = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    proc = Proc(name, popen)

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            proc.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc


def stop(proc: Proc, sig: int = signal.SIGTERM) -> None:
    """Stop a process we started, by its PID (and its process group: ClientApp children)."""
    if proc.popen.poll() is None:
        try:
            os.killpg(proc.popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=5)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def processes() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        stop(proc)


@pytest.mark.slow
@pytest.mark.integration
def test_tls_authenticated_consortium_survives_a_killed_site(
    tmp_path: Path, processes: list[Proc]
) -> None:
    ca, cert, key = generate_dev_pki(tmp_path / "pki")
    addresses = SuperLinkAddresses(
        fleet=f"127.0.0.1:{free_port()}",
        serverappio=f"127.0.0.1:{free_port()}",
        control=f"127.0.0.1:{free_port()}",
    )
    env = flower_env({"FLWR_HOME": str(tmp_path / "flwr-home")})
    superlink = start("superlink", superlink_argv(addresses, ca, cert, key), env)
    processes.append(superlink)
    flwr_home = tmp_path / "flwr-home"
    write_connection(flwr_home, addresses.control, ca)
    wait_for(
        lambda: "Starting Flower SuperLink" in superlink.output() and _port_open(addresses.control),
        60,
        "SuperLink",
    )

    sites = synthesize(tmp_path / "data", sites=3, per_site=20, seed=5, image_size=48)
    keys = {}
    for site in sites:
        keys[site.name] = generate_node_keys(tmp_path / "keys", site.name)
        register_supernode(flwr_home, keys[site.name][1])
    stranger_key, _ = generate_node_keys(tmp_path / "keys", "stranger")

    nodes = {}
    for site in sites:
        argv = supernode_argv(
            addresses.fleet, ca, keys[site.name][0], site.name, str(site),
            tmp_path / "state" / site.name, clientappio_address=f"127.0.0.1:{free_port()}",
        )  # fmt: skip
        nodes[site.name] = start(site.name, argv, env)
        processes.append(nodes[site.name])
    stranger = start(
        "stranger",
        supernode_argv(
            addresses.fleet, ca, stranger_key, "stranger", str(sites[0]), tmp_path / "state" / "x",
            clientappio_address=f"127.0.0.1:{free_port()}", max_wait_time=20,
        ),
        env,
    )  # fmt: skip
    processes.append(stranger)
    wait_for(
        lambda: sum(n["status"] == "online" for n in list_supernodes(flwr_home)) == 3,
        120,
        "three SuperNodes online",
    )

    run_dir = tmp_path / "run"
    config: dict[str, str | int | float | bool] = {
        "num-server-rounds": 2, "image-size": 48, "batch-size": 8, "min-available-nodes": 2,
        "min-train-nodes": 2, "round-timeout": 120.0, "run-dir": str(run_dir),
    }  # fmt: skip
    done: dict[str, object] = {}

    def submit() -> None:
        try:
            done["result"] = run_app(flwr_home, config, stream=True, timeout=400)
        except Exception as exc:
            done["error"] = exc

    runner = threading.Thread(target=submit, daemon=True)
    runner.start()
    log_path = run_dir / "run-log.jsonl"
    # Round 1 is done once its model is checkpointed (its run-log line follows with round 2's
    # replies, which carry the sites' evaluation of it).
    first = run_dir / "checkpoints" / "round-0001.npz"
    wait_for(first.exists, 300, "round 1")
    stop(nodes["site-3"], signal.SIGKILL)
    runner.join(timeout=400)
    for proc in processes:
        (tmp_path / f"{proc.name}.log").write_text(proc.output())
    print(tmp_path)
    assert "error" not in done, done
    rounds = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["server_round"] for r in rounds] == [1, 2]
    assert rounds[0]["participants"] == ["site-1", "site-2", "site-3"]
    assert rounds[1]["participants"] == ["site-1", "site-2"]
    assert len(rounds[1]["model_sha256"]) == 64
    assert rounds[1]["dropped"] == ["site-3"]
    assert rounds[1]["global_metrics"]["num_sites"] == 2
    # Round 1's model was scored in round 2's train messages, which site-3 never answered.
    assert rounds[0]["evaluation"]["sites"] == ["site-1", "site-2"]
    assert rounds[1]["evaluation"]["carried_by"] == "final-evaluate-message"
    # The unregistered SuperNode never got in: the SuperLink refused it until it gave up, and
    # the consortium only ever listed the three registered keys.
    wait_for(lambda: stranger.popen.poll() is not None, 60, "the stranger to give up")
    assert stranger.popen.returncode != 0
    assert (
        "No SuperNode found with the given public key" in superlink.output() + stranger.output()
        or "FAILED_PRECONDITION" in stranger.output()
    ), stranger.output()[-2000:]
    assert len(list_supernodes(flwr_home)) == 3


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0
