"""QIDO-RS end to end: the real app on a socket, filled by STOW-RS, searched by dicomweb-client."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pydicom
import pytest
import uvicorn
from dicomweb_client import DICOMwebClient
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.app import create_app
from node.services import query as query_service
from node.settings import NodeSettings
from tests.conftest import SHARED_DATA
from tests.node.conftest import free_port, plaintext_findings
from tests.node.query_fixtures import PG_ADMIN_URL, PG_URL_TEMPLATE, make_dataset

REAL_FILES = [
    "chest-cr-philips-j2k.dcm",
    "mr-j2k-lossless.dcm",
    "us-multiframe-rgb.dcm",
]


def _part10(ds: Dataset) -> Dataset:
    """Give a generated dataset pixels and a file meta header, as a modality would send it."""
    ds.SamplesPerPixel = 1
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(ds.Rows * ds.Columns * 2)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = bytes(128)
    return ds


@dataclass
class Archive:
    """A running node with known contents."""

    root: str
    client: DICOMwebClient
    datasets: list[Dataset]
    generated_study: str
    generated_series: list[str]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    """A node app served by uvicorn on a loopback port, filled through STOW-RS."""
    pg_name = None
    database_url = None
    if request.param == "postgresql":
        pg_name = f"pacsmesh_qido_http_{secrets.token_hex(5)}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{pg_name}"')
        database_url = PG_URL_TEMPLATE.format(name=pg_name)
    port = free_port()
    settings = NodeSettings(
        data_dir=tmp_path_factory.mktemp("qido-node"),
        port=port,
        database_url=database_url,
        fsync=False,
        dimse_port=0,
        hl7_port=0,
        auth_enabled=False,  # not this file's subject: test_auth_matrix.py covers the routes
    )
    # In-process (not `pacsmesh node serve`) so a test can lower the result cap.
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    root = f"http://127.0.0.1:{port}/dicom-web"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "node did not start"
        time.sleep(0.05)
    try:
        client = DICOMwebClient(url=root)
        datasets: list[Dataset] = [pydicom.dcmread(SHARED_DATA / name) for name in REAL_FILES]
        datasets += [
            pydicom.dcmread(str(get_testdata_file(n))) for n in ("CT_small.dcm", "MR_small.dcm")
        ]
        study = str(generate_uid())
        series = [str(generate_uid()), str(generate_uid())]
        for number, (series_uid, modality, count) in enumerate(
            [(series[0], "CT", 3), (series[1], "SR", 1)], start=1
        ):
            for instance_number in range(1, count + 1):
                datasets.append(
                    _part10(
                        make_dataset(
                            patient_name="Doe^John",
                            patient_id="QIDO-001",
                            study_uid=study,
                            series_uid=series_uid,
                            modality=modality,
                            study_date="20240115",
                            study_time="101500",
                            accession="ACC-QIDO-1",
                            series_number=number,
                            instance_number=instance_number,
                        )
                    )
                )
        response = client.store_instances(datasets)
        assert "FailedSOPSequence" not in response, response  # every instance stored
        yield Archive(root, client, datasets, study, series)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        # Searching must not have left plaintext behind: no DICM preamble, no pixel data.
        pixels = pydicom.dcmread(SHARED_DATA / "us-multiframe-rgb.dcm").PixelData
        sample = next(
            pixels[i : i + 64]
            for i in range(0, len(pixels) - 64, 4096)
            if len(set(pixels[i : i + 64])) >= 24  # a stretch of image, not blank border
        )
        hits = plaintext_findings(settings.data_dir, [b"DICM", sample])
        assert not hits, "plaintext found on disk: " + "; ".join(hits)
        if pg_name is not None:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def first(dataset: dict[str, Any], tag: str) -> Any:
    return dataset[tag].get("Value", [None])[0]


def uids(results: list[dict[str, Any]], tag: str) -> list[str]:
    return [first(r, tag) for r in results]


def test_every_stored_study_is_found_with_its_counts(archive: Archive) -> None:
    studies = archive.client.search_for_studies()
    expected = {str(ds.StudyInstanceUID) for ds in archive.datasets}
    assert set(uids(studies, "0020000D")) == expected
    [generated] = [s for s in studies if first(s, "0020000D") == archive.generated_study]
    assert first(generated, "00201206") == 2
    assert first(generated, "00201208") == 4
    assert generated["00080061"]["Value"] == ["CT", "SR"]
    assert first(generated, "00100010") == {"Alphabetic": "Doe^John"}


def test_retrieve_url_leads_to_the_study(archive: Archive) -> None:
    [study] = archive.client.search_for_studies(search_filters={"PatientID": "5MR2"})
    url = first(study, "00081190")
    assert url == f"{archive.root}/studies/{first(study, '0020000D')}"
    metadata = httpx.get(url + "/metadata", headers={"Accept": "application/dicom+json"})
    assert metadata.status_code == 200
    assert metadata.json()[0]["00100020"]["Value"] == ["5MR2"]


def test_name_wildcard_and_fuzzy_matching(archive: Archive) -> None:
    found = archive.client.search_for_studies(
        search_filters={"PatientName": "compressedsamples^mr*"}
    )
    assert sorted(first(s, "00100020") for s in found) == ["4MR1", "5MR2"]
    fuzzy = archive.client.search_for_studies(
        search_filters={"PatientName": "joh"}, fuzzymatching=True
    )
    assert uids(fuzzy, "0020000D") == [archive.generated_study]


def test_date_range_and_modalities(archive: Archive) -> None:
    found = archive.client.search_for_studies(
        search_filters={"StudyDate": "20040101-20040131", "ModalitiesInStudy": "CT"}
    )
    assert [first(s, "00100020") for s in found] == ["1CT1"]
    listed = archive.client.search_for_studies(search_filters={"ModalitiesInStudy": ["CR", "US"]})
    assert sorted(first(s, "00100020") for s in listed) == ["13US1", "9RG1"]


def test_series_and_instances_of_a_study(archive: Archive) -> None:
    series = archive.client.search_for_series(study_instance_uid=archive.generated_study)
    assert uids(series, "0020000E") == archive.generated_series
    assert [first(s, "00201209") for s in series] == [3, 1]
    instances = archive.client.search_for_instances(
        study_instance_uid=archive.generated_study, series_instance_uid=archive.generated_series[0]
    )
    assert [first(i, "00200013") for i in instances] == [1, 2, 3]
    in_study = archive.client.search_for_instances(study_instance_uid=archive.generated_study)
    assert len(in_study) == 4


def test_top_level_series_and_instances(archive: Archive) -> None:
    mr = archive.client.search_for_series(search_filters={"Modality": "MR"})
    assert sorted(first(s, "00100020") for s in mr) == ["4MR1", "5MR2"]  # study attributes too
    us = archive.client.search_for_instances(search_filters={"PatientID": "13US1"})
    assert (first(us[0], "00280010"), first(us[0], "00280011")) == (480, 640)
    assert us[0]["00280008"] == {"vr": "IS"}  # the file carries no NumberOfFrames


def test_includefield_reads_the_encrypted_headers(archive: Archive) -> None:
    [study] = archive.client.search_for_studies(
        search_filters={"PatientID": "9RG1"}, fields=["InstitutionName", "00081090"]
    )
    assert first(study, "00080080") == "Philips Medical Systems Hamburg"
    [instance] = archive.client.search_for_instances(
        search_filters={"PatientID": "13US1"}, fields=["all"]
    )
    assert first(instance, "00080070") == "G.E. Medical Systems"
    assert "7FE00010" not in instance  # no bulk data in search results


def test_paging_with_get_remaining_sees_every_study_once(archive: Archive) -> None:
    everything = uids(archive.client.search_for_studies(), "0020000D")
    paged = uids(archive.client.search_for_studies(limit=2, get_remaining=True), "0020000D")
    assert paged == everything
    page = archive.client.search_for_studies(limit=2, offset=2)
    assert uids(page, "0020000D") == everything[2:4]


def test_no_match_is_204_and_an_empty_list(archive: Archive) -> None:
    response = httpx.get(f"{archive.root}/studies", params={"PatientID": "nobody"})
    assert response.status_code == 204 and response.content == b""
    assert archive.client.search_for_studies(search_filters={"PatientID": "nobody"}) == []


@pytest.mark.parametrize(
    ("path", "params", "reason"),
    [
        ("/studies", {"foo": "1"}, "'foo'"),
        ("/studies", {"limit": "ten"}, "'limit'"),
        ("/studies", {"offset": "-3"}, "'offset'"),
        ("/studies", {"StudyDate": "2024-13-01"}, "'StudyDate'"),
        ("/studies", {"0010002X": "a"}, "'0010002X'"),
        ("/series", {"SOPInstanceUID": "1.2"}, "instance-level"),
        ("/studies/not-a-uid/series", {}, "study UID"),
    ],
)
def test_bad_queries_get_400_with_the_reason(
    archive: Archive, path: str, params: dict[str, str], reason: str
) -> None:
    response = httpx.get(archive.root + path, params=params)
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_media_types(archive: Archive) -> None:
    url = f"{archive.root}/studies"
    for accept in ("application/dicom+json", "application/json", "*/*"):
        response = httpx.get(url, headers={"Accept": accept})
        assert response.status_code == 200, accept
        assert response.headers["content-type"] == "application/dicom+json"
    assert httpx.get(url, headers={"Accept": "application/dicom+xml"}).status_code == 406
    assert httpx.get(url).status_code == 200


def test_results_past_the_server_maximum_are_cut_with_a_warning(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = uids(archive.client.search_for_studies(), "0020000D")
    monkeypatch.setattr(query_service, "MAX_RESULTS", 2)
    response = httpx.get(f"{archive.root}/studies")
    assert response.status_code == 200
    assert uids(response.json(), "0020000D") == everything[:2]
    assert response.headers["Warning"].startswith("299 ")
    small = httpx.get(f"{archive.root}/studies", params={"limit": "1"})
    assert len(small.json()) == 1 and "Warning" not in small.headers
    # dicomweb-client pages through the cap with offset and still sees every study once.
    paged = archive.client.search_for_studies(get_remaining=True)
    assert uids(paged, "0020000D") == everything


def test_a_viewer_study_list_query(archive: Archive) -> None:
    """The query string an OHIF-class study list sends, literally encoded."""
    response = httpx.get(
        f"{archive.root}/studies?limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030%2C00080060&PatientName=*doe*&StudyDate=20240101-20241231",
        headers={"Accept": "application/dicom+json"},
    )
    assert response.status_code == 200
    [study] = response.json()
    assert first(study, "0020000D") == archive.generated_study
    assert study["00080061"]["Value"] == ["CT", "SR"]
    assert "00080060" not in study  # Modality is a series attribute; ModalitiesInStudy answers
