"""The ports tests hand their servers: never one that is taken, never the same for two workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.conftest import REPO_ROOT
from tests.ports import free_port


def test_a_port_in_use_is_never_handed_out() -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(50):
            port = free_port()
            listener = socket.socket()
            listener.bind(("127.0.0.1", port))  # raises if free_port gave a taken port
            listener.listen()
            held.append(listener)
        assert len({s.getsockname()[1] for s in held}) == 50
    finally:
        for listener in held:
            listener.close()


def _ports_of(worker: str, count: int) -> set[int]:
    """The ports a worker process of `count` workers hands out first."""
    code = "from tests.ports import free_port; print(*(free_port() for _ in range(200)))"
    env = {**os.environ, "PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": str(count)}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return {int(p) for p in done.stdout.split()}


def test_two_workers_never_share_a_port() -> None:
    first, second = _ports_of("gw0", 2), _ports_of("gw1", 2)
    assert len(first) == len(second) == 200
    assert max(first) < min(second)  # each worker has a range of its own
    # The slices keep out of the kernel's ephemeral range, where outgoing connections live.
    assert max(first | second) < 32768
