"""`make demo`'s command: a node comes up with the real samples and generated studies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT, SHARED_DATA
from tests.node.conftest import free_port, plaintext_findings


def test_demo_loads_samples_and_prints_urls_that_work(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "node.cli", "demo", "--shared", str(SHARED_DATA.parent)]
    cmd += ["--data-dir", str(tmp_path / "demo"), "--port", str(port), "--once"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for _ in range(2):  # a second run re-sends the same instances: still the same studies
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        # 4 real files (4 studies) + 3 generated CT studies
        assert "7 studies loaded" in result.stdout
    assert f"http://127.0.0.1:{port}/dicom-web/studies" in result.stdout
    # Default deny holds for the demo too: it loads and prints with a token of its own.
    assert "export TOKEN=ey" in result.stdout
    assert "Authorization: Bearer $TOKEN" in result.stdout
    assert not plaintext_findings(tmp_path / "demo", [b"DICM"])
