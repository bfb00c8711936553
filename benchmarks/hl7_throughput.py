"""HL7 v2 messages processed per second by a real node over real MLLP sockets.

Starts `pacsmesh node serve --hl7-port` on loopback (SQLite index, fsync as configured), then
sends an ADT + ORM mix — each pair an ADT^A04 registering a new patient and an ORM^O01 NW
placing an order for them, so every message is a committed write — with the `hl7` package's
MLLP client, waiting for each ACK (original acknowledgement mode, as an interface engine does).
Measured on one connection, then on several connections in parallel. Every ACK must be AA.

Run from the repository root:
    PYTHONPATH=$PWD python benchmarks/hl7_throughput.py [--messages 2000] [--connections 4]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/EMPTY_DB]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from hl7.client import MLLPClient

from tests.node.conftest import free_port
from tests.node.hl7_support import adt, orm, parse_ack


def _start(
    data_dir: Path, http_port: int, hl7_port: int, fsync: bool, database_url: str | None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "NODE_FSYNC": "true" if fsync else "false"}
    env["NODE_AUTH_ENABLED"] = "false"  # measures HL7 ingest; auth_overhead.py measures auth
    cmd = [sys.executable, "-m", "node.cli", "node", "serve", "--data-dir", str(data_dir)]
    cmd += ["--port", str(http_port), "--hl7-port", str(hl7_port), "--dimse-port", "0"]
    if database_url:
        cmd += ["--database-url", database_url]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("node did not start")


def _messages(prefix: str, pairs: int) -> list[str]:
    out = []
    for i in range(pairs):
        mrn = f"{prefix}M{i}"
        out.append(adt("A04", control=f"{prefix}A{i}", mrn=mrn))
        out.append(orm(f"{prefix}{i:06d}"[-16:], control=f"{prefix}O{i}", mrn=mrn))
    return out


def _send_all(port: int, messages: list[str], failures: list[str]) -> None:
    with MLLPClient("127.0.0.1", port) as client:
        for text in messages:
            ack = parse_ack(client.send_message(text))
            if str(ack.segment("MSA")[1]) != "AA":
                failures.append(str(ack.segment("ERR")))


def run(port: int, messages: int, connections: int, tag: str) -> dict[str, float]:
    """Send `messages` (half ADT, half ORM) over `connections` connections; messages/s."""
    per = messages // connections // 2
    batches = [_messages(f"{tag}{c}X", per) for c in range(connections)]
    failures: list[str] = []
    threads = [threading.Thread(target=_send_all, args=(port, b, failures)) for b in batches]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} messages not accepted, first: {failures[0]}")
    sent = per * 2 * connections
    return {
        "connections": connections,
        "messages": sent,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(sent / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--no-fsync", action="store_true", help="NODE_FSYNC=false")
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        http_port, hl7_port = free_port(), free_port()
        proc = _start(Path(tmp) / "node", http_port, hl7_port, not args.no_fsync, args.database_url)
        try:
            run(hl7_port, 100, 1, "W")  # warm-up: imports, connection pool, SQLite pages
            results = [
                run(hl7_port, args.messages, 1, "S"),
                run(hl7_port, args.messages, args.connections, "P"),
            ]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
