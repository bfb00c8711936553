"""STOW-RS then WADO-RS through dicomweb-client against a real node, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pydicom
from dicomweb_client.api import DICOMwebClient

from tests.node.conftest import RunningNode
from tests.node.factories import (
    make_ct,
    pixel_needles,
    pydicom_image_files,
    pydicom_truncated_files,
    real_sample_files,
    to_bytes,
)

ORIGINAL = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _generations(paths: list[Path]) -> list[list[tuple[Path, bytes]]]:
    """Split files so that SOP Instance UIDs are unique within each group (pydicom ships the
    same image in several transfer syntaxes under one UID)."""
    groups: list[list[tuple[Path, bytes]]] = []
    seen: list[set[str]] = []
    for path in paths:
        data = path.read_bytes()
        uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        for group, uids in zip(groups, seen, strict=True):
            if uid not in uids:
                group.append((path, data))
                uids.add(uid)
                break
        else:
            groups.append([(path, data)])
            seen.append({uid})
    return groups


def _raw_stow(root: str, parts: list[bytes], study: str | None = None) -> httpx.Response:
    boundary = "pacsmesh-test-boundary-7d1e"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    body += f"--{boundary}--\r\n".encode()
    url = f"{root}/studies" + (f"/{study}" if study else "")
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    return httpx.post(url, content=body, headers=headers, timeout=120)


def _fetch_original(root: str, ds: pydicom.Dataset) -> bytes:
    client = DICOMwebClient(root)
    parts = list(client.iter_study(ds.StudyInstanceUID, media_types=(("application/dicom", "*"),)))
    assert parts, "study retrieve returned nothing"
    url = (
        f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    r = httpx.get(url, headers={"Accept": ORIGINAL}, timeout=60)
    assert r.status_code == 200
    boundary = r.headers["content-type"].split("boundary=")[1]
    body = r.content
    head_end = body.index(b"\r\n\r\n") + 4
    tail = body.rindex(f"\r\n--{boundary}--".encode())
    return body[head_end:tail]


def test_every_real_and_pydicom_file_round_trips_byte_identical(
    node: RunningNode, assert_no_plaintext: list[tuple[Path, list[bytes]]]
) -> None:
    files = real_sample_files() + pydicom_image_files()
    client = DICOMwebClient(node.dicomweb)
    needles: list[bytes] = []
    for group in _generations(files):
        r = _raw_stow(node.dicomweb, [data for _, data in group])
        assert r.status_code == 200, r.json().get("00081198")
        stored = r.json()["00081199"]["Value"]
        assert len(stored) == len(group)
        for path, data in group:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            assert _fetch_original(node.dicomweb, ds) == data, f"{path.name} changed"
            # Raw JSON: some of pydicom's fixtures hold deliberately invalid values (an IS of
            # "1A") that no client can turn back into a dataset; the JSON must still match.
            meta = httpx.get(
                f"{node.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}/metadata",
                timeout=30,
            ).json()[0]
            expected = ds.to_json_dict(
                bulk_data_threshold=1024, bulk_data_element_handler=str, suppress_invalid_tags=True
            )
            for tag, element in expected.items():
                if tag.startswith("0002"):
                    continue
                assert _bulk_blind(meta.get(tag)) == _bulk_blind(element), (
                    f"{path.name}: metadata {tag} differs"
                )
            needles += pixel_needles(data)
        for _path, data in group:  # make room for the next generation's same-UID files
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            if _study_left(node, ds):
                client.delete_study(ds.StudyInstanceUID)
    assert_no_plaintext.append((node.data_dir, needles))


def _bulk_blind(value: object) -> object:
    """DICOM JSON with binary values reduced to a marker: whether a value goes inline or by
    BulkDataURI is a size threshold each writer sets (pydicom measures base64, the node raw
    bytes), and URIs are server-specific."""
    if isinstance(value, dict):
        if "BulkDataURI" in value or "InlineBinary" in value:
            return {"vr": value.get("vr"), "binary": "..."}
        return {k: _bulk_blind(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bulk_blind(v) for v in value]
    return value


def _study_left(node: RunningNode, ds: pydicom.Dataset) -> bool:
    r = httpx.get(f"{node.dicomweb}/studies/{ds.StudyInstanceUID}/metadata", timeout=30)
    return r.status_code == 200


def test_stow_reports_each_bad_part_and_stores_only_good_ones(node: RunningNode) -> None:
    good = make_ct(seed=1)
    other_study = make_ct(seed=2)
    truncated = to_bytes(make_ct(seed=3, study_uid=good.StudyInstanceUID))[:-100]
    conflicting = make_ct(seed=4, study_uid=good.StudyInstanceUID)
    r = _raw_stow(node.dicomweb, [to_bytes(conflicting)])
    assert r.status_code == 200
    changed = make_ct(seed=5, study_uid=conflicting.StudyInstanceUID)
    changed.SOPInstanceUID = changed.file_meta.MediaStorageSOPInstanceUID = (
        conflicting.SOPInstanceUID
    )
    changed.SeriesInstanceUID = conflicting.SeriesInstanceUID

    r = _raw_stow(
        node.dicomweb,
        [
            to_bytes(good),
            b"this is not a DICOM file at all",
            truncated,
            to_bytes(other_study),
            to_bytes(changed),
        ],
        study=good.StudyInstanceUID,
    )
    assert r.status_code == 202, r.text
    body = r.json()
    stored = [i["00081155"]["Value"][0] for i in body["00081199"]["Value"]]
    assert stored == [good.SOPInstanceUID]
    reasons = {i["00081197"]["Value"][0] for i in body["00081198"]["Value"]}
    assert reasons == {0xC000, 0xC001, 0xA900, 0x0111}, reasons
    comments = " ".join(i["00000902"]["Value"][0] for i in body["00081198"]["Value"])
    assert "truncated" in comments and "different content" in comments
    # The refused instances are not there; the conflicting original is untouched.
    assert _status(node, other_study) == 404
    original = _fetch_original(node.dicomweb, conflicting)
    assert original == to_bytes(conflicting)


def _status(node: RunningNode, ds: pydicom.Dataset) -> int:
    url = (
        f"{node.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/metadata"
    )
    return httpx.get(url, timeout=30).status_code


def test_identical_duplicate_is_accepted_once(node: RunningNode) -> None:
    ds = make_ct(seed=7)
    client = DICOMwebClient(node.dicomweb)
    client.store_instances([ds])
    meta = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert meta["00100020"]["Value"] == ["PM-TEST-1"]
    assert meta["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    # dicomweb-client sends the File Meta without a preamble: what comes back is Part 10.
    back = _fetch_original(node.dicomweb, ds)
    assert back[128:132] == b"DICM"
    assert pydicom.dcmread(io.BytesIO(back)).PixelData == ds.PixelData
    client.store_instances([ds])  # the same bytes again: accepted, not stored twice
    assert len(client.retrieve_study_metadata(ds.StudyInstanceUID)) == 1


def test_all_parts_failing_gives_409_and_wrong_media_type_415(node: RunningNode) -> None:
    r = _raw_stow(node.dicomweb, [b"garbage", b"DICM"])
    assert r.status_code == 409
    assert len(r.json()["00081198"]["Value"]) == 2
    r = httpx.post(
        f"{node.dicomweb}/studies",
        content=b"{}",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 415
    assert "multipart/related" in r.json()["error"]
    r = httpx.post(
        f"{node.dicomweb}/studies",
        content=b"--x\r\nContent-Type: application/dicom\r\n\r\nabc",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
        timeout=30,
    )
    assert r.status_code == 400
    assert "closing boundary" in r.json()["error"]


def test_delete_study_shreds_its_key(node: RunningNode) -> None:
    a = make_ct(seed=11)
    b = make_ct(seed=12, study_uid=a.StudyInstanceUID, series_uid=a.SeriesInstanceUID)
    b.InstanceNumber = 2
    assert _raw_stow(node.dicomweb, [to_bytes(a), to_bytes(b)]).status_code == 200
    client = DICOMwebClient(node.dicomweb)
    client.delete_instance(a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID)
    assert _status(node, a) == 404 and _status(node, b) == 200
    client.delete_study(a.StudyInstanceUID)
    assert _status(node, b) == 404
    node.stop()
    from sqlalchemy import create_engine, text

    url = node.database_url or f"sqlite:///{node.data_dir / 'index.sqlite'}"
    engine = create_engine(url)
    with engine.connect() as conn:
        keys = conn.execute(
            text("SELECT count(*) FROM study_key WHERE study_uid = :s"),
            {"s": a.StudyInstanceUID},
        ).scalar_one()
    engine.dispose()
    assert keys == 0
    assert not any((node.data_dir / "blobs").rglob("*")) or all(
        p.is_dir() for p in (node.data_dir / "blobs").rglob("*")
    )


def test_unknown_resources_are_404(node: RunningNode) -> None:
    for path in ("/studies/1.2.3", "/studies/1.2.3/metadata", "/studies/1.2.3/series/4.5"):
        r = httpx.get(node.dicomweb + path, timeout=30)
        assert r.status_code == 404, path
        assert "not found" in r.json()["error"]


def test_real_truncated_files_are_refused(node: RunningNode) -> None:
    files = pydicom_truncated_files()
    assert files, "pydicom ships truncated fixtures"
    r = _raw_stow(node.dicomweb, [p.read_bytes() for p in files])
    assert r.status_code == 409
    reasons = [i["00081197"]["Value"][0] for i in r.json()["00081198"]["Value"]]
    assert reasons == [0xC001] * len(files)


def test_an_instance_of_another_patient_fails_and_the_rest_are_stored(node: RunningNode) -> None:
    first = make_ct(seed=21, patient_id="MRN-A")
    assert _raw_stow(node.dicomweb, [to_bytes(first)]).status_code == 200
    intruder = make_ct(seed=22, study_uid=first.StudyInstanceUID, patient_id="MRN-B")
    same_patient = make_ct(seed=23, study_uid=first.StudyInstanceUID, patient_id="MRN-A")
    other_study = make_ct(seed=24, patient_id="MRN-B")

    r = _raw_stow(
        node.dicomweb, [to_bytes(intruder), to_bytes(same_patient), to_bytes(other_study)]
    )

    assert r.status_code == 202, r.text
    body = r.json()
    stored = {i["00081155"]["Value"][0] for i in body["00081199"]["Value"]}
    assert stored == {same_patient.SOPInstanceUID, other_study.SOPInstanceUID}
    (failed,) = body["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [intruder.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [0xA902]
    assert failed["00000902"]["Value"] == ["the study is already filed under a different patient"]
    # The study holds only its own patient's instances; alone, the intruder gets 409.
    meta = DICOMwebClient(node.dicomweb).retrieve_study_metadata(first.StudyInstanceUID)
    assert sorted(m["00100020"]["Value"][0] for m in meta) == ["MRN-A", "MRN-A"]
    assert _status(node, intruder) == 404
    assert _raw_stow(node.dicomweb, [to_bytes(intruder)]).status_code == 409
