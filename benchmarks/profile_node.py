"""Profile a running pacsmesh node under the DICOMweb benchmark's workloads with py-spy.

Usage: python benchmarks/profile_node.py [--small N] [--large M] [--phases stow_small,...]
Starts a node (encryption on, default settings, SQLite) on a free loopback port, then for each
phase attaches `py-spy record` (collapsed stacks), runs that phase with the same client code as
../shared/tools/dicomweb-bench.py, and prints where the node's time went: the hottest leaf
functions (self time) and the hottest pacsmesh functions (inclusive time). Raw stacks are kept
under benchmarks/out/ for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from dicomweb_one_patient import load_tool, one_patient_per_study  # benchmarks/

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
PHASES = ("stow_small", "wado_small", "stow_large", "wado_large", "qido")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summarize(path: Path, top: int = 25) -> str:
    """Self time per leaf frame and inclusive time per pacsmesh frame, from collapsed stacks."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        self_time[frames[-1]] += n
        for frame in set(frames):
            if "(node/" in frame:
                inclusive[frame] += n
    lines = [f"{path.name}: {total} samples"]
    lines.append("  self time (leaf frames):")
    for frame, n in self_time.most_common(top):
        lines.append(f"    {100 * n / max(total, 1):5.1f}%  {frame}")
    lines.append("  inclusive time (pacsmesh frames):")
    for frame, n in inclusive.most_common(top):
        lines.append(f"    {100 * n / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--large", type=int, default=20)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--rate", type=int, default=200)
    args = ap.parse_args()
    bench: Any = load_tool()  # a script, not a typed module
    # One patient per study, as the archive requires (dicomweb_one_patient.py explains).
    bench.small_set = one_patient_per_study(bench.small_set)
    OUT.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    port = _free_port()
    with tempfile.TemporaryDirectory() as work:
        # Profiles the store/query path; auth_overhead.py measures the token check.
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NODE_AUTH_ENABLED": "false"}
        cmd = [sys.executable, "-m", "node.cli", "node", "serve", "--data-dir", f"{work}/node"]
        node = subprocess.Popen([*cmd, "--port", str(port)], env=env)
        root = f"http://127.0.0.1:{port}/dicom-web"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            small, large = bench.small_set(args.small, "P"), bench.large_set(args.large, "P")
            work_for = {
                "stow_small": lambda c: bench.stow(c, root, small),
                "wado_small": lambda c: bench.wado(c, root, small),
                "stow_large": lambda c: bench.stow(c, root, large),
                "wado_large": lambda c: bench.wado(c, root, large),
                "qido": lambda c: [
                    bench.qido(c, root, q)
                    for q in (
                        {"PatientID": "BENCH-P-7"},
                        {"StudyDate": "20240301-20240630"},
                        {"PatientName": "*P1*"},
                    )
                ],
            }
            with httpx.Client(timeout=120) as client:
                for phase in args.phases.split(","):
                    raw = OUT / f"profile-{phase}.txt"
                    spy = subprocess.Popen(
                        [
                            str(py_spy),
                            "record",
                            "--pid",
                            str(node.pid),
                            "--rate",
                            str(args.rate),
                            "--format",
                            "raw",
                            "--nonblocking",
                            "-o",
                            str(raw),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1.0)  # let py-spy attach
                    t = time.perf_counter()
                    result = work_for[phase](client)
                    elapsed = time.perf_counter() - t
                    spy.send_signal(signal.SIGINT)
                    spy.wait(timeout=60)
                    print(f"== {phase}: {elapsed:.2f} s, {result if phase != 'qido' else ''}")
                    if raw.exists():
                        print(summarize(raw))
        finally:
            node.terminate()
            node.wait(timeout=30)


if __name__ == "__main__":
    main()
