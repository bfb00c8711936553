"""Loopback ports for the servers the tests start, disjoint between pytest-xdist workers.

A test picks a port before the process that listens on it (a node, anvil, Orthanc, a Flower
SuperLink) has started; until that process binds it, the kernel may hand the same port to
another worker's bind(0), and one of the two servers then fails to start. So each worker takes
ports from a slice of its own, below the kernel's ephemeral range (where outgoing connections
take theirs), in turn from a random start (two runs on one machine start far apart), and skips
any port that something already holds.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket

# Below Linux's default ephemeral range (32768-60999).
PORTS = range(20000, 32768)


def worker_ports() -> range:
    """This process's slice of PORTS: worker gwN of M takes the N-th of M equal slices."""
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = len(PORTS) // count
    return PORTS[index * size : (index + 1) * size]


_SLICE = worker_ports()
_START = secrets.randbelow(len(_SLICE))
_TURN = itertools.count()  # next() on it is atomic: threads never get the same turn


def free_port() -> int:
    """A loopback TCP port that nothing holds and this process has not handed out lately."""
    for _ in range(len(_SLICE)):
        port = _SLICE[(_START + next(_TURN)) % len(_SLICE)]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or closing (TIME_WAIT)
        return port
    raise RuntimeError(f"no free loopback port in {_SLICE}")
