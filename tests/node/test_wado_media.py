"""WADO-RS beyond the stored bytes: transcoding, frames, bulk data, rendered, thumbnails —
through dicomweb-client against a real node."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from tests.node.conftest import RunningNode, plaintext_findings, start_node
from tests.node.factories import pydicom_image_files, real_sample_files


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunningNode, list[pydicom.Dataset]]:
    """One SQLite node holding the real samples and pydicom's compressed fixtures."""
    node = start_node(tmp_path_factory.mktemp("wado") / "node")
    wanted = {"MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "rtdose_rle.dcm", "SC_rgb_rle.dcm"}
    paths = real_sample_files() + [p for p in pydicom_image_files() if p.name in wanted]
    datasets = [pydicom.dcmread(p) for p in paths]
    DICOMwebClient(node.dicomweb).store_instances(datasets)
    yield node, datasets
    node.stop()
    assert not plaintext_findings(node.data_dir, [b"DICM"])


def test_default_retrieve_transcodes_to_explicit_little_endian_pixel_identical(
    loaded: tuple[RunningNode, list[pydicom.Dataset]],
) -> None:
    node, datasets = loaded
    client = DICOMwebClient(node.dicomweb)
    for ds in datasets:
        back = client.retrieve_instance(
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            media_types=(("application/dicom", "1.2.840.10008.1.2.1"),),
        )
        assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert np.array_equal(back.pixel_array, ds.pixel_array), ds.SOPInstanceUID


def test_frames_match_the_decoded_pixels(
    loaded: tuple[RunningNode, list[pydicom.Dataset]],
) -> None:
    node, datasets = loaded
    client = DICOMwebClient(node.dicomweb)
    us = next(d for d in datasets if int(d.get("NumberOfFrames") or 1) > 2)  # a multi-frame MR
    frames = client.retrieve_instance_frames(
        us.StudyInstanceUID,
        us.SeriesInstanceUID,
        us.SOPInstanceUID,
        frame_numbers=[1, 3],
        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),),
    )
    expected = us.pixel_array
    for got, index in zip(frames, (0, 2), strict=True):
        assert np.frombuffer(got, expected.dtype).reshape(expected[index].shape).tolist() == (
            expected[index].tolist()
        )


def test_rendered_and_thumbnail_are_images_of_the_right_size(
    loaded: tuple[RunningNode, list[pydicom.Dataset]],
) -> None:
    node, datasets = loaded
    client = DICOMwebClient(node.dicomweb)
    chest = next(d for d in datasets if d.get("BodyPartExamined") == "CHEST")
    png = client.retrieve_instance_rendered(
        chest.StudyInstanceUID,
        chest.SeriesInstanceUID,
        chest.SOPInstanceUID,
        media_types=("image/png",),
        params={"viewport": "256,256"},
    )
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and max(image.size) == 256
    # A chest radiograph rendered for display is not flat: lungs dark, mediastinum bright.
    pixels = np.asarray(image)
    assert pixels.std() > 20
    import httpx

    thumb = httpx.get(
        f"{node.dicomweb}/studies/{chest.StudyInstanceUID}/thumbnail",
        headers={"Accept": "image/jpeg"},
        timeout=60,
    )
    assert thumb.status_code == 200
    assert Image.open(io.BytesIO(thumb.content)).format == "JPEG"


def test_pixel_bulkdata_uri_from_metadata_resolves(
    loaded: tuple[RunningNode, list[pydicom.Dataset]],
) -> None:
    node, datasets = loaded
    client = DICOMwebClient(node.dicomweb)
    mr = next(d for d in datasets if d.get("Modality") == "MR" and d.Rows == 1024)
    meta = client.retrieve_instance_metadata(
        mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID
    )
    uri = meta["7FE00010"]["BulkDataURI"]
    data = client.retrieve_bulkdata(uri, media_types=(("application/octet-stream", "*"),))[0]
    assert len(data) > 0


def test_unproducible_media_types_are_406(
    loaded: tuple[RunningNode, list[pydicom.Dataset]],
) -> None:
    import httpx

    node, datasets = loaded
    ds = datasets[0]
    base = (
        f"{node.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    for path, accept in [
        ("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'),
        ("/rendered", "image/gif"),
        ("/metadata", "application/dicom+xml"),
    ]:
        r = httpx.get(base + path, headers={"Accept": accept}, timeout=60)
        assert r.status_code == 406, (path, r.status_code)
        assert r.json()["error"]


def test_qido_finds_what_was_stored(loaded: tuple[RunningNode, list[pydicom.Dataset]]) -> None:
    node, datasets = loaded
    client = DICOMwebClient(node.dicomweb)
    studies = client.search_for_studies(search_filters={"ModalitiesInStudy": "US"})
    us = next(d for d in datasets if d.Modality == "US")
    assert [s["0020000D"]["Value"][0] for s in studies] == [us.StudyInstanceUID]
