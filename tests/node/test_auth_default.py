"""Auth is on unless a developer turns it off: refused in production, loud when off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from node.app import create_app
from node.settings import NodeSettings, load_settings
from tests.conftest import REPO_ROOT
from tests.node.authhelpers import account_token, serve_in_thread
from tests.node.conftest import free_port, start_node


def test_a_node_enforces_tokens_without_being_told_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NODE_AUTH_ENABLED", raising=False)
    settings = NodeSettings(data_dir=tmp_path / "node", dimse_port=0, hl7_port=0)
    assert settings.auth_enabled
    with serve_in_thread(create_app(settings)) as url:
        r = httpx.get(f"{url}/dicom-web/studies", timeout=30)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="pacsmesh"'
        token = account_token(settings, "alice", "clinician", 60)
        authorized = {"Authorization": f"Bearer {token.access_token}"}
        # An empty archive: 204 (PS3.18 §8.3.4.3), not a refusal.
        assert httpx.get(f"{url}/dicom-web/studies", headers=authorized).status_code == 204
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200


def test_production_refuses_to_run_without_tokens(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="production nodes must enforce bearer tokens"):
        load_settings(
            data_dir=tmp_path, environment="production", kek_source="env:KEK", auth_enabled=False
        )
    # The same settings with auth on are fine.
    load_settings(data_dir=tmp_path, environment="production", kek_source="env:KEK")

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "NODE_ENVIRONMENT": "production",
        "NODE_KEK_SOURCE": "env:PACSMESH_TEST_KEK",
        "NODE_AUTH_ENABLED": "false",
    }
    cmd = [sys.executable, "-m", "node.cli", "node", "serve", "--data-dir", str(tmp_path / "n")]
    cmd += ["--port", str(free_port()), "--dimse-port", "0", "--hl7-port", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "production nodes must enforce bearer tokens" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_node_started_without_auth_says_so(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node", env={"NODE_AUTH_ENABLED": "false"})
    try:
        assert httpx.get(f"{node.dicomweb}/studies", timeout=30).status_code == 204
    finally:
        node.stop()
    assert "AUTHENTICATION IS OFF" in node.log()
