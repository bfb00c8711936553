"""`pacsmesh node serve` and TLS: production refuses to serve in clear, and TLS mistakes stop the
node before it opens anything, with a message naming the setting to fix.

Serving HTTPS with consortium mutual TLS is exercised end to end by tests/system (real
`node serve` processes, CA-issued certificates, peers refused or admitted).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def serve(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "node.cli", "node", "serve", "--data-dir", str(data_dir)]
    cmd += ["--port", "0", "--dimse-port", "0", "--hl7-port", "0", *args]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NODE_")}
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**clean, "PYTHONPATH": str(REPO_ROOT), **env},
        timeout=120,
    )


def test_production_node_refuses_to_serve_without_tls(tmp_path: Path) -> None:
    done = serve(
        tmp_path / "node", NODE_ENVIRONMENT="production", NODE_KEK_SOURCE="env:PACSMESH_KEK"
    )
    assert done.returncode == 2
    assert "production nodes serve HTTPS only" in done.stderr
    assert "--tls-cert" in done.stderr and "tls_ca_cert" in done.stderr
    assert not (tmp_path / "node").exists(), "nothing may be created before the refusal"


def test_unreadable_or_broken_tls_files_are_named_and_nothing_is_opened(tmp_path: Path) -> None:
    cert = tmp_path / "node.crt"
    cert.write_text("not a certificate")
    done = serve(
        tmp_path / "node", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "absent.key")
    )
    assert done.returncode == 2
    assert f"tls_key: cannot read {tmp_path / 'absent.key'}" in done.stderr
    assert not (tmp_path / "node").exists()
    (tmp_path / "node.key").write_text("not a key either")
    done = serve(
        tmp_path / "node", "--tls-cert", str(cert), "--tls-key", str(tmp_path / "node.key")
    )
    assert done.returncode == 2
    assert "tls_cert/tls_key: cannot load them: each must be PEM" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "node").exists()


def test_mutual_tls_needs_the_nodes_own_certificate(tmp_path: Path) -> None:
    done = serve(tmp_path / "node", "--tls-ca-cert", str(tmp_path / "ca.crt"))
    assert done.returncode == 2
    assert "tls_ca_cert (mutual TLS) needs the node's tls_cert and tls_key" in done.stderr
    done = serve(tmp_path / "node", "--tls-client-cert", "sometimes")
    assert done.returncode == 2 and "tls_client_cert" in done.stderr
