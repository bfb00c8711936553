"""Streaming and limits: a 1 GiB instance goes in and out without the node holding it in memory;
requests over the size or instance-count limits get 413 and store nothing."""

from __future__ import annotations

import hashlib
import io
import secrets
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from node.dicom.multipart import MultipartParser, PartData, parse_media_type
from tests.node.conftest import RunningNode, start_node
from tests.node.opshelpers import AS_STORED, blob_files, multipart_body, referenced_sops

MIB = 1 << 20
PIXEL_BYTES = 1 << 30  # 256 frames of 1024 x 2048 x 16 bits
RSS_LIMIT = 300 * MIB


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("VmHWM not reported")


def big_header(study: str, series: str, sop: str) -> bytes:
    """Part-10 bytes of a multi-frame image up to (and including) its Pixel Data element header."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7.3")
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, UID(sop)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = UID(study), UID(series)
    ds.PatientID, ds.Modality = "STREAM-1", "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1024, 2048, PIXEL_BYTES // (1024 * 2048 * 2)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    # PS3.5 §7.1.2: (7FE0,0010) OW, two reserved bytes, 32-bit length; the value streams after.
    return buf.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, PIXEL_BYTES)


class BigUpload:
    """A STOW-RS body generated on the fly: nothing of the 1 GiB is ever held whole."""

    def __init__(self) -> None:
        self.study, self.series, self.sop = generate_uid(), generate_uid(), generate_uid()
        self.boundary = secrets.token_hex(12)
        self.sha256 = hashlib.sha256()
        self.size = 0

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def body(self) -> Iterator[bytes]:
        yield f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        head = big_header(self.study, self.series, self.sop)
        self._count(head)
        yield head
        block = secrets.token_bytes(4 * MIB)
        for i in range(PIXEL_BYTES // len(block)):
            chunk = bytes([i & 0xFF]) + block[1:]  # every block differs
            self._count(chunk)
            yield chunk
        yield f"\r\n--{self.boundary}--\r\n".encode()

    def _count(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)


@pytest.mark.slow
def test_one_gib_instance_streams_in_and_out_in_bounded_memory(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node")
    try:
        upload = BigUpload()
        with httpx.Client(timeout=httpx.Timeout(300.0)) as client:
            reply = client.post(
                f"{node.dicomweb}/studies",
                content=upload.body(),
                headers={"Content-Type": upload.content_type, "Accept": "application/dicom+json"},
            )
            assert reply.status_code == 200, reply.text
            assert referenced_sops(reply.json()) == [upload.sop]
            after_stow = peak_rss(node.process.pid)

            url = (
                f"{node.dicomweb}/studies/{upload.study}/series/{upload.series}"
                f"/instances/{upload.sop}"
            )
            sha, size = hashlib.sha256(), 0
            with client.stream("GET", url, headers={"Accept": AS_STORED}) as response:
                assert response.status_code == 200
                _, params = parse_media_type(response.headers["content-type"])
                parser = MultipartParser(params["boundary"].encode())
                for chunk in response.iter_bytes(MIB):
                    for event in parser.feed(chunk):
                        if isinstance(event, PartData):
                            sha.update(event.data)
                            size += len(event.data)
                parser.close()
            after_wado = peak_rss(node.process.pid)
        print(f"peak RSS: STOW {after_stow / MIB:.0f} MiB, WADO {after_wado / MIB:.0f} MiB")
        assert size == upload.size > PIXEL_BYTES
        assert sha.hexdigest() == upload.sha256.hexdigest()
        assert after_stow < RSS_LIMIT, f"peak RSS {after_stow / MIB:.0f} MiB during STOW"
        assert after_wado < RSS_LIMIT, f"peak RSS {after_wado / MIB:.0f} MiB during WADO"
        # The blob on disk is ciphertext of about the same size (no plaintext copy anywhere).
        blobs = list((node.data_dir / "blobs").rglob("*"))
        sizes = [p.stat().st_size for p in blobs if p.is_file()]
        assert len(sizes) == 1 and upload.size < sizes[0] < upload.size + 64 * 1024
    finally:
        node.stop()
        shutil.rmtree(node.data_dir, ignore_errors=True)  # pytest keeps recent tmp dirs: 1 GiB


def _instances(n: int) -> list[bytes]:
    base = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    study, series = generate_uid(), generate_uid()
    out = []
    for _ in range(n):
        base.StudyInstanceUID, base.SeriesInstanceUID = study, series
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = io.BytesIO()
        base.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def _nothing_stored(node: RunningNode, client: httpx.Client, instances: list[bytes]) -> None:
    for data in instances:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        reply = client.get(f"{node.dicomweb}/studies/{ds.StudyInstanceUID}")
        assert reply.status_code == 404
    assert not blob_files(node.data_dir)
    assert not list((node.data_dir / "tmp").iterdir())


@pytest.fixture
def limited_node(tmp_path: Path) -> Iterator[RunningNode]:
    """A node with small limits, set the way operators set them (environment)."""
    env = {"NODE_MAX_REQUEST_BYTES": str(MIB), "NODE_MAX_INSTANCES_PER_REQUEST": "3"}
    node = start_node(tmp_path / "node", env=env)
    yield node
    node.stop()


def test_request_over_the_size_limit_gets_413_and_stores_nothing(
    limited_node: RunningNode,
) -> None:
    instances = _instances(40)  # ~1.5 MiB in all, over the 1 MiB limit
    body, content_type = multipart_body(instances)
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    with httpx.Client(timeout=60) as client:
        # Declared length over the limit: refused before reading the body.
        reply = client.post(f"{limited_node.dicomweb}/studies", content=body, headers=headers)
        assert reply.status_code == 413
        assert "limit" in reply.json()["error"]
        # No declared length (chunked): refused once the limit is crossed, and the instances
        # stored before that point are removed again.
        chunks = (body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024))
        reply = client.post(f"{limited_node.dicomweb}/studies", content=chunks, headers=headers)
        assert reply.status_code == 413
        _nothing_stored(limited_node, client, instances)


def test_request_over_the_instance_limit_gets_413_and_stores_nothing(
    limited_node: RunningNode,
) -> None:
    instances = _instances(5)
    body, content_type = multipart_body(instances)
    with httpx.Client(timeout=60) as client:
        reply = client.post(
            f"{limited_node.dicomweb}/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
        assert reply.status_code == 413
        assert "more than 3 instances" in reply.json()["error"]
        _nothing_stored(limited_node, client, instances)
        # Within the limit, the same kind of request is stored.
        body, content_type = multipart_body(instances[:3])
        reply = client.post(
            f"{limited_node.dicomweb}/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )
        assert reply.status_code == 200
        assert len(referenced_sops(reply.json())) == 3
