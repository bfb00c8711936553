"""Fuzzing STOW-RS: multipart framing and DICOM content (hypothesis, app in-process).

For every generated request: never a 500; every reply is a 2xx/4xx with a reason; never a
partial store — what the index lists after the request is whole and byte-identical to something
sent, the reply's ReferencedSOPSequence lists exactly the instances the request left stored,
a refused request stores nothing, and nothing stored before is altered.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from sqlalchemy import text
from starlette.testclient import TestClient

from node.app import create_app
from node.dicom.part10 import LONG_VRS, Part10Error, Part10Scanner
from node.services.archive import Archive
from node.settings import NodeSettings
from tests.node.opshelpers import AS_STORED, failed_sops, referenced_sops, split_multipart

TEMPLATES = [
    "CT_small.dcm",  # Explicit VR Little Endian
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
    "test-SR.dcm",  # nested sequences, undefined lengths
    "SC_rgb_jpeg_gdcm.dcm",  # encapsulated Pixel Data
    "ExplVR_BigEnd.dcm",  # Explicit VR Big Endian
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
]
MAX_PARTS = 8
# A fixed, bounded run in the suite; PACSMESH_FUZZ_EXAMPLES=5000 fuzzes longer and randomly.
_LONG_RUN = int(os.environ.get("PACSMESH_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_LONG_RUN or 120,
    deadline=None,
    derandomize=not _LONG_RUN,
    # No shrinking: a failure's first example is reported as found, instead of minutes spent
    # shrinking multi-kilobyte DICOM payloads.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _load_templates() -> list[pydicom.Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [pydicom.dcmread(str(get_testdata_file(name))) for name in TEMPLATES]


_TEMPLATE_DATASETS = _load_templates()


def make_instance(template: int, study: int, series: int, sop: int) -> bytes:
    """A valid instance of a template with UIDs drawn by hypothesis (collisions are wanted)."""
    ds = _TEMPLATE_DATASETS[template].copy()
    ds.StudyInstanceUID = f"2.25.{study}"
    ds.SeriesInstanceUID = f"2.25.{study}.{series}"
    sop_uid = pydicom.uid.UID(f"2.25.{study}.{series}.{sop}")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def element_offsets(data: bytes) -> list[tuple[int, bool, bool]]:
    """(offset, explicit, long-length) of the top-level data elements, as far as they walk."""
    scanner = Part10Scanner()
    try:
        scanner.feed(data)
    except Part10Error:
        return []
    if scanner.dataset_offset is None or scanner.deflated:
        return []
    little = scanner.transfer_syntax != "1.2.840.10008.1.2.2"
    explicit = scanner.transfer_syntax != "1.2.840.10008.1.2"
    end = "<" if little else ">"
    out, pos = [], scanner.dataset_offset
    while pos + 12 <= len(data):
        vr = data[pos + 4 : pos + 6]
        long_vr = not explicit or vr in LONG_VRS
        out.append((pos, explicit, long_vr))
        if explicit and long_vr:
            length, header = struct.unpack_from(end + "I", data, pos + 8)[0], 12
        elif explicit:
            length, header = struct.unpack_from(end + "H", data, pos + 6)[0], 8
        else:
            length, header = struct.unpack_from(end + "I", data, pos + 4)[0], 8
        if length == 0xFFFFFFFF:
            break
        pos += header + length
    return out


# -- strategies --------------------------------------------------------------------------------

valid_instances = st.builds(
    make_instance,
    st.integers(0, len(TEMPLATES) - 1),
    st.integers(1, 12),
    st.integers(1, 3),
    st.integers(1, 400),
)


@st.composite
def mutated_instances(draw: st.DrawFn) -> bytes:
    """A valid instance damaged the ways real senders and broken disks damage files."""
    data = bytearray(draw(valid_instances))
    elements = element_offsets(bytes(data))
    kind = draw(
        st.sampled_from(
            ["truncate", "flip", "garbage_after_dicm", "bad_vr", "bad_length", "undefined_length"]
        )
    )
    if kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "garbage_after_dicm":
        data[132:132] = draw(st.binary(min_size=1, max_size=64))
    elif elements:
        pos, explicit, long_vr = draw(st.sampled_from(elements))
        if kind == "bad_vr" and explicit:
            data[pos + 4 : pos + 6] = draw(st.binary(min_size=2, max_size=2))
        elif kind == "bad_length":
            if long_vr:
                at = pos + (8 if explicit else 4)
                data[at : at + 4] = struct.pack("<I", draw(st.integers(0, 0xFFFFFFFE)))
            else:
                data[pos + 6 : pos + 8] = struct.pack("<H", draw(st.integers(0, 0xFFFF)))
        else:  # an undefined length where none may be
            at = pos + (8 if explicit and long_vr else 4 if not explicit else 6)
            width = 2 if explicit and not long_vr else 4
            data[at : at + width] = b"\xff" * width
    return bytes(data)


payloads = st.one_of(
    valid_instances,
    mutated_instances(),
    st.binary(max_size=512),
    st.just(b""),
    st.builds(lambda tail: b"\0" * 128 + b"DICM" + tail, st.binary(max_size=256)),
)

_BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"

part_headers = st.one_of(
    st.just(b"Content-Type: application/dicom\r\n"),
    st.just(b"content-type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"),
    st.just(b""),
    st.just(b"Content-Type: text/plain\r\n"),
    st.just(b"Content-Type: application/dicom\r\nX-Junk: " + b"x" * 20000 + b"\r\n"),
    st.builds(
        lambda junk: b"Content-Type: application/dicom\r\n" + junk + b"\r\n",
        st.binary(max_size=80).filter(lambda b: b"\r\n" not in b),
    ),
)


@dataclass
class Request:
    """A generated STOW-RS request and the payloads it meant to carry."""

    content_type: str
    body: bytes
    payloads: list[bytes] = field(default_factory=list)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """A multipart/related request, framed well or badly."""
    boundary = draw(st.text(_BCHARS, min_size=1, max_size=70))
    parts = draw(st.lists(st.tuples(part_headers, payloads), min_size=0, max_size=MAX_PARTS + 2))
    body = bytearray()
    if draw(st.booleans()):
        body += draw(st.binary(max_size=40)).replace(b"--", b"") + b"\r\n"  # a preamble
    for headers, payload in parts:
        body += b"--" + boundary.encode() + b"\r\n" + headers + b"\r\n" + payload + b"\r\n"
    framing = draw(
        st.sampled_from(["good", "good", "good", "no_close", "cut", "lf_only", "junk_after"])
    )
    if framing != "no_close":
        body += b"--" + boundary.encode() + b"--\r\n"
    if framing == "cut" and body:
        del body[draw(st.integers(0, len(body) - 1)) :]
    elif framing == "lf_only":
        body = bytearray(body.replace(b"\r\n", b"\n"))
    elif framing == "junk_after":
        body += draw(st.binary(max_size=64))
    quoted = draw(st.booleans())
    b = f'"{boundary}"' if quoted or any(c in boundary for c in "'()+,/:=?") else boundary
    content_type = draw(
        st.sampled_from(
            [
                f'multipart/related; type="application/dicom"; boundary={b}',
                f"multipart/related; boundary={b}",
                'multipart/related; type="application/dicom"',
                f'multipart/related; type="image/jpeg"; boundary={b}',
                "application/dicom",
            ]
        )
    )
    return Request(content_type, bytes(body), [p for _, p in parts])


# -- the harness -------------------------------------------------------------------------------


@dataclass
class Harness:
    """The node app in-process over a throwaway data directory, and everything ever sent."""

    client: TestClient
    archive: Archive
    sent: dict[str, bytes] = field(default_factory=dict)  # sha256 -> payload

    def snapshot(self) -> dict[str, str]:
        with self.archive.engine.connect() as conn:
            rows = conn.execute(text("SELECT sop_instance_uid, content_sha256 FROM instance"))
            return {str(sop): str(sha) for sop, sha in rows}

    def post(self, request: Request) -> None:
        for payload in request.payloads:
            self.sent[hashlib.sha256(payload).hexdigest()] = payload
            if payload[128:132] != b"DICM" and payload[:2] == b"\x02\x00":
                # The store supplies a missing PS3.10 preamble; that is the only change allowed.
                whole = b"\0" * 128 + b"DICM" + payload
                self.sent[hashlib.sha256(whole).hexdigest()] = whole
        before = self.snapshot()
        reply = self.client.post(
            "/dicom-web/studies",
            content=request.body,
            headers={"Content-Type": request.content_type, "Accept": "application/dicom+json"},
        )
        after = self.snapshot()
        assert reply.status_code in (200, 202, 400, 409, 413, 415), reply.status_code
        body = reply.json()
        new = set(after) - set(before)
        assert set(before) <= set(after), "a request removed stored instances"
        assert all(after[sop] == sha for sop, sha in before.items()), "stored content changed"
        if reply.status_code in (200, 202, 409):
            stored, failed = referenced_sops(body), failed_sops(body)
            assert set(stored) <= set(after), "acknowledged instances are not stored"
            assert new <= set(stored), "instances stored without being acknowledged"
            assert all(item["00081197"]["Value"][0] for item in failed)
            assert all(item["00000902"]["Value"][0] for item in failed)
            assert (reply.status_code == 200) == (not failed)
            assert (reply.status_code == 409) == (not stored)
        else:
            assert not new, f"a refused request ({reply.status_code}) left instances stored"
            assert body.get("error"), "a refusal must say why"
        for sop in new:
            self.check_whole(sop, after[sop])

    def check_whole(self, sop: str, sha: str) -> None:
        assert sha in self.sent, f"{sop}: stored bytes are not any payload that was sent"
        with self.archive.engine.connect() as conn:
            study, series = conn.execute(
                text("SELECT study_uid, series_uid FROM instance WHERE sop_instance_uid = :s"),
                {"s": sop},
            ).one()
        reply = self.client.get(
            f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": AS_STORED},
        )
        assert reply.status_code == 200
        assert split_multipart(reply.headers["content-type"], reply.content) == [self.sent[sha]]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz") / "node"
    # fsync off: durability is the crash test's subject; here it would only slow the examples.
    node_settings = NodeSettings(
        data_dir=data_dir,
        fsync=False,
        max_instances_per_request=MAX_PARTS,
        max_header_bytes=256 << 10,
        dimse_port=0,
        hl7_port=0,
        auth_enabled=False,  # fuzzes parsers, not auth (test_auth_matrix.py covers routes)
    )
    archive = Archive.open(node_settings)
    try:
        with TestClient(create_app(node_settings, archive)) as client:
            yield Harness(client, archive)
    finally:
        archive.close()


@FUZZ
@given(request=requests())
def test_fuzzed_multipart_requests(harness: Harness, request: Request) -> None:
    harness.post(request)


@FUZZ
@given(parts=st.lists(st.one_of(valid_instances, mutated_instances()), min_size=1, max_size=6))
def test_fuzzed_dicom_files_well_framed(harness: Harness, parts: list[bytes]) -> None:
    body = bytearray()
    for payload in parts:
        body += b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + payload + b"\r\n"
    body += b"--b0undary--\r\n"
    harness.post(
        Request(
            'multipart/related; type="application/dicom"; boundary=b0undary', bytes(body), parts
        )
    )


def test_fuzzing_stored_and_refused_both(harness: Harness) -> None:
    """The fuzzers above reached both outcomes: instances were stored and files were refused."""
    with harness.archive.engine.connect() as conn:
        stored: int = conn.execute(text("SELECT COUNT(*) FROM instance")).scalar_one()
    assert stored > 20
    assert len(harness.sent) > stored
