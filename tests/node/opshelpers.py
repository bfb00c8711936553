"""Helpers shared by the operational tests (import, crash, fuzz, streaming, exchange): multipart
bodies, reading WADO-RS replies, checking a data directory against its index, a connection that
breaks midway."""

from __future__ import annotations

import secrets
import select as io_select
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from node.dicom.multipart import MultipartParser, PartData, PartEnd, parse_media_type
from tests.conftest import REPO_ROOT

ORTHANC = REPO_ROOT.parent / "shared" / "peers" / "orthanc"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def multipart_body(parts: Iterable[bytes], boundary: str | None = None) -> tuple[bytes, str]:
    """A STOW-RS body of application/dicom parts and its Content-Type."""
    boundary = boundary or secrets.token_hex(12)
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += part
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f'multipart/related; type="application/dicom"; boundary={boundary}'


def split_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related reply, in order."""
    _, params = parse_media_type(content_type)
    parser = MultipartParser(params["boundary"].encode())
    parts: list[bytes] = []
    current = bytearray()
    for event in parser.feed(body):
        if isinstance(event, PartData):
            current += event.data
        elif isinstance(event, PartEnd):
            parts.append(bytes(current))
            current = bytearray()
    parser.close()
    return parts


def wado_instance(
    client: httpx.Client, root: str, study: str, series: str, sop: str
) -> httpx.Response:
    """WADO-RS of one instance, as stored."""
    return client.get(
        f"{root}/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": AS_STORED}
    )


def referenced_sops(body: dict[str, Any]) -> list[str]:
    """SOP Instance UIDs in a STOW-RS response's ReferencedSOPSequence (0008,1199)."""
    seq = body.get("00081199", {})
    items = seq.get("Value", []) if isinstance(seq, dict) else []
    return [item["00081155"]["Value"][0] for item in items]


def failed_sops(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Items of a STOW-RS response's FailedSOPSequence (0008,1198)."""
    seq = body.get("00081198", {})
    return list(seq.get("Value", [])) if isinstance(seq, dict) else []


@dataclass(frozen=True)
class IndexedInstance:
    """One row of the index as the tests see it."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    blob_name: str
    content_sha256: str
    size_bytes: int


def sqlite_index(data_dir: Path) -> tuple[list[IndexedInstance], dict[str, int], dict[str, int]]:
    """Read a stopped node's SQLite index directly: instances and the stored counters."""
    conn = sqlite3.connect(data_dir / "index.sqlite")
    try:
        rows = [
            IndexedInstance(*r)
            for r in conn.execute(
                "SELECT study_uid, series_uid, sop_instance_uid, blob_name, content_sha256,"
                " size_bytes FROM instance"
            )
        ]
        studies = dict(conn.execute("SELECT study_uid, number_of_instances FROM study").fetchall())
        series = dict(conn.execute("SELECT series_uid, number_of_instances FROM series").fetchall())
    finally:
        conn.close()
    return rows, studies, series


def blob_files(data_dir: Path) -> set[str]:
    """Names of every blob file on disk."""
    return {p.name for p in (data_dir / "blobs").rglob("*") if p.is_file()}


def orthanc_start(directory: Path, http_port: int, dicom_port: int) -> None:
    """Start Orthanc (the hospital's existing PACS) on loopback."""
    subprocess.run(
        [str(ORTHANC), "start", str(directory), str(http_port), str(dicom_port)],
        check=True,
        capture_output=True,
        timeout=600,
    )


def orthanc_stop(directory: Path) -> None:
    """Stop the Orthanc started in `directory` (by its PID file)."""
    subprocess.run([str(ORTHANC), "stop", str(directory)], check=False, timeout=60)


class CuttingProxy:
    """A loopback TCP proxy; with `cut_after` set it closes a connection once it has forwarded
    that many bytes from the server (TLS passes through untouched: the cut is a real network
    failure in the middle of a response)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut_after: int | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        limit = self.cut_after
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        sent_down = 0
        try:
            while not self._stop.is_set():
                ready, _, _ = io_select.select([client, upstream], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is upstream:
                        if limit is not None and sent_down + len(data) >= limit:
                            client.sendall(data[: max(0, limit - sent_down)])
                            return  # cut: both sides see the connection drop
                        sent_down += len(data)
                        client.sendall(data)
                    else:
                        upstream.sendall(data)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=5)
