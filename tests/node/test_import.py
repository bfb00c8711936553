"""`pacsmesh node import --from URL` against a real Orthanc (the hospital's existing PACS), and
against a source whose connection breaks midway."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.data import get_testdata_files

from node.services import retrieve
from node.services.archive import Archive
from node.services.store import store_bytes
from node.settings import NodeSettings
from tests.conftest import REPO_ROOT, SHARED_DATA
from tests.node.conftest import free_port, start_node
from tests.node.factories import make_ct, to_bytes
from tests.node.opshelpers import (
    CuttingProxy,
    blob_files,
    orthanc_start,
    orthanc_stop,
    split_multipart,
    wado_instance,
)

pytestmark = pytest.mark.integration

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def sample_files() -> list[Path]:
    """The real files, plus pydicom's test files that a PACS would accept (one per SOP UID)."""
    files = sorted(SHARED_DATA.glob("*.dcm"))
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates = [*files, *sorted(Path(p) for p in get_testdata_files("*.dcm"))]
        chosen = []
        for path in candidates:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            keys = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
            uids = [str(ds.get(k, "")) for k in keys]
            if not all(_UID.match(u) and len(u) <= 64 for u in uids):
                continue
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}) or uids[1] in seen:
                continue
            seen.add(uids[1])
            chosen.append(path)
    return chosen


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Orthanc on loopback, loaded by STOW-RS (dicomweb-client) with the sample files."""
    directory = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    orthanc_start(directory, port, free_port())
    root = f"http://127.0.0.1:{port}/dicom-web"
    try:
        client = DICOMwebClient(root)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in sample_files():
                try:
                    client.store_instances([pydicom.dcmread(path)])
                except (TypeError, ValueError):
                    continue  # a few odd samples cannot be re-encoded by the client itself
        yield root
    finally:
        orthanc_stop(directory)


def orthanc_files(root: str) -> dict[str, bytes]:
    """Every instance Orthanc holds, exactly as stored (its native REST API)."""
    base = root.removesuffix("/dicom-web")
    out = {}
    with httpx.Client(timeout=60) as client:
        for orthanc_id in client.get(f"{base}/instances").json():
            raw = client.get(f"{base}/instances/{orthanc_id}/file").content
            out[str(_header(raw).SOPInstanceUID)] = raw
    return out


def run_import(source: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`pacsmesh node import` as an operator runs it."""
    cmd = [sys.executable, "-m", "node.cli", "node", "import", "--from", source]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [*cmd, "--data-dir", str(data_dir)], capture_output=True, text=True, env=env, timeout=600
    )


def _header(raw: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(raw), stop_before_pixels=True)


def test_import_copies_every_instance_byte_identical(
    orthanc: str, tmp_path: Path, assert_no_plaintext: list[tuple[Path, list[bytes]]]
) -> None:
    source = orthanc_files(orthanc)
    assert len(source) >= 30, "Orthanc should hold the real files and pydicom's samples"
    # The node already holds another version of one instance (same SOP Instance UID, different
    # content): the duplicate policy refuses to overwrite it, so the import must report that
    # instance with its reason, keep the node's copy, and still copy everything else.
    conflict = sorted(source)[0]
    ours = bytearray(source[conflict])
    ours[-1] ^= 0xFF
    data_dir = tmp_path / "node"
    archive = Archive.open(NodeSettings(data_dir=data_dir))
    try:
        assert store_bytes(archive, bytes(ours)).created
    finally:
        archive.close()
    refused = {conflict}
    accepted = {sop: raw for sop, raw in source.items() if sop not in refused}

    first = run_import(orthanc, data_dir)
    assert first.returncode == 1, first.stderr
    report = json.loads(first.stdout)
    studies = {str(_header(raw).StudyInstanceUID) for raw in source.values()}
    refused_studies = {str(_header(source[sop]).StudyInstanceUID) for sop in refused}
    assert report["studies_found"] == len(studies)
    assert report["studies_complete"] == len(studies - refused_studies)
    assert report["instances_stored"] == len(accepted)
    assert report["instances_already_present"] == 0
    assert report["failed"] == len(refused)
    assert {f["sop_instance_uid"] for f in report["failures"]} == refused
    assert all(
        "0111" in f["reason"] and "different content" in f["reason"] for f in report["failures"]
    )

    # Re-running is a no-op: everything is already there, nothing is stored twice.
    again = run_import(orthanc, data_dir)
    report = json.loads(again.stdout)
    assert report["instances_stored"] == 0
    assert report["instances_already_present"] == len(accepted)
    assert report["failed"] == len(refused)
    expected = {**accepted, conflict: bytes(ours)}

    node = start_node(data_dir)
    try:
        with httpx.Client(timeout=60) as client:
            for sop, original in expected.items():
                ds = _header(original)
                reply = wado_instance(
                    client, node.dicomweb, ds.StudyInstanceUID, ds.SeriesInstanceUID, sop
                )
                assert reply.status_code == 200, sop
                parts = split_multipart(reply.headers["content-type"], reply.content)
                assert parts == [original], f"{sop} is not the expected copy"
    finally:
        node.stop()
    assert_no_plaintext.append((data_dir, []))


def test_import_from_an_unreachable_source_fails_with_a_reason(tmp_path: Path) -> None:
    result = run_import(f"http://127.0.0.1:{free_port()}/dicom-web", tmp_path / "node")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["studies_found"] == 0
    assert report["failed"] == 1
    assert "searching the source failed" in report["failures"][0]["reason"]


def _stored_study(data_dir: Path, study_uid: str) -> dict[str, bytes]:
    """The instances of a study the node holds, by SOP Instance UID, as it would serve them."""
    archive = Archive.open(NodeSettings(data_dir=data_dir))
    try:
        rows = retrieve.resolve(archive, study_uid)
        return {r.sop_instance_uid: b"".join(retrieve.iter_instance(archive, r)) for r in rows}
    finally:
        archive.close()


def test_import_cut_mid_study_keeps_the_instances_that_arrived_whole(tmp_path: Path) -> None:
    # The source is a pacsmesh node behind a proxy that drops the connection partway through
    # the study's WADO-RS reply, in its fourth instance of six (131 KB each).
    source_dir = tmp_path / "source"
    archive = Archive.open(NodeSettings(data_dir=source_dir))
    first = make_ct(size=256)
    originals: dict[str, bytes] = {}
    try:
        for i in range(6):
            ds = make_ct(first.StudyInstanceUID, first.SeriesInstanceUID, size=256, seed=i)
            ds.InstanceNumber = i + 1
            originals[ds.SOPInstanceUID] = to_bytes(ds)
            store_bytes(archive, originals[ds.SOPInstanceUID])
    finally:
        archive.close()
    source = start_node(source_dir)
    proxy = CuttingProxy(source.port)
    url = f"http://127.0.0.1:{proxy.port}/dicom-web"
    data_dir = tmp_path / "node"
    try:
        proxy.cut_after = int(sum(len(x) for x in originals.values()) * 0.6)
        broken = run_import(url, data_dir)
        assert broken.returncode == 1, broken.stderr
        report = json.loads(broken.stdout)
        assert report["studies_found"] == 1 and report["studies_complete"] == 0
        assert report["instances_stored"] == 3
        assert [f["study_uid"] for f in report["failures"]] == [first.StudyInstanceUID]
        assert "retrieving the study failed" in report["failures"][0]["reason"]
        kept = _stored_study(data_dir, first.StudyInstanceUID)
        assert len(kept) == 3 and all(originals[sop] == raw for sop, raw in kept.items())
        # Nothing of the fourth instance was kept: one blob per stored instance, no partial one.
        assert len(blob_files(data_dir)) == 3

        proxy.cut_after = None
        again = run_import(url, data_dir)
        assert again.returncode == 0, again.stdout
        report = json.loads(again.stdout)
        assert report["studies_complete"] == 1 and report["failed"] == 0
        assert report["instances_already_present"] == 3 and report["instances_stored"] == 3
        assert _stored_study(data_dir, first.StudyInstanceUID) == originals
    finally:
        proxy.close()
        source.stop()
