"""Helpers for the DIMSE tests: a node with its DIMSE port open, DCMTK clients, Part-10 bytes."""

from __future__ import annotations

import io
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.node.conftest import RunningNode, free_port, start_node

NODE_AE = "PACSMESH"
MODALITY_AE = "MODALITY1"
WORKSTATION_AE = "WS1"
ARCHIVE_AE = "ARCHIVE1"
ORIGINAL = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class DimseNode:
    """A node process with DIMSE on, and the port its workstation AE (a C-MOVE target) uses."""

    node: RunningNode
    dimse_port: int
    workstation_port: int

    @property
    def dicomweb(self) -> str:
        return self.node.dicomweb


def start_dimse_node(data_dir: Path, database_url: str | None) -> DimseNode:
    """A node knowing MODALITY1 (modality), WS1 (workstation) and ARCHIVE1 (archive).

    Remote AEs come from environment variables, as an operator would set them; the env var
    names lower-case the titles, which the node must still match.
    """
    dimse_port, ws_port = free_port(), free_port()
    env: dict[str, str] = {"NODE_FSYNC": "false"}
    for title, role, port in (
        (MODALITY_AE, "modality", free_port()),
        (WORKSTATION_AE, "workstation", ws_port),
        (ARCHIVE_AE, "archive", free_port()),
    ):
        env[f"NODE_REMOTE_AES__{title}__HOST"] = "127.0.0.1"
        env[f"NODE_REMOTE_AES__{title}__PORT"] = str(port)
        env[f"NODE_REMOTE_AES__{title}__ROLE"] = role
    node = start_node(data_dir, database_url, env=env, args=["--dimse-port", str(dimse_port)])
    return DimseNode(node, dimse_port, ws_port)


@pytest.fixture
def dimse_node(database_url: str, tmp_path: Path) -> Iterator[DimseNode]:
    """A fresh DIMSE-enabled node over each backend."""
    running = start_dimse_node(tmp_path / "node", database_url)
    yield running
    running.node.stop()


def dcmtk(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK client; its verbose output is returned for the test to read."""
    return subprocess.run(
        [tool, "-v", *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part-10 file: what travels in a C-STORE, without the File Meta."""
    assert part10[128:132] == b"DICM"
    # PS3.10 §7.1: (0002,0000) UL, explicit VR: tag, 'UL', 2-byte length, 4-byte value.
    (group_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + group_length :]


def wado_instance(root: str, ds: Dataset) -> bytes:
    """The stored instance as WADO-RS returns it, unchanged (transfer-syntax=*)."""
    url = (
        f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    r = httpx.get(url, headers={"Accept": ORIGINAL}, timeout=60)
    assert r.status_code == 200, r.text
    boundary = r.headers["content-type"].split("boundary=")[1]
    body = r.content
    head_end = body.index(b"\r\n\r\n") + 4
    tail = body.rindex(f"\r\n--{boundary}--".encode())
    return body[head_end:tail]


def header(path: Path) -> Dataset:
    """A file's header (no pixel data)."""
    return pydicom.dcmread(io.BytesIO(path.read_bytes()), stop_before_pixels=True)


def storescu(node: DimseNode, calling: str, files: list[Path], *options: str) -> str:
    """Send files with storescu, one association; returns its output."""
    result = dcmtk(
        "storescu",
        *options,
        "-aet",
        calling,
        "-aec",
        NODE_AE,
        "127.0.0.1",
        str(node.dimse_port),
        *(str(f) for f in files),
    )
    return result.stdout + result.stderr


def findscu(
    node: DimseNode, model: str, keys: list[str], out_dir: Path, calling: str = WORKSTATION_AE
) -> tuple[list[Dataset], str]:
    """Run findscu (-P patient root, -S study root, -W worklist); the responses as datasets."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    args = [model, "-X", "-od", str(out_dir), "-aet", calling, "-aec", NODE_AE]
    for key in keys:
        args += ["-k", key]
    result = dcmtk("findscu", *args, "127.0.0.1", str(node.dimse_port))
    responses: list[Dataset] = [pydicom.dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]
    return responses, result.stdout + result.stderr
