"""How fast a client reads a study from an owner's peer route over mutual TLS, nothing stored.

Isolates the network half of `network_retrieval.py`: the same consortium and study, then
`GET /network/peer/studies/{uid}` at A with B's certificate, the body read and discarded by
curl, by httpx's blocking client (what the requester uses since the transfer moved off the
event loop) and by httpx's async client (what it used before). Each read is one transfer at A
(consent check, audit event).

Run from the repository root:
    PYTHONPATH=$PWD python benchmarks/peer_body_read.py [--reads 3] [--instances 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from node.services.exchange import PATIENT_HEADER, PURPOSE_HEADER, TRANSFER_ID_HEADER
from tests.system.consortium import Consortium, running_consortium


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3, help="reads per client")
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peerread-"))
    try:
        read_study(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read_study(work: Path, args: argparse.Namespace) -> None:
    """Build the consortium under `work`, store the study at A, time the clients' reads."""
    with running_consortium(work, ["a", "b"], node_settings={"fsync": True}) as net:
        patient = net.admit_patient("a")
        assert net.link_patient(patient).status_code == 200
        assert net.grant(patient, "b").status_code == 201
        (study_uid,) = net.store_study(
            "a", Consortium.make_study(patient, args.instances, size=args.size)
        )
        url = f"{net['a'].url}/network/peer/studies/{study_uid}"
        context = net.client_context("b")
        tls = net["b"].tls

        def headers() -> dict[str, str]:
            return {
                TRANSFER_ID_HEADER: uuid.uuid4().hex,
                PATIENT_HEADER: patient.address.lower(),
                PURPOSE_HEADER: "treatment",
            }

        def curl() -> int:
            sent = [arg for k, v in headers().items() for arg in ("-H", f"{k}: {v}")]
            done = subprocess.run(
                ["curl", "-sS", "--fail", "--cert", str(tls.cert), "--key", str(tls.key),
                 "--cacert", str(net.ca_cert), *sent, "-o", "/dev/null",
                 "-w", "%{size_download}", url],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            return int(done.stdout)

        def blocking() -> int:
            with (
                httpx.Client(verify=context, timeout=60) as client,
                client.stream("GET", url, headers=headers()) as reply,
            ):
                return sum(len(chunk) for chunk in reply.iter_raw())

        async def async_read() -> int:
            async with (
                httpx.AsyncClient(verify=context, timeout=60) as client,
                client.stream("GET", url, headers=headers()) as reply,
            ):
                return sum([len(chunk) async for chunk in reply.aiter_raw()])

        clients: dict[str, Callable[[], int]] = {
            "curl": curl,
            "httpx_blocking": blocking,
            "httpx_async": lambda: asyncio.run(async_read()),
        }
        seconds: dict[str, list[float]] = {name: [] for name in clients}
        sizes: set[int] = set()
        load = round(os.getloadavg()[0], 2)
        for _ in range(args.reads):  # interleaved, so load drift hits every client alike
            for name, read in clients.items():
                start = time.perf_counter()
                sizes.add(read())
                seconds[name].append(time.perf_counter() - start)
        (body,) = sizes
        print(
            json.dumps(
                {
                    "body_bytes": body,
                    "load1_start": load,
                    "load1_end": round(os.getloadavg()[0], 2),
                    **{
                        name: {
                            "median_s": round(statistics.median(s), 3),
                            "MB_s": round(body / statistics.median(s) / 1e6, 1),
                            "seconds": [round(x, 3) for x in s],
                        }
                        for name, s in seconds.items()
                    },
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
