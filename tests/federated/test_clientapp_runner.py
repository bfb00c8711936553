"""The warm ClientApp runner passes its SuperNode's exit status on (callers rely on it)."""

from __future__ import annotations

import subprocess
import sys

from federated.deployment import flower_env


def _runner(supernode_code: str) -> subprocess.CompletedProcess[bytes]:
    runner = [sys.executable, "-m", "federated.clientapp_runner"]
    address = ["--clientappio-api-address", "127.0.0.1:9"]
    supernode = ["--", sys.executable, "-c", supernode_code]
    return subprocess.run(
        runner + address + supernode, env=flower_env(), capture_output=True, timeout=120
    )


def test_runner_exits_with_the_supernodes_status() -> None:
    done = _runner("import sys; sys.exit(3)")
    assert done.returncode == 3, done.stderr[-2000:]


def test_runner_reports_a_killed_supernode_as_failure() -> None:
    done = _runner("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert done.returncode == 128 + 9, done.stderr[-2000:]
