"""Crash test: SIGKILL the node at random moments during long STOW-RS uploads.

After each restart on the same data directory, every acknowledged instance must be retrievable
and byte-identical; whatever the index shows must be whole (WADO returns bytes identical to an
input); the index counters must equal the real counts; and no temp file or unindexed blob may
be left on disk.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, text

from tests.node.conftest import RunningNode, start_node
from tests.node.opshelpers import (
    AS_STORED,
    multipart_body,
    referenced_sops,
    split_multipart,
)

pytestmark = pytest.mark.slow

ROUNDS = 4
SEED = 20261124


@dataclass(frozen=True)
class Sample:
    """One instance to upload."""

    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _small(rng: random.Random, study: str, series: str, ds: Dataset) -> Sample:
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = rng.randint(1, 10_000)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return Sample(study, series, ds.SOPInstanceUID, buf.getvalue())


def _large(
    rng: random.Random, study: str, series: str, base: Dataset, frames: int | None = None
) -> Sample:
    """A multi-frame image of a few MiB: several encryption segments, so kills land mid-blob.
    Its patient is the small samples' (one patient per study, or the archive refuses it)."""
    frames = frames or rng.randint(3, 6)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.7.3")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.Modality = base.PatientID, "OT"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = rng.randbytes(frames * 512 * 512 * 2)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return Sample(study, series, ds.SOPInstanceUID, buf.getvalue())


def make_samples(rng: random.Random, small: int = 600, large: int = 16) -> list[Sample]:
    """Instances spread over a few studies and series, small and large mixed."""
    base = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    studies = [generate_uid() for _ in range(6)]
    series = {s: [generate_uid() for _ in range(3)] for s in studies}
    out = []
    for i in range(small + large):
        study = rng.choice(studies)
        maker = _large if i % ((small + large) // large) == 0 else _small
        out.append(maker(rng, study, rng.choice(series[study]), base))
    rng.shuffle(out)
    return out


@dataclass
class Uploader:
    """Sends samples in STOW-RS requests until the node dies; records what was acknowledged."""

    root: str
    requests: list[list[Sample]]
    streamed: bool
    acked: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            for batch in self.requests:
                self.started.set()
                body, content_type = multipart_body(s.data for s in batch)
                content: bytes | Iterator[bytes] = body
                if self.streamed:  # one long request, sent in pieces as a slow client would
                    content = (body[i : i + 65536] for i in range(0, len(body), 65536))
                try:
                    reply = client.post(
                        f"{self.root}/studies",
                        content=content,
                        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
                    )
                except httpx.HTTPError:
                    return  # the node was killed: this request was never acknowledged
                if reply.status_code != 200:
                    self.unexpected.append(f"{reply.status_code} {reply.text[:200]}")
                    return
                self.acked.extend(referenced_sops(reply.json()))


def index_state(url: str) -> tuple[list[tuple[str, ...]], list[str]]:
    """Instance rows and counter mismatches, read from the index database itself."""
    engine = create_engine(url)
    problems = []
    try:
        with engine.connect() as conn:
            rows = [
                tuple(str(v) for v in r)
                for r in conn.execute(
                    text(
                        "SELECT study_uid, series_uid, sop_instance_uid, blob_name,"
                        " content_sha256 FROM instance"
                    )
                )
            ]
            for uid, counted, real in conn.execute(
                text(
                    "SELECT s.study_uid, s.number_of_instances, COUNT(i.sop_instance_uid)"
                    " FROM study s LEFT JOIN instance i ON i.study_uid = s.study_uid"
                    " GROUP BY s.study_uid, s.number_of_instances"
                )
            ):
                if counted != real or real == 0:
                    problems.append(f"study {uid}: counter {counted}, instances {real}")
            for uid, counted, real in conn.execute(
                text(
                    "SELECT s.series_uid, s.number_of_instances, COUNT(i.sop_instance_uid)"
                    " FROM series s LEFT JOIN instance i ON i.series_uid = s.series_uid"
                    " GROUP BY s.series_uid, s.number_of_instances"
                )
            ):
                if counted != real or real == 0:
                    problems.append(f"series {uid}: counter {counted}, instances {real}")
            for (uid,) in conn.execute(
                text(
                    "SELECT k.study_uid FROM study_key k"
                    " LEFT JOIN study s ON s.study_uid = k.study_uid WHERE s.study_uid IS NULL"
                )
            ):
                problems.append(f"key of study {uid} left without its study")
    finally:
        engine.dispose()
    return rows, problems


def check_consistent(
    node: RunningNode, url: str, samples: dict[str, Sample], acked: set[str]
) -> int:
    """Everything the restarted node shows is whole, and every acknowledged instance is there."""
    rows, problems = index_state(url)
    assert not problems, problems
    indexed = {r[2] for r in rows}
    assert acked <= indexed, f"acknowledged but lost: {sorted(acked - indexed)[:5]}"

    leftovers = list((node.data_dir / "tmp").iterdir())
    assert not leftovers, f"temp files left after restart: {leftovers[:5]}"
    on_disk = {p.name for p in (node.data_dir / "blobs").rglob("*") if p.is_file()}
    referenced = {r[3] for r in rows}
    assert on_disk == referenced, (
        f"unindexed blobs: {len(on_disk - referenced)}, missing blobs: {len(referenced - on_disk)}"
    )

    # Every indexed instance is whole: retrieve each study and compare every part with an input.
    by_study: dict[str, set[str]] = {}
    for study, _series, sop, _blob, sha in rows:
        assert sop in samples and samples[sop].sha256 == sha, f"{sop}: index holds other content"
        by_study.setdefault(study, set()).add(sop)
    with httpx.Client(timeout=60) as client:
        for study, sops in by_study.items():
            reply = client.get(f"{node.dicomweb}/studies/{study}", headers={"Accept": AS_STORED})
            assert reply.status_code == 200
            parts = split_multipart(reply.headers["content-type"], reply.content)
            got = {}
            for part in parts:
                sop = str(pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID)
                got[sop] = part
            assert set(got) == sops
            for sop, part in got.items():
                assert part == samples[sop].data, f"{sop} is not byte-identical"
    return len(indexed)


@pytest.mark.parametrize("seed", [SEED])
def test_sigkill_during_stow_loses_nothing_acknowledged(
    database_url: str, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    samples = make_samples(rng)
    by_sop = {s.sop_uid: s for s in samples}
    data_dir = tmp_path / "node"
    index_url = database_url
    node = start_node(data_dir, database_url)
    acked: set[str] = set()
    kills_mid_request = 0
    try:
        for _round in range(ROUNDS):
            pending = [s for s in samples if s.sop_uid not in acked]
            assert pending, "the sample pool must outlast the rounds"
            streamed = rng.random() < 0.4
            if streamed:  # one long request with every pending instance
                requests = [pending]
            else:  # many requests of 1..6 instances each
                requests, i = [], 0
                while i < len(pending):
                    n = rng.randint(1, 6)
                    requests.append(pending[i : i + n])
                    i += n
            uploader = Uploader(node.dicomweb, requests, streamed)
            thread = threading.Thread(target=uploader.run)
            thread.start()
            # Kill while the upload runs, however fast this machine is: shortly after it starts.
            assert uploader.started.wait(30)
            time.sleep(rng.uniform(0.05, 0.35))
            kills_mid_request += thread.is_alive()
            node.kill()
            thread.join(timeout=60)
            assert not uploader.unexpected, uploader.unexpected
            acked |= set(uploader.acked)

            node = start_node(data_dir, database_url)
            check_consistent(node, index_url, by_sop, acked)

        assert kills_mid_request >= ROUNDS - 1, "the kills should land while uploads run"
        # One more kill aimed squarely inside a write: a large instance streams in, and the node
        # dies the moment its sealed temp file exists. Start-up must clean it and show nothing.
        first = pydicom.dcmread(io.BytesIO(samples[0].data), stop_before_pixels=True)
        big = _large(rng, samples[0].study_uid, samples[0].series_uid, first, frames=96)
        by_sop[big.sop_uid] = big
        samples.append(big)
        uploader = Uploader(node.dicomweb, [[big]], True)
        thread = threading.Thread(target=uploader.run)
        thread.start()
        deadline = time.monotonic() + 60
        while not any((data_dir / "tmp").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert any((data_dir / "tmp").iterdir()), "the large upload never reached the store"
        node.kill()
        thread.join(timeout=60)
        assert not uploader.acked
        node = start_node(data_dir, database_url)
        check_consistent(node, index_url, by_sop, acked)
        assert "start-up reconciliation removed" in node.log()
        # After the crashes, a client resends what was never acknowledged: the archive completes.
        rest = [s for s in samples if s.sop_uid not in acked]
        uploader = Uploader(
            node.dicomweb, [rest[i : i + 20] for i in range(0, len(rest), 20)], False
        )
        uploader.run()
        assert not uploader.unexpected, uploader.unexpected
        acked |= set(uploader.acked)
        assert acked == set(by_sop)
        assert check_consistent(node, index_url, by_sop, acked) == len(samples)
    finally:
        node.stop()
