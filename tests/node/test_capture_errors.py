"""Refused captures: the right 4xx, a message that says why, and nothing stored."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.node.capture_helpers import (
    PATIENT,
    add_order,
    deep_colour_png,
    gif,
    huge_png_header,
    jpeg,
    png,
    studies_with_accession,
)
from tests.node.conftest import RunningNode, start_node

GRAY = np.arange(40 * 30, dtype=np.uint32).reshape(30, 40).astype(np.uint8)


@pytest.fixture(scope="module")
def sqlite_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, str]]:
    base = tmp_path_factory.mktemp("capture-errors")
    url = f"sqlite:///{base / 'index.sqlite'}"
    running = start_node(base / "node", url)
    yield running, url
    running.stop()


def _form(node: RunningNode, accession: str | None, files: list[bytes]) -> httpx.Response:
    data = {"accession": accession} if accession is not None else {}
    parts = [("file", (f"f{n}.png", d, "image/png")) for n, d in enumerate(files)]
    return httpx.post(f"{node.url}/gateway/captures", data=data, files=parts, timeout=60)


def _assert_nothing_stored(node: RunningNode, accession: str) -> None:
    assert studies_with_accession(node.dicomweb, accession) == []


def _refused(reply: httpx.Response, status: int, words: str) -> None:
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]
    assert words in message
    # No personal data from the order in what a client (or a log) sees.
    for value in PATIENT.values():
        assert value not in message


def test_no_order_with_that_accession(sqlite_node: tuple[RunningNode, str]) -> None:
    node, _ = sqlite_node
    _refused(_form(node, "NO-SUCH", [png(GRAY)]), 422, "no order with that accession number")
    _assert_nothing_stored(node, "NO-SUCH")


def test_cancelled_order(sqlite_node: tuple[RunningNode, str]) -> None:
    node, url = sqlite_node
    add_order(url, "ACC-CANCEL", status="cancelled")
    _refused(_form(node, "ACC-CANCEL", [png(GRAY)]), 409, "cancelled")
    _assert_nothing_stored(node, "ACC-CANCEL")


@pytest.mark.parametrize(
    ("case", "files", "status", "words"),
    [
        ("not-an-image", [b"%PDF-1.7 this is a document\n" * 20], 415, "not a JPEG or PNG"),
        ("gif", [gif(GRAY)], 415, "GIF"),
        ("truncated-png", [png(GRAY)[:-60]], 400, "corrupt or truncated"),
        ("truncated-jpeg", [jpeg(GRAY)[:200]], 400, "truncated"),
        ("empty-file", [b""], 400, "empty"),
        ("sizes-differ", [png(GRAY), png(GRAY[:20])], 400, "same size"),
        ("one-bad-of-two", [png(GRAY), png(GRAY)[:-60]], 400, "file 2"),
        ("too-many-pixels", [huge_png_header(30000, 30000)], 413, "too many pixels"),
        ("deep-colour-png", [deep_colour_png(4, 4)], 415, "16-bit colour PNG"),
    ],
)
def test_bad_images_are_refused_and_nothing_is_stored(
    sqlite_node: tuple[RunningNode, str], case: str, files: list[bytes], status: int, words: str
) -> None:
    node, url = sqlite_node
    accession = f"B-{case}"[:16]
    add_order(url, accession)
    _refused(_form(node, accession, files), status, words)
    _assert_nothing_stored(node, accession)


def test_request_shape_errors(sqlite_node: tuple[RunningNode, str]) -> None:
    node, url = sqlite_node
    add_order(url, "ACC-SHAPE")
    root = f"{node.url}/gateway/captures"
    _refused(_form(node, None, [png(GRAY)]), 400, "accession number")
    _refused(httpx.post(root, data={"accession": "ACC-SHAPE"}), 415, "multipart/form-data")
    reply = httpx.post(
        root,
        params={"accession": "ACC-SHAPE"},
        content=b"{}",
        headers={"content-type": "application/json"},
    )
    _refused(reply, 415, "image/jpeg or image/png")
    reply = httpx.post(
        root,
        data={"accession": "ACC-SHAPE", "conversion_type": "XYZ"},
        files=[("file", ("a.png", png(GRAY), "image/png"))],
    )
    _refused(reply, 400, "conversion type")
    reply = httpx.post(
        root,
        data={"accession": "ACC-SHAPE", "conversion_type": "DF"},
        files=[("file", ("a.png", png(GRAY), "image/png"))],
    )
    _refused(reply, 400, "pixel_spacing")  # film with no resolution and no spacing given
    _assert_nothing_stored(node, "ACC-SHAPE")


def test_cli_posts_captures_to_a_running_node(
    sqlite_node: tuple[RunningNode, str], tmp_path: Path
) -> None:
    node, url = sqlite_node
    add_order(url, "ACC-CLI")
    files = []
    for n in range(2):
        path = tmp_path / f"endoscopy-{n}.png"
        path.write_bytes(png(np.dstack([GRAY, GRAY, GRAY + n])))
        files.append(str(path))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "node.cli", "node", "capture", *files]
    done = subprocess.run(
        [*command, "--order", "ACC-CLI", "--node", node.url, "--description", "Colonoscopy"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"number_of_frames": 2' in done.stdout
    studies = studies_with_accession(node.dicomweb, "ACC-CLI")
    assert len(studies) == 1
    refused = subprocess.run(
        [*command, "--order", "NO-ORDER", "--node", node.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "no order with that accession number" in refused.stderr
    assert "422" in refused.stderr
