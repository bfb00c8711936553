"""What the audit trail costs a request: QIDO-RS and WADO-RS latency with and without it.

Four node processes hold the same one study: this tree's node (every request audited, the
response held until its event is durable) and a baseline tree without the audit trail (the
commit before it, exported with `git archive`), each with `auth_enabled` off and on. Requests
go round-robin to the four, so load on the machine affects them alike.

    git archive 28540e9 | (mkdir -p /tmp/audit-base && tar -x -C /tmp/audit-base)
    PYTHONPATH=$PWD python benchmarks/audit_overhead.py --baseline /tmp/audit-base --requests 300
    # the same with the data on tmpfs, where a commit's flush costs nothing:
    PYTHONPATH=$PWD python benchmarks/audit_overhead.py --baseline /tmp/audit-base \
        --data-root /dev/shm

Issue #6 target: authorization + audit under 1 ms at p50 on QIDO-RS and WADO-RS.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydicom import dcmread
from pydicom.data import get_testdata_file

from node.auth.tokens import NodeTokens
from node.auth.users import add_user
from node.settings import load_settings
from node.storage.db import open_index

ISSUER = "https://bench.node.test"
HERE = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(code: Path, data_dir: Path, auth: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "NODE_AUTH_ENABLED": str(auth).lower(),
        "NODE_TOKEN_ISSUER": ISSUER,
    }
    cmd = [sys.executable, "-m", "node.cli", "node", "serve", "--data-dir", str(data_dir)]
    cmd += ["--port", str(port), "--dimse-port", "0", "--hl7-port", "0"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("node did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=Path, required=True, help="tree without the audit")
    parser.add_argument("--requests", type=int, default=300, help="per configuration and route")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where the nodes' data directories go (e.g. /dev/shm: no disk flush, which "
        "isolates the software cost of the audit from the cost of a durable commit)",
    )
    args = parser.parse_args()
    path = Path(str(get_testdata_file("CT_small.dcm")))
    ct, ds = path.read_bytes(), dcmread(path)
    wado = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    routes = {"qido": "/dicom-web/studies?PatientID=1CT1", "wado": wado}
    boundary = "benchboundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + ct
        + f"\r\n--{boundary}--\r\n".encode()
    )
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    configs = [(tree, auth) for tree in ("baseline", "audit") for auth in (False, True)]
    timings: dict[tuple[str, bool, str], list[float]] = {
        (t, a, r): [] for t, a in configs for r in routes
    }
    with tempfile.TemporaryDirectory(dir=args.data_root) as tmp:
        nodes: dict[tuple[str, bool], tuple[subprocess.Popen[bytes], str]] = {}
        headers: dict[tuple[str, bool], dict[str, str]] = {}
        try:
            for tree, auth in configs:
                data_dir = Path(tmp) / f"{tree}-{auth}"
                settings = load_settings(data_dir=data_dir, token_issuer=ISSUER)
                if tree == "audit":  # this tree refuses tokens without an account
                    data_dir.mkdir(parents=True)
                    engine = open_index(settings.index_url)
                    add_user(engine, "bench", "admin")
                    engine.dispose()
                tokens = NodeTokens.from_settings(settings)
                token = tokens.issue(subject="bench", role="admin", ttl_seconds=3600)
                headers[tree, auth] = (
                    {"Authorization": f"Bearer {token.access_token}"} if auth else {}
                )
                code = HERE if tree == "audit" else args.baseline
                nodes[tree, auth] = _start(code, data_dir, auth)
                r = httpx.post(
                    f"{nodes[tree, auth][1]}/dicom-web/studies",
                    content=body,
                    headers={"Content-Type": ctype, **headers[tree, auth]},
                    timeout=60,
                )
                r.raise_for_status()
            with httpx.Client(timeout=30) as client:
                for i in range(args.requests + 30):
                    for route, suffix in routes.items():
                        for config in configs:
                            url = nodes[config][1] + suffix
                            t0 = time.perf_counter()
                            r = client.get(url, headers=headers[config])
                            elapsed = (time.perf_counter() - t0) * 1e3
                            assert r.status_code == 200, (config, route, r.status_code)
                            if i >= 30:  # warm-up
                                timings[config[0], config[1], route].append(elapsed)
        finally:
            for proc, _ in nodes.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    p50 = {k: statistics.median(v) for k, v in timings.items()}
    report: dict[str, float] = {}
    for route in routes:
        for tree, auth in configs:
            report[f"{route}_p50_ms_{tree}_auth_{'on' if auth else 'off'}"] = round(
                p50[tree, auth, route], 3
            )
        report[f"{route}_audit_overhead_ms_auth_off"] = round(
            p50["audit", False, route] - p50["baseline", False, route], 3
        )
        report[f"{route}_audit_overhead_ms_auth_on"] = round(
            p50["audit", True, route] - p50["baseline", True, route], 3
        )
        report[f"{route}_auth_plus_audit_overhead_ms"] = round(
            p50["audit", True, route] - p50["baseline", False, route], 3
        )
    report["load_average"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
