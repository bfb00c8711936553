"""The training credential's request path: QIDO-RS instance search and WADO-RS latency.

One node on the embedded chain with auth on; one linked patient who granted AI training holds
`--studies` studies of `--instances` CT images each (every fifth declaring burned-in
annotation). Timed over a real socket as the training credential: an instance search across
all of them (`limit=50`), an instance search inside one study, and a WADO-RS retrieve of one
instance (its consent resolved per request). Run a tree against another by pointing
PYTHONPATH at it (this script only needs `tests/node/training_helpers.py`, in both):

    git archive 776e57c | (mkdir -p /tmp/train-base && tar -x -C /tmp/train-base)
    PYTHONPATH=/tmp/train-base python benchmarks/training_view.py
    PYTHONPATH=$PWD python benchmarks/training_view.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydicom.uid import generate_uid

from tests.node.factories import make_ct
from tests.node.training_helpers import TrainingSite, training_site

MRN = "BENCH-AI-1"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _store(site: TrainingSite, studies: int, instances: int) -> list[tuple[str, str, str]]:
    """Store the studies; per study, its UIDs and one image that does not declare burned-in."""
    out: list[tuple[str, str, str]] = []
    for s in range(studies):
        study_uid, series_uid = generate_uid(), generate_uid()
        batch = []
        for i in range(instances):
            ds = make_ct(study_uid, series_uid, patient_id=MRN, seed=s * instances + i)
            ds.InstanceNumber = i + 1
            ds.BurnedInAnnotation = "YES" if i % 5 == 1 else "NO"
            batch.append(ds)
        site.store(batch)
        out.append((study_uid, series_uid, batch[0].SOPInstanceUID))
    return out


def _median_ms(call: Callable[[], httpx.Response], requests: int) -> float:
    call()  # warm: the node's caches, the consent cache, the connection
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        reply = call()
        times.append(time.perf_counter() - start)
        assert reply.status_code == 200, reply.text
    return round(statistics.median(times) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    with training_site(Path(tempfile.mkdtemp(prefix="training-bench-")) / "node") as site:
        study_uid, series_uid, sop_uid = _store(site, args.studies, args.instances)[0]
        site.link(MRN)
        site.grant(MRN)
        study = f"studies/{site.mapper(study_uid)}"
        instance = f"{study}/series/{site.mapper(series_uid)}/instances/{site.mapper(sop_uid)}"
        wado = {"Accept": WADO_ACCEPT}
        with httpx.Client(base_url=site.dicomweb + "/", headers=site.trainer, timeout=120) as c:
            figures = {
                "qido_instances_limit50_p50_ms": _median_ms(
                    lambda: c.get("instances", params={"limit": "50"}), args.requests
                ),
                "qido_one_study_instances_p50_ms": _median_ms(
                    lambda: c.get(f"{study}/instances"), args.requests
                ),
                "wado_one_instance_p50_ms": _median_ms(
                    lambda: c.get(instance, headers=wado), args.requests
                ),
            }
    print(json.dumps({**figures, **vars(args)}))


if __name__ == "__main__":
    main()
