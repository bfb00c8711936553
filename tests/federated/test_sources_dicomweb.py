"""The DICOMweb source against a real archive (Orthanc on loopback), loaded by STOW-RS."""

from __future__ import annotations

import csv
import http.server
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from federated.data import load_site
from federated.sources import SourceError, SourceOptions, open_source
from federated.synth import synthesize
from tests.node.opshelpers import orthanc_start, orthanc_stop
from tests.ports import free_port


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh Orthanc with its DICOMweb plugin; yields the DICOMweb root URL."""
    work = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_port(), free_port()
    orthanc_start(work, http_port, dicom_port)
    try:
        yield f"http://127.0.0.1:{http_port}/dicom-web"
    finally:
        orthanc_stop(work)


@pytest.fixture(scope="module")
def stored_site(orthanc: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic site stored in Orthanc via STOW-RS, plus one hand radiograph (not chest)."""
    site = synthesize(tmp_path_factory.mktemp("dw"), sites=2, per_site=10, seed=21, image_size=64)[
        1
    ]
    datasets = [pydicom.dcmread(p) for p in sorted(site.glob("*.dcm"))]
    hand = pydicom.dcmread(sorted(site.glob("*.dcm"))[0])
    hand.BodyPartExamined = "HAND"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(hand, keyword, pydicom.uid.generate_uid())
    hand.file_meta.MediaStorageSOPInstanceUID = hand.SOPInstanceUID
    client = DICOMwebClient(orthanc)
    for ds in [*datasets, hand]:
        client.store_instances([ds])
    # The hand is labelled too: the QIDO filter, not the labels, must keep it out.
    labels = site.parent / "dicomweb-labels.csv"
    shutil.copy(site / "labels.csv", labels)
    with labels.open("a", newline="") as fh:
        csv.writer(fh).writerow(["", hand.SOPInstanceUID, "", "", *["1"] * 9])
    return site


def _labels(site: Path) -> Path:
    return site.parent / "dicomweb-labels.csv"


@pytest.mark.integration
def test_loads_labelled_chest_radiographs_and_caches_only_in_the_cache_dir(
    orthanc: str, stored_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hospital-cache"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # catches any stray temp file
    options = SourceOptions(labels=_labels(stored_site), cache_dir=cache)
    records = open_source(f"dicomweb:{orthanc}", options)
    reference = {r.key: r for r in open_source(str(stored_site))}
    # Exactly the chest radiographs: the labelled hand radiograph is filtered out by the query.
    assert sorted(r.key for r in records) == sorted(reference)
    for record in records:
        image = record.load()
        expected = reference[record.key].load()
        np.testing.assert_allclose(image, expected, atol=1e-3)  # float16 cache precision
        np.testing.assert_array_equal(record.labels, reference[record.key].labels)
    cached = sorted(cache.iterdir())
    assert len(cached) == 10
    assert all(p.suffix == ".npy" and len(p.stem) == 40 for p in cached)
    assert all("2.25." not in p.name for p in cached)  # no UIDs in file names
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in cached)
    assert list(scratch.iterdir()) == []


@pytest.mark.integration
def test_cached_images_load_without_the_server(
    orthanc: str, stored_site: Path, tmp_path: Path
) -> None:
    options = SourceOptions(labels=_labels(stored_site), cache_dir=tmp_path / "c")
    records = open_source(f"dicomweb:{orthanc}", options)
    first = [r.load() for r in records]
    # Point the same records at a dead server: every image must come from the cache.
    dead = SourceOptions(labels=options.labels, cache_dir=options.cache_dir)
    from federated.sources.dicomweb import load_instance, make_client

    client = make_client(f"http://127.0.0.1:{free_port()}/dicom-web", dead)
    again = [
        load_instance(client, "http://127.0.0.1:1", "1", "2", r.key, dead.cache_dir)
        for r in records
    ]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.integration
def test_load_site_over_dicomweb_splits_by_patient(orthanc: str, stored_site: Path) -> None:
    train = load_site(f"dicomweb:{orthanc}", 32, "train", seed=1, labels=_labels(stored_site))
    val = load_site(f"dicomweb:{orthanc}", 32, "val", seed=1, labels=_labels(stored_site))
    assert len(train) + len(val) == 10 and len(val) == 2
    assert not set(train.keys) & set(val.keys)
    image, labels = val[0]
    assert image.shape == (1, 32, 32) and labels.shape == (9,)


def test_dicomweb_errors_are_typed(stored_site: Path) -> None:
    with pytest.raises(SourceError, match="labels CSV"):
        open_source("dicomweb:http://127.0.0.1:1/dicom-web")
    options = SourceOptions(labels=_labels(stored_site), timeout_s=2)
    with pytest.raises(SourceError, match="cannot reach DICOMweb server"):
        open_source(f"dicomweb:http://127.0.0.1:{free_port()}/dicom-web", options)
    with pytest.raises(SourceError, match="http"):
        open_source("dicomweb:ftp://example/dicom-web", options)


class _TokenServer(http.server.BaseHTTPRequestHandler):
    """A DICOMweb endpoint that answers QIDO only with the right bearer token."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != "Bearer training-token":
            self.send_response(401)
            self.end_headers()
            return
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_bearer_token_is_sent_and_a_refusal_is_reported(stored_site: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"dicomweb:http://127.0.0.1:{server.server_address[1]}/dicom-web"
    labels = stored_site / "labels.csv"
    try:
        with pytest.raises(SourceError, match="HTTP 401") as refused:
            open_source(url, SourceOptions(labels=labels, token="wrong"))
        assert "wrong" not in str(refused.value)
        with pytest.raises(SourceError, match="no labelled chest radiograph"):
            open_source(url, SourceOptions(labels=labels, token="training-token"))
        assert "Bearer training-token" in _TokenServer.seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_real_jpeg2000_chest_cr_round_trips_through_the_archive(
    orthanc: str, shared_data: Path, tmp_path: Path
) -> None:
    real = pydicom.dcmread(shared_data / "chest-cr-philips-j2k.dcm")
    DICOMwebClient(orthanc).store_instances([real])
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sop_instance_uid", "cardiomegaly"])
        writer.writerow([real.SOPInstanceUID, "1"])
    options = SourceOptions(labels=labels, cache_dir=tmp_path / "cache")
    records = open_source(f"dicomweb:{orthanc}", options)
    assert [r.key for r in records] == [real.SOPInstanceUID]
    image = records[0].load()
    assert max(image.shape) == 1024  # capped before caching
    assert np.isnan(records[0].labels).sum() == 8 and records[0].labels[1] == 1
    from federated.preprocess import presentation_array, resize

    expected = resize(presentation_array(real), 1024)
    np.testing.assert_allclose(image, expected, atol=2e-3)
