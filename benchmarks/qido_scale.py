"""QIDO-RS latency at scale: fill a DICOMweb archive with N small instances, then time queries.

Usage: python benchmarks/qido_scale.py ROOT [ROOT ...] --instances N [--batch 100]
Each ROOT is filled in turn (bulk STOW-RS, `--batch` instances per request, one keep-alive
client) with N copies of pydicom's CT_small.dcm under fresh UIDs: 20 instances per study, 500
patients, dates spread over 2020-2024. The archive is then queried with the three study-level
queries of ../shared/tools/dicomweb-bench.py (patient ID, date range, name wildcard), 40 times
each, and p50/p95 are printed as JSON with the fill rate. Use fresh archives: the fill is not
undone.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import time
from collections.abc import Iterator

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def instances(n: int, tag: str) -> Iterator[bytes]:
    """N small CT instances, 20 per study, over 500 patients."""
    base = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    study = series = ""
    for i in range(n):
        if i % 20 == 0:
            study, series = generate_uid(), generate_uid()
            patient = (i // 20) % 500
            base.PatientID = f"SCALE-{tag}-{patient}"
            base.PatientName = f"SCALE^{tag}{patient}"
            base.StudyDate = (
                f"{2020 + (i // 20) % 5}{(i // 20) % 12 + 1:02d}{(i // 20) % 28 + 1:02d}"
            )
        base.StudyInstanceUID, base.SeriesInstanceUID = study, series
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = io.BytesIO()
        base.save_as(buf, enforce_file_format=True)
        yield buf.getvalue()


def fill(client: httpx.Client, root: str, n: int, batch: int, tag: str) -> float:
    """Store N instances; returns instances per second."""
    t = time.perf_counter()
    pending: list[bytes] = []

    def send() -> None:
        boundary = secrets.token_hex(12)
        body = bytearray()
        for data in pending:
            body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            body += data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        reply = client.post(
            f"{root}/studies",
            content=bytes(body),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        if reply.status_code != 200:
            raise SystemExit(f"{root}: STOW answered {reply.status_code}: {reply.text[:200]}")
        pending.clear()

    for data in instances(n, tag):
        pending.append(data)
        if len(pending) == batch:
            send()
    if pending:
        send()
    return n / (time.perf_counter() - t)


def qido(
    client: httpx.Client, root: str, params: dict[str, str], reps: int = 40
) -> dict[str, object]:
    """p50/p95 latency of one study-level query (as dicomweb-bench.py measures it)."""
    lat = []
    reply = None
    for _ in range(reps):
        qs = "&".join(f"{k}={v}" for k, v in params.items())
        t = time.perf_counter()
        reply = client.get(f"{root}/studies?{qs}", headers={"Accept": "application/dicom+json"})
        lat.append(time.perf_counter() - t)
    lat.sort()
    assert reply is not None
    results = len(reply.json()) if reply.status_code == 200 and reply.content else 0
    return {
        "p50_ms": round(1000 * statistics.median(lat), 2),
        "p95_ms": round(1000 * lat[int(0.95 * len(lat)) - 1], 2),
        "status": reply.status_code,
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--instances", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument(
        "--token",
        default=os.environ.get("PACSMESH_TOKEN"),
        help="bearer token (default $PACSMESH_TOKEN; `pacsmesh node user token`)",
    )
    a = ap.parse_args()
    headers = {"Authorization": f"Bearer {a.token}"} if a.token else {}
    out: dict[str, dict[str, object]] = {}
    for k, root in enumerate(a.roots):
        tag = f"Q{k}"
        with httpx.Client(timeout=600, headers=headers) as client:
            rate = fill(client, root, a.instances, a.batch, tag)
            out[root] = {
                "instances": a.instances,
                "fill_inst_s": round(rate, 1),
                "qido_patient": qido(client, root, {"PatientID": f"SCALE-{tag}-7"}, a.reps),
                "qido_daterange": qido(client, root, {"StudyDate": "20210301-20210630"}, a.reps),
                "qido_name_wildcard": qido(client, root, {"PatientName": f"*{tag}1*"}, a.reps),
            }
        print(json.dumps({root: out[root]}), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
