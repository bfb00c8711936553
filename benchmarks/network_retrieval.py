"""Cross-hospital retrieval of a study versus a plain DICOMweb copy between the same two nodes.

Issue #6 "Benchmark": retrieving a 100-instance study across hospitals, with mutual TLS, the
consent check and the audit trail, should take at most 1.2x the time of a plain unauthenticated
DICOMweb copy between the same two nodes.

The consortium is built the way tests/system/consortium.py builds it (one anvil chain, the CA,
`node enroll`, `ledger deploy`, every node a `pacsmesh node serve` process on loopback), with
`fsync` on as in production. Hospital A admits a patient (ADT over MLLP), the patient links
their key and grants B treatment access, and A receives the study by STOW-RS.

- pacsmesh path: `POST /network/studies/{uid}/$retrieve` at B with a clinician's token (B's
  consent decision, `recordAccess` on chain, mutual-TLS pull from A with A's own consent check,
  every instance stored encrypted at B, provenance row, audit events on both sides), timed from
  the request to the answer.
- baseline: the same two data directories served by `pacsmesh node serve` over plain HTTP with
  bearer tokens off (`auth_enabled = false`); the study copied by `curl` WADO-RS from A piped
  into `curl` STOW-RS at B (chunked upload while the download runs), timed from the start of
  the download to B's store answer. curl, because Python HTTP clients read large bodies slowly
  enough to measure themselves (../shared/tools/dicomweb-bench.py).

B's copy is deleted (DELETE with an admin token) between runs; one warm-up run per path is not
counted. Each round runs the pacsmesh path, restarts both nodes plain, runs the baseline, so
a round's two medians are taken minutes apart; `--rounds` repeats this for the load drift of a
shared machine. The one-minute load average is recorded around every block.

Run from the repository root:
    PYTHONPATH=$PWD python benchmarks/network_retrieval.py [--runs 5] [--rounds 1]
        [--instances 100] [--size 512] [--no-fsync] [--profile] [--keep]
        [--results benchmarks/RESULTS.md]
Writes benchmarks/out/network_retrieval-<time>.json and prints it (with --profile also the
py-spy stacks of both nodes, benchmarks/out/netprofile-<time>-*.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from profile_node import summarize  # benchmarks/, this script's directory

from tests.ledger.conftest import free_port
from tests.node.factories import to_bytes
from tests.system.consortium import (
    Consortium,
    Hospital,
    config_toml,
    node_config,
    running_consortium,
    serve_node,
    stop_process,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
REFERENCED_SOP_SEQUENCE = "00081199"

# Reads the WADO-RS answer's headers byte by byte (bash `read` on a pipe never reads ahead),
# takes the boundary, then hands the rest of the stream to the uploading curl unchanged.
COPY_SCRIPT = r"""
set -o pipefail
curl -sS --fail -N -i -H 'Accept: multipart/related; type="application/dicom"' "$1" | {
  content_type=""
  while IFS= read -r line; do
    line=${line%$'\r'}
    [ -z "$line" ] && break
    case "${line,,}" in content-type:*) content_type=${line#*:} ;; esac
  done
  boundary=$(sed -E 's/.*boundary="?([^";]+)"?.*/\1/' <<<"$content_type")
  exec curl -sS -X POST -T - -o "$3" -w '%{http_code}' -H 'Expect:' \
    -H "Content-Type: multipart/related; type=\"application/dicom\"; boundary=$boundary" \
    -H 'Accept: application/dicom+json' "$2"
}
"""


@dataclass
class Block:
    """One path's runs in one round: wall seconds, and the CPU seconds each process spent."""

    path: str
    seconds: list[float]
    cpu: dict[str, list[float]]  # "a", "b": the nodes; "anvil"; "curl": the baseline's curls
    load_before: float
    load_after: float

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "seconds": [round(s, 3) for s in self.seconds],
            "median_s": round(self.median, 3),
            "cpu_s_median": {k: round(statistics.median(v), 3) for k, v in self.cpu.items()},
            "load1_before": self.load_before,
            "load1_after": self.load_after,
        }


class CpuMeter:
    """CPU seconds (user + system, all threads) of processes, and of this one's children."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def read(self) -> dict[str, float]:
        now = {n: sum(p.cpu_times()[:2]) for n, p in self.procs.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        now["children"] = children.ru_utime + children.ru_stime
        return now


def load1() -> float:
    """The one-minute load average."""
    return round(os.getloadavg()[0], 2)


def timed_block(
    path: str,
    runs: int,
    run: Callable[[], float],
    pids: dict[str, int],
    profile: str | None = None,
) -> Block:
    """A warm-up run, then `runs` timed ones (with py-spy on `pids` when `profile` names the
    output's stem)."""
    run()
    meter = CpuMeter(pids)
    before = load1()
    seconds: list[float] = []
    cpu: dict[str, list[float]] = {}
    with profiled(pids, profile):
        for _ in range(runs):
            start = meter.read()
            seconds.append(run())
            end = meter.read()
            for name in end:
                cpu.setdefault(name, []).append(end[name] - start[name])
    curl = cpu.pop("children", [])  # the baseline's curls; the pacsmesh path starts none
    if any(curl):
        cpu["curl"] = curl
    return Block(path, seconds, cpu, before, load1())


@contextmanager
def profiled(pids: dict[str, int], stem: str | None) -> Iterator[None]:
    """`py-spy record` (collapsed stacks, CPU samples only) on each process meanwhile; the
    hottest frames printed afterwards and the stacks kept under benchmarks/out/."""
    if stem is None:
        yield
        return
    OUT.mkdir(exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    spies = {}
    for name, pid in pids.items():
        raw = OUT / f"{stem}-{name}.txt"
        spies[name] = (
            raw,
            subprocess.Popen(
                [str(py_spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                 "--nonblocking", "-o", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        )  # fmt: skip
    time.sleep(1.0)  # let py-spy attach
    try:
        yield
    finally:
        for raw, spy in spies.values():
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            if raw.exists():
                print(summarize(raw), file=sys.stderr)


# -- the pacsmesh path --------------------------------------------------------------------------


def pacsmesh_retrieve(net: Consortium, study_uid: str, address: str, instances: int) -> float:
    """One cross-hospital retrieve at B (timed), then B's copy deleted (not timed)."""
    b = net["b"]
    body = {"patient": address, "source": net["a"].account.lower(), "purpose": "treatment"}
    with net.user_client("b", "clinician", timeout=600) as client:
        start = time.perf_counter()
        reply = client.post(f"/network/studies/{study_uid}/$retrieve", json=body)
        elapsed = time.perf_counter() - start
    if reply.status_code != 200:
        raise SystemExit(f"retrieve at {b.name}: {reply.status_code} {reply.text}")
    answer = reply.json()
    if not answer["complete"] or answer["instances"] != instances:
        raise SystemExit(f"retrieve incomplete: {answer}")
    with net.user_client("b", "admin") as client:
        deleted = client.delete(f"/dicom-web/studies/{study_uid}")
    if deleted.status_code != 204:
        raise SystemExit(f"DELETE at b: {deleted.status_code} {deleted.text}")
    return elapsed


def wait_consent_at_b(net: Consortium, study_uid: str, address: str, instances: int) -> None:
    """B decides from its own consent cache: the first retrieve waits for it to see the grant."""
    deadline = time.monotonic() + 60
    while True:
        try:
            pacsmesh_retrieve(net, study_uid, address, instances)
            return
        except SystemExit as exc:
            if " 403 " not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# -- the baseline -------------------------------------------------------------------------------


@dataclass
class PlainNode:
    """A hospital's data directory served over plain HTTP, tokens off."""

    hospital: Hospital
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"


def start_plain(net: Consortium, hospital: Hospital) -> PlainNode:
    """The hospital's own settings (same data dir, same fsync, same chain) without TLS or
    tokens, on a fresh port; DIMSE and HL7 off."""
    node = PlainNode(hospital, free_port())
    values = node_config(
        hospital,
        net.anvil.url,
        **net.node_settings,
        port=node.port,
        tls_cert=None,
        tls_key=None,
        tls_ca_cert=None,
        tls_client_cert=None,
        hl7_port=0,
        auth_enabled=False,
    )
    config = hospital.data_dir.parent / f"node-{hospital.name}-plain.toml"
    config.write_text(config_toml(values))
    node.process = serve_node(net.root, config, hospital.log)
    wait_ready(node.process, f"http://127.0.0.1:{node.port}", hospital.log, False)
    return node


def plain_copy(a: PlainNode, b: PlainNode, study_uid: str, instances: int, work: Path) -> float:
    """One curl WADO-RS | curl STOW-RS copy (timed), then B's copy deleted (not timed)."""
    answer = work / "stow-answer.json"
    command = [
        "bash", "-c", COPY_SCRIPT, "copy",
        f"{a.root}/studies/{study_uid}", f"{b.root}/studies", str(answer),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or done.stdout.strip() != "200":
        raise SystemExit(f"plain copy: rc {done.returncode}, {done.stdout} {done.stderr}")
    stored = json.loads(answer.read_text()).get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    if len(stored) != instances:
        raise SystemExit(f"plain copy stored {len(stored)} of {instances} instances")
    deleted = httpx.delete(f"{b.root}/studies/{study_uid}", timeout=120)
    if deleted.status_code != 204:
        raise SystemExit(f"DELETE at b: {deleted.status_code} {deleted.text}")
    return elapsed


# -- the benchmark ------------------------------------------------------------------------------


def run_round(
    net: Consortium,
    study_uid: str,
    address: str,
    instances: int,
    runs: int,
    work: Path,
    profile: str | None,
) -> list[Block]:
    """The pacsmesh path on the running consortium, then both nodes restarted plain for the
    baseline; the consortium's nodes are left stopped."""
    a, b = net["a"], net["b"]
    assert a.process is not None and b.process is not None and net.anvil.proc is not None
    anvil = net.anvil.proc.pid
    ours = timed_block(
        "pacsmesh",
        runs,
        lambda: pacsmesh_retrieve(net, study_uid, address, instances),
        {"a": a.process.pid, "b": b.process.pid, "anvil": anvil},
        profile and f"{profile}-pacsmesh",
    )
    both(net.stop_node)
    plain_a, plain_b = start_plain(net, a), start_plain(net, b)
    assert plain_a.process is not None and plain_b.process is not None
    try:
        base = timed_block(
            "plain",
            runs,
            lambda: plain_copy(plain_a, plain_b, study_uid, instances, work),
            {"a": plain_a.process.pid, "b": plain_b.process.pid, "anvil": anvil},
            profile and f"{profile}-plain",
        )
    finally:
        stop_process(plain_a.process)
        stop_process(plain_b.process)
    return [ours, base]


def both(step: Callable[[str], None]) -> None:
    """`step` for nodes a and b at once (starts and stops take seconds each)."""
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(step, name) for name in ("a", "b")]:
            future.result()


def measure(
    work: Path, settings: dict[str, Any], args: argparse.Namespace, stamp: str
) -> tuple[list[Block], int]:
    """Build the consortium under `work`, store the study at A, run the rounds."""
    blocks: list[Block] = []
    with running_consortium(work, ["a", "b"], node_settings=settings) as net:
        patient = net.admit_patient("a")
        linked = net.link_patient(patient)
        if linked.status_code != 200:
            raise SystemExit(f"link: {linked.status_code} {linked.text}")
        granted = net.grant(patient, "b")
        if granted.status_code != 201:
            raise SystemExit(f"grant: {granted.status_code} {granted.text}")
        datasets = Consortium.make_study(patient, args.instances, size=args.size)
        study_bytes = sum(len(to_bytes(ds)) for ds in datasets)
        (study_uid,) = net.store_study("a", datasets)
        del datasets
        address = patient.address.lower()
        wait_consent_at_b(net, study_uid, address, args.instances)

        for round_no in range(args.rounds):
            if round_no:
                both(net.start_node)
            profile = f"netprofile-{stamp}" if args.profile and not round_no else None
            blocks += run_round(net, study_uid, address, args.instances, args.runs, work, profile)

    return blocks, study_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per path and round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="CT matrix (512: 0.5 MB slices)")
    parser.add_argument("--no-fsync", action="store_true", help="both nodes without fsync")
    parser.add_argument("--results", type=Path, help="append a summary to this Markdown file")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy on both nodes in the first round"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and node logs")
    args = parser.parse_args()
    command = "PYTHONPATH=$PWD python benchmarks/network_retrieval.py " + shlex.join(sys.argv[1:])

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = Path(tempfile.mkdtemp(prefix="netbench-"))
    settings = {"fsync": not args.no_fsync}
    load_start = load1()
    try:
        blocks, study_bytes = measure(work, settings, args, stamp)
    finally:
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    ours = [b for b in blocks if b.path == "pacsmesh"]
    base = [b for b in blocks if b.path == "plain"]
    ratio = statistics.median([s for b in ours for s in b.seconds]) / statistics.median(
        [s for b in base for s in b.seconds]
    )
    result = {
        "command": command,
        "stamp": stamp,
        "study": {
            "instances": args.instances,
            "matrix": args.size,
            "bytes": study_bytes,
            "mean_instance_bytes": study_bytes // args.instances,
        },
        "fsync": settings["fsync"],
        "load1_start": load_start,
        "rounds": [
            {
                "pacsmesh": p.as_json(),
                "plain": q.as_json(),
                "ratio": round(p.median / q.median, 3),
            }
            for p, q in zip(ours, base, strict=True)
        ],
        "ratio": round(ratio, 3),
        "target": 1.2,
    }
    OUT.mkdir(exist_ok=True)
    out = OUT / f"network_retrieval-{stamp}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"written: {out}", file=sys.stderr)
    if args.results is not None:
        with args.results.open("a") as md:
            md.write(summary(result))


def summary(result: dict[str, Any]) -> str:
    """A Markdown block of one run, for RESULTS.md."""
    study = result["study"]
    lines = [
        "",
        f"Run `network_retrieval-{result['stamp']}`: `{result['command']}`; "
        f"{study['instances']} CT instances of {study['matrix']}x{study['matrix']}, "
        f"{study['bytes'] / 1e6:.1f} MB; fsync {'on' if result['fsync'] else 'off'}.",
        "",
        "| round | pacsmesh median s (runs) | load | plain median s (runs) | load | ratio "
        "| CPU s per copy, pacsmesh (A / B / anvil) | plain (A / B / curl) |",
        "| --- | --- | --- | --- | --- | ---: | --- | --- |",
    ]
    for i, r in enumerate(result["rounds"], 1):
        p, q = r["pacsmesh"], r["plain"]
        cpu_p, cpu_q = p["cpu_s_median"], q["cpu_s_median"]
        lines.append(
            f"| {i} | {p['median_s']} ({', '.join(map(str, p['seconds']))}) "
            f"| {p['load1_before']}–{p['load1_after']} "
            f"| {q['median_s']} ({', '.join(map(str, q['seconds']))}) "
            f"| {q['load1_before']}–{q['load1_after']} | {r['ratio']}x "
            f"| {cpu_p['a']} / {cpu_p['b']} / {cpu_p['anvil']} "
            f"| {cpu_q['a']} / {cpu_q['b']} / {cpu_q.get('curl', 0)} |"
        )
    overall = f"Overall ratio (median of all runs): **{result['ratio']}x** (target ≤ 1.2x)."
    lines += ["", overall, ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
