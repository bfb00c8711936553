"""C-FIND (Patient Root, Study Root) and C-MOVE with DCMTK's findscu/movescu against a real node:
the results are those QIDO-RS gives for the same query; moves reach known AEs only."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.node.dimse_helpers import (
    ARCHIVE_AE,
    NODE_AE,
    WORKSTATION_AE,
    DimseNode,
    dataset_bytes,
    dcmtk,
    dimse_node,
    findscu,
    storescu,
)
from tests.node.factories import make_ct, real_sample_files, to_bytes

__all__ = ["dimse_node"]


@pytest.fixture
def studies(dimse_node: DimseNode, tmp_path: Path) -> list[Dataset]:
    """Three studies of two patients (one with two series) stored through storescu."""
    alpha1 = make_ct(patient_id="PID-A", patient_name="Alpha^Ann", study_date="20240110", seed=1)
    alpha1b = make_ct(
        study_uid=alpha1.StudyInstanceUID, patient_id="PID-A", patient_name="Alpha^Ann", seed=2
    )
    alpha1b.StudyDate = alpha1.StudyDate
    alpha1b.SeriesNumber = 2
    alpha2 = make_ct(patient_id="PID-A", patient_name="Alpha^Ann", study_date="20240320", seed=3)
    beta = make_ct(patient_id="PID-B", patient_name="Beta^Bob", study_date="20240215", seed=4)
    for ds, accession in ((alpha1, "ACC-A1"), (alpha1b, "ACC-A1"), (alpha2, "A2"), (beta, "B1")):
        ds.AccessionNumber = accession
    files = []
    for i, ds in enumerate((alpha1, alpha1b, alpha2, beta)):
        path = tmp_path / f"in{i}.dcm"
        path.write_bytes(to_bytes(ds))
        files.append(path)
    out = storescu(dimse_node, ARCHIVE_AE, files)
    assert "Error" not in out, out
    return [alpha1, alpha1b, alpha2, beta]


def _qido(node: DimseNode, path: str, **params: str) -> list[dict[str, object]]:
    r = httpx.get(f"{node.dicomweb}/{path}", params=params, timeout=30)
    assert r.status_code in (200, 204), r.text
    return [] if r.status_code == 204 else list(r.json())


def _uids(results: list[dict[str, object]], tag: str) -> set[str]:
    return {r[tag]["Value"][0] for r in results}  # type: ignore[index]


def test_study_root_find_matches_qido(
    dimse_node: DimseNode, studies: list[Dataset], tmp_path: Path
) -> None:
    keys = [
        "QueryRetrieveLevel=STUDY",
        "PatientName=alpha*",
        "StudyDate=20240101-20240228",
        "StudyInstanceUID",
        "AccessionNumber",
        "PatientID",
        "NumberOfStudyRelatedInstances",
        "RetrieveAETitle",
    ]
    found, out = findscu(dimse_node, "-S", keys, tmp_path / "find")
    qido = _qido(dimse_node, "studies", PatientName="alpha*", StudyDate="20240101-20240228")
    assert {str(ds.StudyInstanceUID) for ds in found} == _uids(qido, "0020000D"), out
    assert len(found) == 1
    (study,) = found
    assert study.AccessionNumber == "ACC-A1" and study.PatientID == "PID-A"
    assert int(study.NumberOfStudyRelatedInstances) == 2
    assert study.RetrieveAETitle == NODE_AE
    assert study.QueryRetrieveLevel == "STUDY"
    # Only the keys asked for come back (PS3.4 C.2.2.1): no StudyDate, no PatientName? Both
    # were matching keys, so they are returned too.
    assert "StudyDescription" not in study


def test_series_and_image_levels_match_qido(
    dimse_node: DimseNode, studies: list[Dataset], tmp_path: Path
) -> None:
    study_uid = str(studies[0].StudyInstanceUID)
    series, out = findscu(
        dimse_node,
        "-S",
        ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study_uid}", "SeriesInstanceUID",
         "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"],
        tmp_path / "series",
    )  # fmt: skip
    qido = _qido(dimse_node, f"studies/{study_uid}/series")
    assert {str(ds.SeriesInstanceUID) for ds in series} == _uids(qido, "0020000E"), out
    assert sorted(int(ds.SeriesNumber) for ds in series) == [1, 2]
    assert all(ds.Modality == "CT" for ds in series)

    images, out = findscu(
        dimse_node,
        "-P",
        ["QueryRetrieveLevel=IMAGE", "PatientID=PID-A", f"StudyInstanceUID={study_uid}",
         f"SeriesInstanceUID={studies[1].SeriesInstanceUID}", "SOPInstanceUID", "Rows"],
        tmp_path / "images",
    )  # fmt: skip
    assert [str(ds.SOPInstanceUID) for ds in images] == [str(studies[1].SOPInstanceUID)], out
    assert int(images[0].Rows) == 64


def test_patient_root_patient_level(
    dimse_node: DimseNode, studies: list[Dataset], tmp_path: Path
) -> None:
    found, out = findscu(
        dimse_node,
        "-P",
        ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName",
         "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"],
        tmp_path / "patients",
    )  # fmt: skip
    by_id = {str(ds.PatientID): ds for ds in found}
    assert set(by_id) == {"PID-A", "PID-B"}, out
    assert int(by_id["PID-A"].NumberOfPatientRelatedStudies) == 2
    assert int(by_id["PID-A"].NumberOfPatientRelatedInstances) == 3
    assert str(by_id["PID-B"].PatientName) == "Beta^Bob"


def test_bad_identifiers_get_a_failure_status(
    dimse_node: DimseNode, studies: list[Dataset], tmp_path: Path
) -> None:
    # PATIENT is not a level of the Study Root model (PS3.4 C.6.2).
    found, out = findscu(
        dimse_node, "-S", ["QueryRetrieveLevel=PATIENT", "PatientID"], tmp_path / "bad"
    )
    assert not found
    assert "Error: DataSetDoesNotMatchSOPClass" in out, out  # A900
    found, out = findscu(
        dimse_node, "-S", ["QueryRetrieveLevel=STUDY", "StudyDate=2024-xx"], tmp_path / "bad2"
    )
    assert not found
    assert "Error: DataSetDoesNotMatchSOPClass" in out, out  # A900


def test_move_to_known_ae_delivers_and_unknown_destination_fails(
    dimse_node: DimseNode, studies: list[Dataset], tmp_path: Path
) -> None:
    received = tmp_path / "received"
    received.mkdir()
    # The workstation's storage SCP, on the port the node has configured for WS1.
    scp = subprocess.Popen(
        ["storescp", "+xa", "-aet", WORKSTATION_AE, "-od", str(received),
         str(dimse_node.workstation_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        study_uid = str(studies[0].StudyInstanceUID)
        ok = dcmtk(
            "movescu", "-S", "-aet", WORKSTATION_AE, "-aec", NODE_AE, "-aem", WORKSTATION_AE,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(dimse_node.dimse_port),
        )  # fmt: skip
        out = ok.stdout + ok.stderr
        assert ok.returncode == 0, out
        got = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in received.iterdir()}
        assert set(got) == {str(studies[0].SOPInstanceUID), str(studies[1].SOPInstanceUID)}
        sent = got[str(studies[0].SOPInstanceUID)].read_bytes()
        assert dataset_bytes(sent) == dataset_bytes(to_bytes(studies[0]))

        unknown = dcmtk(
            "movescu", "-S", "-aet", WORKSTATION_AE, "-aec", NODE_AE, "-aem", "ELSEWHERE",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(dimse_node.dimse_port),
        )  # fmt: skip
        assert "MoveDestinationUnknown" in unknown.stdout + unknown.stderr
        # A STUDY move without a Study Instance UID names nothing: refused, nothing sent.
        vague = dcmtk(
            "movescu", "-S", "-aet", WORKSTATION_AE, "-aec", NODE_AE, "-aem", WORKSTATION_AE,
            "-k", "QueryRetrieveLevel=STUDY", "127.0.0.1", str(dimse_node.dimse_port),
        )  # fmt: skip
        assert "Failed: UnableToProcess" in vague.stdout + vague.stderr, vague.stdout
        assert len(list(received.iterdir())) == 2
    finally:
        scp.terminate()
        scp.wait(timeout=10)


def test_get_reports_sub_operation_counts(dimse_node: DimseNode, studies: list[Dataset]) -> None:
    """pynetdicom as the C-GET SCU: pending responses count down, the final one adds up."""
    arrived: list[bytes] = []

    def on_store(event: object) -> int:
        arrived.append(event.encoded_dataset(include_meta=False))  # type: ignore[attr-defined]
        return 0x0000

    from pynetdicom import build_role, evt

    ae = AE(ae_title=WORKSTATION_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1",
        dimse_node.dimse_port,
        ae_title=NODE_AE,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "PID-A"
    try:
        responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
        bad = Dataset()
        bad.QueryRetrieveLevel = "STUDY"  # no StudyInstanceUID: nothing says what to send
        refused = list(assoc.send_c_get(bad, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    statuses = [r[0] for r in responses if r[0] is not None]
    final = statuses[-1]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 3
    assert final.NumberOfFailedSuboperations == 0
    assert [s.NumberOfRemainingSuboperations for s in statuses[:-1]] == [2, 1, 0]
    assert sorted(arrived) == sorted(dataset_bytes(to_bytes(ds)) for ds in studies[:3])
    assert refused[-1][0].Status == 0xA900


def test_move_transcodes_for_a_destination_that_refuses_the_stored_syntax(
    dimse_node: DimseNode, tmp_path: Path
) -> None:
    """A stock storescp accepts only native syntaxes: a JPEG 2000 lossless instance reaches it
    decoded, with the same pixels."""
    source = real_sample_files()
    mr = next(p for p in source if p.name == "mr-j2k-lossless.dcm")
    assert "Error" not in storescu(dimse_node, ARCHIVE_AE, [mr], "-xv")
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(
        ["storescp", "-aet", WORKSTATION_AE, "-od", str(received),
         str(dimse_node.workstation_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        original = pydicom.dcmread(mr)
        moved = dcmtk(
            "movescu", "-S", "-aet", WORKSTATION_AE, "-aec", NODE_AE, "-aem", WORKSTATION_AE,
            "-k", "QueryRetrieveLevel=SERIES",
            "-k", f"StudyInstanceUID={original.StudyInstanceUID}",
            "-k", f"SeriesInstanceUID={original.SeriesInstanceUID}",
            "127.0.0.1", str(dimse_node.dimse_port),
        )  # fmt: skip
        assert moved.returncode == 0, moved.stdout + moved.stderr
        (path,) = list(received.iterdir())
        got = pydicom.dcmread(path)
        assert not got.file_meta.TransferSyntaxUID.is_compressed
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert (got.pixel_array == original.pixel_array).all()
    finally:
        scp.terminate()
        scp.wait(timeout=10)


def test_get_counts_a_sub_operation_it_cannot_send_as_failed(dimse_node: DimseNode) -> None:
    """The requestor accepts CR only as JPEG baseline: the stored JPEG 2000 chest film can
    neither go as stored nor be transcoded to it, so the one sub-operation fails."""
    from pynetdicom import build_role

    chest = next(p for p in real_sample_files() if p.name == "chest-cr-philips-j2k.dcm")
    assert "Error" not in storescu(dimse_node, ARCHIVE_AE, [chest], "-xw")
    cr = pydicom.dcmread(chest, stop_before_pixels=True)
    ae = AE(ae_title=WORKSTATION_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(cr.SOPClassUID, "1.2.840.10008.1.2.4.50")
    assoc = ae.associate(
        "127.0.0.1",
        dimse_node.dimse_port,
        ae_title=NODE_AE,
        ext_neg=[build_role(cr.SOPClassUID, scp_role=True)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = cr.StudyInstanceUID
    try:
        responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final = [r[0] for r in responses if r[0] is not None][-1]
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == 0
    assert final.Status == 0xA702  # PS3.4 C.4.3.1.3.1: unable to perform sub-operations
