"""The node's own HTTP clients send tokens: `node capture` and `node reconcile|outbox`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.auth.policy import parse_scopes
from node.settings import load_settings
from tests.conftest import REPO_ROOT, SHARED_DATA
from tests.node.authhelpers import account_token
from tests.node.conftest import RunningNode, start_node

ISSUER = "https://pacs.hospital-a.test"
ENV = {"NODE_AUTH_ENABLED": "true", "NODE_TOKEN_ISSUER": ISSUER}


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    node = start_node(tmp_path_factory.mktemp("clients") / "node", env=ENV)
    yield node
    node.stop()


def _token(node: RunningNode, role: str, scope: str | None = None) -> str:
    settings = load_settings(data_dir=node.data_dir, token_issuer=ISSUER)
    scopes = parse_scopes(scope) if scope else None
    return account_token(settings, f"{role}-t", role, 300, scopes=scopes).access_token


def _pacsmesh(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PACSMESH_TOKEN"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if token is not None:
        env["PACSMESH_TOKEN"] = token
    cmd = [sys.executable, "-m", "node.cli", "node", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_admin_commands_need_an_admin_token(auth_node: RunningNode) -> None:
    refused = _pacsmesh("reconcile", "list", "--node", auth_node.url)
    assert refused.returncode == 1
    assert "a bearer token is required" in refused.stderr
    clinician = _pacsmesh(
        "outbox", "list", "--node", auth_node.url, "--token", _token(auth_node, "clinician")
    )
    assert clinician.returncode == 1
    assert "this request needs scope user/*.read" in clinician.stderr
    ok = _pacsmesh("reconcile", "list", "--node", auth_node.url, token=_token(auth_node, "admin"))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == []


def test_capture_sends_the_devices_token(auth_node: RunningNode, tmp_path: Path) -> None:
    jpeg = next(SHARED_DATA.glob("*.jpg"), None) or _tiny_jpeg(tmp_path)
    args = ("capture", str(jpeg), "--order", "ACC-NONE", "--node", auth_node.url)
    refused = _pacsmesh(*args)
    assert refused.returncode == 1
    assert "(401)" in refused.stderr
    device = _token(auth_node, "admin", "system/ImagingStudy.write")
    # Past authorization: now the node judges the capture itself (no such order here).
    judged = _pacsmesh(*args, "--token", device)
    assert judged.returncode == 1
    assert "(401)" not in judged.stderr and "(403)" not in judged.stderr
    assert "order" in judged.stderr.lower()


def _tiny_jpeg(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "capture.jpg"
    Image.new("RGB", (16, 16), (120, 40, 40)).save(path, "JPEG")
    return path
