"""The capture gateway against a real node process: JPEG/PNG in, Secondary Capture out."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset

from tests.node.capture_helpers import (
    PATIENT,
    add_order,
    dciodvfy_errors,
    decoded,
    jpeg,
    png,
    studies_with_accession,
)
from tests.node.conftest import RunningNode, start_node

SC_BYTE = "1.2.840.10008.5.1.4.1.1.7.2"
SC_WORD = "1.2.840.10008.5.1.4.1.1.7.3"
SC_COLOR = "1.2.840.10008.5.1.4.1.1.7.4"
RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def sqlite_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, str]]:
    """One node for the module's many small captures (SQLite index)."""
    base = tmp_path_factory.mktemp("capture")
    url = f"sqlite:///{base / 'index.sqlite'}"
    running = start_node(base / "node", url)
    yield running, url
    running.stop()


def _post(node: RunningNode, accession: str, files: list[bytes], **fields: str) -> httpx.Response:
    parts = [
        ("file", (f"capture{n}.bin", data, "application/octet-stream"))
        for n, data in enumerate(files)
    ]
    return httpx.post(
        f"{node.url}/gateway/captures",
        data={"accession": accession, **fields},
        files=parts,
        timeout=60,
    )


def _retrieve(node: RunningNode, reply: httpx.Response) -> Dataset:
    body = reply.json()
    client = DICOMwebClient(node.dicomweb)
    ds: Dataset = client.retrieve_instance(
        body["study_uid"], body["series_uid"], body["sop_instance_uid"]
    )
    return ds


def _frames(ds: Dataset) -> npt.NDArray[Any]:
    pixels = ds.pixel_array
    return pixels if int(ds.NumberOfFrames) > 1 else pixels[None, ...]


def _assert_order_attributes(ds: Dataset, order: Any) -> None:
    assert str(ds.PatientName) == PATIENT["name"]
    assert ds.PatientID == order.patient_mrn
    assert ds.IssuerOfPatientID == "GENERAL"
    assert ds.PatientBirthDate == PATIENT["birth_date"]
    assert ds.PatientSex == "M"
    assert ds.AccessionNumber == order.accession_number
    assert ds.ReferringPhysicianName == "Doe^Jane"
    assert ds.StudyDescription == "Ultrasound abdomen"
    assert ds.Modality == "US"
    request = ds.RequestAttributesSequence[0]
    assert request.RequestedProcedureID == "RP1"
    assert request.RequestedProcedureCodeSequence[0].CodeValue == "USABD"


def test_gray_png_becomes_a_grayscale_byte_sc_of_the_order(
    node: RunningNode, database_url: str, tmp_path: Path
) -> None:
    order = add_order(database_url, "ACC-GRAY")
    pixels = RNG.integers(0, 256, (60, 80), dtype=np.uint8)
    reply = _post(node, "ACC-GRAY", [png(pixels)], description="Liver views")
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["study_uid"] == order.study_uid  # the worklist UID: the capture joins the study
    assert body["sop_class_uid"] == SC_BYTE
    assert body["number_of_frames"] == 1
    assert body["retrieve_url"].endswith(f"/instances/{body['sop_instance_uid']}")
    ds = _retrieve(node, reply)
    _assert_order_attributes(ds, order)
    assert ds.ConversionType == "WSD"
    assert ds.SeriesDescription == "Liver views"
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.LossyImageCompression == "00"
    assert np.array_equal(_frames(ds)[0], pixels)
    assert dciodvfy_errors(ds, tmp_path) == []
    assert len(studies_with_accession(node.dicomweb, "ACC-GRAY")) == 1


def _gray16() -> npt.NDArray[Any]:
    return RNG.integers(0, 65536, (50, 40), dtype=np.uint16)


def _rgb() -> npt.NDArray[Any]:
    return RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _smooth_rgb() -> npt.NDArray[Any]:
    # JPEG handles smooth images well: the tolerance check below is meaningful on these.
    y, x = np.mgrid[0:64, 0:96]
    return np.stack([x * 2, y * 3, (x + y)], axis=2).astype(np.uint8)


@pytest.mark.parametrize(
    ("kind", "make", "sop_class", "photometric"),
    [
        ("rgb-png", lambda: [png(_rgb())], SC_COLOR, "RGB"),
        (
            "rgba-png",
            lambda: [png(np.dstack([_rgb(), np.full((48, 64), 7, np.uint8)]))],
            SC_COLOR,
            "RGB",
        ),
        ("gray16-png", lambda: [png(_gray16())], SC_WORD, "MONOCHROME2"),
        ("gray-jpeg", lambda: [jpeg(_smooth_rgb()[:, :, 0])], SC_BYTE, "MONOCHROME2"),
        ("rgb-jpeg", lambda: [jpeg(_smooth_rgb())], SC_COLOR, "RGB"),
        ("three-rgb-pngs", lambda: [png(_rgb()) for _ in range(3)], SC_COLOR, "RGB"),
        ("two-gray16-pngs", lambda: [png(_gray16()) for _ in range(2)], SC_WORD, "MONOCHROME2"),
    ],
)
def test_every_pixel_kind_round_trips_and_validates(
    sqlite_node: tuple[RunningNode, str],
    tmp_path: Path,
    kind: str,
    make: Any,
    sop_class: str,
    photometric: str,
) -> None:
    node, url = sqlite_node
    accession = f"K-{kind}"[:16]
    order = add_order(url, accession)
    files: list[bytes] = make()
    reply = _post(node, accession, files)
    assert reply.status_code == 201, reply.text
    ds = _retrieve(node, reply)
    assert ds.SOPClassUID == sop_class
    assert ds.PhotometricInterpretation == photometric
    assert int(ds.NumberOfFrames) == len(files)
    _assert_order_attributes(ds, order)
    # The stored pixels are exactly what the files decode to (alpha dropped).
    expected = np.stack(
        [decoded(f)[..., :3] if decoded(f).ndim == 3 else decoded(f) for f in files]
    )
    got = _frames(ds)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    if photometric == "RGB":
        assert ds.PlanarConfiguration == 0
    if "jpeg" in kind:
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_10918_1"
        source = _smooth_rgb() if kind == "rgb-jpeg" else _smooth_rgb()[:, :, 0]
        assert np.abs(got[0].astype(int) - source.astype(int)).mean() < 3  # JPEG q90
    else:
        assert ds.LossyImageCompression == "00"
    if sop_class == SC_WORD:
        assert ds.BitsAllocated == 16 and ds.BitsStored == 16
    assert dciodvfy_errors(ds, tmp_path) == []


def test_bare_image_body_with_query_and_digitized_film(
    sqlite_node: tuple[RunningNode, str], tmp_path: Path
) -> None:
    node, url = sqlite_node
    add_order(url, "ACC-FILM")
    film = RNG.integers(0, 256, (70, 50), dtype=np.uint8)
    reply = httpx.post(
        f"{node.url}/gateway/captures",
        params={"accession": "ACC-FILM", "conversion_type": "DF"},
        content=png(film, dpi=(254, 254)),
        headers={"content-type": "image/png"},
    )
    assert reply.status_code == 201, reply.text
    assert reply.headers["location"] == reply.json()["retrieve_url"]
    ds = _retrieve(node, reply)
    assert ds.ConversionType == "DF"
    assert [float(v) for v in ds.NominalScannedPixelSpacing] == [0.1, 0.1]  # 254 dpi
    assert np.array_equal(_frames(ds)[0], film)
    assert dciodvfy_errors(ds, tmp_path) == []


def test_capture_joins_the_study_already_matched_to_the_order(
    sqlite_node: tuple[RunningNode, str],
) -> None:
    node, url = sqlite_node
    order = add_order(url, "ACC-MATCHED", status="completed", matched_study_uid="1.2.3.4.5.6")
    reply = _post(node, "ACC-MATCHED", [png(_rgb())])
    assert reply.status_code == 201, reply.text
    assert reply.json()["study_uid"] == "1.2.3.4.5.6" != order.study_uid
    ds = _retrieve(node, reply)
    assert ds.StudyInstanceUID == "1.2.3.4.5.6"
    # The order's own worklist UID stays on record in the request attributes.
    assert ds.RequestAttributesSequence[0].StudyInstanceUID == order.study_uid


def test_animated_png_frames_become_frames(
    sqlite_node: tuple[RunningNode, str], tmp_path: Path
) -> None:
    node, url = sqlite_node
    add_order(url, "ACC-APNG")
    frames = [RNG.integers(0, 256, (30, 40), dtype=np.uint8) for _ in range(3)]
    buffer = io.BytesIO()
    first, *rest = (Image.fromarray(f) for f in frames)
    first.save(buffer, "PNG", save_all=True, append_images=rest, duration=100)
    reply = _post(node, "ACC-APNG", [buffer.getvalue()])
    assert reply.status_code == 201, reply.text
    ds = _retrieve(node, reply)
    assert int(ds.NumberOfFrames) == 3
    assert np.array_equal(_frames(ds), np.stack(frames))
    assert dciodvfy_errors(ds, tmp_path) == []
