"""C-STORE ingest throughput from DCMTK's storescu: the node's DIMSE service vs Orthanc's.

Run from the repository root:
    PYTHONPATH=$PWD python benchmarks/dimse_store.py [--small 1000] [--large 40] [--repeat 1]

Generates the two sets once (small: 128x128 16-bit CT slices, ~33 KB; large: 3000x3000 16-bit
DX, ~18 MB), starts a fresh node (`pacsmesh node serve --dimse-port`, default settings: every
blob fsynced, sealed under AES-256-GCM) and a fresh Orthanc (`../shared/peers/orthanc`), and
sends each set to each with one storescu association (`storescu +sd DIR`). The figure is the
wall time of the storescu process: association, every C-STORE and its response, release.
Both servers are stopped by PID at the end. Ratios > 1 mean the node is faster.
storescu runs as Debian ships it (Nagle's algorithm on); `--nodelay` sets TCP_NODELAY=1 for it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
ORTHANC = ROOT.parent / "shared" / "peers" / "orthanc"
CT = "1.2.840.10008.5.1.4.1.1.2"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
SCU_AE = "BENCHSCU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_set(out: Path, count: int, size: int, sop_class: str, modality: str) -> int:
    """`count` instances of one study as files; returns the total bytes."""
    out.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    pixels = (np.arange(size * size, dtype=np.uint32) % 4096).astype(np.uint16).tobytes()
    total = 0
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "Bench^Mark", "BENCH1", "BENCH-ACC"
        ds.StudyDate, ds.StudyTime, ds.Modality = "20261124", "101500", modality
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        path = out / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def store(port: int, called: str, files: Path, nodelay: bool) -> float:
    """Seconds for one storescu association sending every file of `files`."""
    cmd = ["storescu", "-aet", SCU_AE, "-aec", called, "+sd", "127.0.0.1", str(port), str(files)]
    # Debian's DCMTK keeps Nagle's algorithm on unless TCP_NODELAY=1 is in its environment.
    env = {**os.environ, "TCP_NODELAY": "1" if nodelay else "0"}
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed:\n{result.stdout}{result.stderr}")
    return elapsed


def start_node(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    http, dimse = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        f"NODE_REMOTE_AES__{SCU_AE}__HOST": "127.0.0.1",
        f"NODE_REMOTE_AES__{SCU_AE}__PORT": str(free_port()),
        f"NODE_REMOTE_AES__{SCU_AE}__ROLE": "modality",
    }
    cmd = [sys.executable, "-m", "node.cli", "node", "serve", "--data-dir", str(work / "data")]
    cmd += ["--port", str(http), "--dimse-port", str(dimse), "--hl7-port", "0"]
    log = open(work / "node.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1).status_code == 200:
                return proc, dimse
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("node did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_orthanc(work: Path) -> tuple[int, int]:
    http, dimse = free_port(), free_port()
    out = subprocess.run(
        [str(ORTHANC), "start", str(work), str(http), str(dimse)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1]), dimse


def stop_orthanc(work: Path, pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--nodelay", action="store_true", help="run storescu with TCP_NODELAY=1 (Nagle off)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dimse-bench-"))
    try:
        sets = {
            "small": (work / "small", write_set(work / "small", args.small, 128, CT, "CT")),
            "large": (work / "large", write_set(work / "large", args.large, 3000, DX, "DX")),
        }
        counts = {"small": args.small, "large": args.large}
        times: dict[tuple[str, str], list[float]] = {}
        print(f"load before: {Path('/proc/loadavg').read_text().strip()}")
        for r in range(args.repeat):
            node_dir, orthanc_dir = work / f"node{r}", work / f"orthanc{r}"
            node_dir.mkdir()
            node, node_port = start_node(node_dir)
            orthanc_pid, orthanc_port = start_orthanc(orthanc_dir)
            try:
                for name, (files, _size) in sets.items():
                    times.setdefault(("node", name), []).append(
                        store(node_port, "PACSMESH", files, args.nodelay)
                    )
                    times.setdefault(("orthanc", name), []).append(
                        store(orthanc_port, "ORTHANC", files, args.nodelay)
                    )
            finally:
                stop(node)
                stop_orthanc(orthanc_dir, orthanc_pid)
        print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
        print()
        print("| set | instances | MB | node s | node inst/s | node MB/s | Orthanc s "
              "| Orthanc inst/s | Orthanc MB/s | node / Orthanc |")  # fmt: skip
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, (_files, size) in sets.items():
            n, o = min(times[("node", name)]), min(times[("orthanc", name)])
            mb = size / 1e6
            print(
                f"| {name} | {counts[name]} | {mb:.0f} | {n:.2f} | {counts[name] / n:.0f} "
                f"| {mb / n:.0f} | {o:.2f} | {counts[name] / o:.0f} | {mb / o:.0f} | {o / n:.2f}x |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
