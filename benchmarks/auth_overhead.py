"""What authentication costs a request: token verification alone, and QIDO-RS over HTTP with
`auth_enabled` on versus off (two node processes, same data, requests interleaved).

    PYTHONPATH=$PWD python benchmarks/auth_overhead.py --requests 400

Issue #6 target: authorization + audit under 1 ms at p50 on QIDO-RS and WADO-RS (audit is not
wired yet; this measures the authentication and scope check only).
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
from pydicom.data import get_testdata_file

from node.auth.tokens import NodeTokens
from node.auth.users import TokenHolders, add_user
from node.settings import load_settings
from node.storage.db import open_index

ISSUER = "https://bench.node.test"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data_dir: Path, auth: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    env = {**os.environ, "NODE_AUTH_ENABLED": str(auth).lower(), "NODE_TOKEN_ISSUER": ISSUER}
    cmd = [sys.executable, "-m", "node.cli", "node", "serve", "--data-dir", str(data_dir)]
    cmd += ["--port", str(port), "--dimse-port", "0", "--hl7-port", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("node did not start")


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # The auth-enabled node's data directory: the node signs and checks with this key.
        data_dir = Path(tmp) / "node-True"
        settings = load_settings(data_dir=data_dir, token_issuer=ISSUER)
        data_dir.mkdir(parents=True)
        engine = open_index(settings.index_url)  # the node refuses tokens without an account
        add_user(engine, "bench", "clinician")
        tokens = NodeTokens.from_settings(settings, accounts=TokenHolders(engine))
        token = tokens.issue(subject="bench", role="clinician", ttl_seconds=3600).access_token
        verify = []  # a token seen before: the account lookup and the remembered signature
        for _ in range(2000):
            t0 = time.perf_counter()
            tokens.verify(token)
            verify.append((time.perf_counter() - t0) * 1e3)
        tokens.close()
        engine.dispose()

        ct = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
        boundary = "benchboundary"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + ct
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Authorization": f"Bearer {token}"}
        timings: dict[bool, list[float]] = {False: [], True: []}
        # Two nodes, each holding the same one study, queried alternately.
        nodes = {}
        for auth in (False, True):
            nodes[auth] = _start(Path(tmp) / f"node-{auth}", auth)
            ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
            r = httpx.post(
                f"{nodes[auth][1]}/dicom-web/studies",
                content=body,
                headers={"Content-Type": ctype, **(headers if auth else {})},
                timeout=60,
            )
            r.raise_for_status()
        try:
            with httpx.Client(timeout=30) as client:
                for i in range(args.requests * 2 + 40):
                    auth = i % 2 == 1
                    url = f"{nodes[auth][1]}/dicom-web/studies?PatientID=1CT1"
                    t0 = time.perf_counter()
                    r = client.get(url, headers=headers if auth else {})
                    elapsed = (time.perf_counter() - t0) * 1e3
                    assert r.status_code == 200, r.status_code
                    if i >= 40:  # warm-up
                        timings[auth].append(elapsed)
        finally:
            for proc, _ in nodes.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    off, on = timings[False], timings[True]
    report = {
        "verify_ms_p50": round(statistics.median(verify), 4),
        "qido_ms_p50_auth_off": round(statistics.median(off), 3),
        "qido_ms_p50_auth_on": round(statistics.median(on), 3),
        "qido_ms_p95_auth_off": round(_pct(off, 95), 3),
        "qido_ms_p95_auth_on": round(_pct(on, 95), 3),
        "p50_overhead_ms": round(statistics.median(on) - statistics.median(off), 3),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
