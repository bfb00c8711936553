"""The whole imaging loop over real sockets, as a hospital runs it (issue #5).

OCS → ADT + order by MLLP → the modality's `findscu -W` sees the worklist entry → `storescu`
sends the acquisition → the study is matched, the order completed, and the OCS receives the
match message → the radiologist's report goes final → the OCS receives ORU^R01 → the study is
the same through QIDO-RS, C-FIND and FHIR ImagingStudy. A screen capture joins the study
through the gateway. Then the refusals: malformed HL7, an unknown AE, an object without an
accession number, a capture without an order — each gets its protocol's error and nothing is
stored.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.node.capture_helpers import png
from tests.node.conftest import RunningNode, free_port, start_node
from tests.node.dimse_helpers import NODE_AE, dcmtk
from tests.node.factories import make_ct, to_bytes
from tests.node.fhir_helpers import validate
from tests.node.hl7_support import FakeOCS, ack_code, adt, err, orm, send, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODALITY = "CT_SCANNER1"
WORKSTATION = "READING1"
MRN = "MRN5150"
ACCESSION = "ACC5150"
FHIR = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}


class Hospital:
    """One node with every interface on, a fake OCS listening for its messages."""

    def __init__(self, tmp_path: Path) -> None:
        self.hl7_port, self.dimse_port, ocs_port = free_port(), free_port(), free_port()
        self.ocs = FakeOCS(ocs_port).start()
        env = {"NODE_OCS_HOST": "127.0.0.1", "NODE_OCS_PORT": str(ocs_port)}
        for title, role in ((MODALITY, "modality"), (WORKSTATION, "workstation")):
            env[f"NODE_REMOTE_AES__{title}__HOST"] = "127.0.0.1"
            env[f"NODE_REMOTE_AES__{title}__PORT"] = str(free_port())
            env[f"NODE_REMOTE_AES__{title}__ROLE"] = role
        self.work = tmp_path
        self.node: RunningNode = start_node(
            tmp_path / "node",
            env=env,
            args=["--hl7-port", str(self.hl7_port), "--dimse-port", str(self.dimse_port)],
        )

    def close(self) -> None:
        self.node.stop()
        self.ocs.stop()

    # -- clients ---------------------------------------------------------------------------

    def http(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**getattr(self.node, "headers", {}), **kwargs.pop("headers", {})}
        return httpx.request(
            method, f"{self.node.url}{path}", headers=headers, timeout=60, **kwargs
        )

    def fhir(self, method: str, path: str, body: object | None = None) -> dict[str, Any]:
        content = json.dumps(body) if body is not None else None
        response = self.http(method, f"/fhir/{path}", content=content, headers=FHIR)
        assert response.status_code in (200, 201), response.text
        resource: dict[str, Any] = response.json()
        validate(resource)
        return resource

    def findscu(self, model: str, keys: list[str], calling: str) -> tuple[list[Dataset], str]:
        out = self.work / f"find-{model.strip('-')}-{len(list(self.work.glob('find-*')))}"
        out.mkdir()
        args = [model, "-X", "-od", str(out), "-aet", calling, "-aec", NODE_AE]
        for key in keys:
            args += ["-k", key]
        result = dcmtk("findscu", *args, "127.0.0.1", str(self.dimse_port))
        found = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
        return found, result.stdout + result.stderr

    def storescu(self, calling: str, files: list[Path]) -> str:
        result = dcmtk(
            "storescu", "-aet", calling, "-aec", NODE_AE, "127.0.0.1", str(self.dimse_port),
            *(str(f) for f in files),
        )  # fmt: skip
        return result.stdout + result.stderr

    def studies(self, **query: str) -> list[dict[str, Any]]:
        response = self.http("GET", "/dicom-web/studies", params=query)
        assert response.status_code in (200, 204), response.text
        return response.json() if response.status_code == 200 else []

    def ocs_messages(self, kind: str) -> list[hl7.Message]:
        parsed = [hl7.parse(raw) for raw in self.ocs.received]
        return [m for m in parsed if str(m.segment("MSH")[9]).startswith(kind)]


@pytest.fixture
def hospital(tmp_path: Path) -> Iterator[Hospital]:
    running = Hospital(tmp_path)
    yield running
    running.close()


def _acquire(worklist_item: Dataset, out: Path, count: int) -> list[Path]:
    """What a CT does with a worklist entry: copy patient and order attributes into images."""
    files = []
    series_uid = None
    for n in range(count):
        ds = make_ct(patient_id=str(worklist_item.PatientID))
        ds.PatientName = worklist_item.PatientName
        ds.PatientBirthDate = worklist_item.PatientBirthDate
        ds.PatientSex = worklist_item.PatientSex
        ds.AccessionNumber = worklist_item.AccessionNumber
        ds.StudyInstanceUID = worklist_item.StudyInstanceUID
        series_uid = series_uid or ds.SeriesInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = n + 1
        path = out / f"ct{n}.dcm"
        path.write_bytes(to_bytes(ds))
        files.append(path)
    return files


def test_order_to_report_loop(hospital: Hospital, tmp_path: Path) -> None:
    # 1. The OCS registers the patient and places the order.
    assert ack_code(send(hospital.hl7_port, adt("A04", mrn=MRN))) == "AA"
    order = orm(ACCESSION, control="ORM5150", mrn=MRN, modality="CT", when="202611240930")
    assert ack_code(send(hospital.hl7_port, order)) == "AA"

    # 2. The modality queries its worklist and sees the order with the node's study UID.
    items, log = hospital.findscu(
        "-W",
        ["ScheduledProcedureStepSequence[0].Modality=CT", "AccessionNumber", "PatientName",
         "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
         "RequestedProcedureID"],
        MODALITY,
    )  # fmt: skip
    assert [str(i.AccessionNumber) for i in items] == [ACCESSION], log
    item = items[0]
    assert str(item.PatientID) == MRN and str(item.PatientName) == "Kim^Minsu^J"
    study_uid = str(item.StudyInstanceUID)
    service_request = hospital.fhir("GET", f"ServiceRequest/{ACCESSION}")
    assert service_request["status"] == "active"

    # 3. It acquires three images and sends them in one association.
    acquired = tmp_path / "acquired"
    acquired.mkdir()
    out = hospital.storescu(MODALITY, _acquire(item, acquired, 3))
    assert "Received Store Response (Success)" in out and "Failed" not in out, out

    # 4. Matched: the order is completed and the OCS hears about it.
    wait_for(lambda: hospital.ocs_messages("ORM"), 60, "the match message at the OCS")
    match = hospital.ocs_messages("ORM")[0]
    assert (str(match.segment("ORC")[1]), str(match.segment("ORC")[5])) == ("SC", "CM")
    assert str(match.segment("OBR")[18]) == ACCESSION
    assert hospital.fhir("GET", f"ServiceRequest/{ACCESSION}")["status"] == "completed"
    worklist_after, _ = hospital.findscu("-W", [f"AccessionNumber={ACCESSION}"], MODALITY)
    assert worklist_after == []  # done: off the worklist

    # 5. A screen capture for the same order joins the study through the gateway.
    capture = hospital.http(
        "POST",
        "/gateway/captures",
        params={"accession": ACCESSION},
        content=png(np.full((48, 64), 120, np.uint8)),
        headers={"Content-Type": "image/png"},
    )
    assert capture.status_code == 201, capture.text
    assert capture.json()["study_uid"] == study_uid

    # 6. The same study through QIDO-RS, C-FIND and FHIR ImagingStudy.
    (qido,) = hospital.studies(AccessionNumber=ACCESSION)
    assert qido["0020000D"]["Value"] == [study_uid]
    assert qido["00201208"]["Value"] == [4]  # three CT images and the capture
    found, log = hospital.findscu(
        "-S",
        ["QueryRetrieveLevel=STUDY", f"AccessionNumber={ACCESSION}", "StudyInstanceUID",
         "NumberOfStudyRelatedInstances", "PatientID"],
        WORKSTATION,
    )  # fmt: skip
    assert [str(f.StudyInstanceUID) for f in found] == [study_uid], log
    assert int(found[0].NumberOfStudyRelatedInstances) == 4
    bundle = hospital.fhir("GET", f"ImagingStudy?accession={ACCESSION}")
    (entry,) = bundle["entry"]
    imaging_study = entry["resource"]
    assert imaging_study["numberOfInstances"] == 4
    assert {"reference": f"ServiceRequest/{ACCESSION}"} in [
        {"reference": b["reference"]} for b in imaging_study["basedOn"]
    ]

    # 7. The radiologist reports: preliminary, then final → ORU^R01 to the OCS.
    report = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
        "basedOn": [{"reference": f"ServiceRequest/{ACCESSION}"}],
        "imagingStudy": [{"reference": f"ImagingStudy/{imaging_study['id']}"}],
        "conclusion": "No acute cardiopulmonary abnormality.",
        "presentedForm": [
            {
                "contentType": "text/plain",
                "data": base64.b64encode(b"Lungs clear. Heart size normal.").decode(),
            }
        ],
    }
    created = hospital.fhir("POST", "DiagnosticReport", report)
    assert not hospital.ocs_messages("ORU")  # preliminary reports stay in the department
    final = {**created, "status": "final"}
    hospital.fhir("PUT", f"DiagnosticReport/{created['id']}", final)
    wait_for(lambda: hospital.ocs_messages("ORU"), 60, "the ORU^R01 at the OCS")
    oru = hospital.ocs_messages("ORU")[0]
    assert str(oru.segment("OBR")[25]) == "F"
    assert str(oru.segment("PID")[3]).split("^")[0] == MRN
    assert "No acute cardiopulmonary abnormality." in str(oru)


def test_each_interface_refuses_bad_input_and_stores_nothing(
    hospital: Hospital, tmp_path: Path
) -> None:
    # Malformed HL7 (an order for 30 February): AE with the field named, nothing stored.
    bad = send(hospital.hl7_port, orm("ACC9001", control="BAD1", mrn=MRN, when="20260230"))
    assert ack_code(bad) == "AE" and err(bad)[1] == "102"
    assert hospital.fhir("GET", "ServiceRequest?accession=ACC9001").get("total") == 0

    # An AE the node does not know: the association is rejected, nothing stored.
    stranger = make_ct(patient_id=MRN)
    stranger.AccessionNumber = "ACC9002"
    path = tmp_path / "stranger.dcm"
    path.write_bytes(to_bytes(stranger))
    out = hospital.storescu("STRANGER", [path])
    assert "Association Rejected" in out, out

    # A modality's object without an accession number: refused (A900), nothing stored.
    no_accession = make_ct(patient_id=MRN)
    no_accession.AccessionNumber = ""
    path = tmp_path / "no-accession.dcm"
    path.write_bytes(to_bytes(no_accession))
    out = hospital.storescu(MODALITY, [path])
    assert "Error: DataSetDoesNotMatchSOPClass" in out, out  # DCMTK's name for 0xA900

    # A capture for an order that does not exist: 422, nothing stored.
    capture = hospital.http(
        "POST",
        "/gateway/captures",
        params={"accession": "ACC9003"},
        content=png(np.zeros((16, 16), np.uint8)),
        headers={"Content-Type": "image/png"},
    )
    assert capture.status_code == 422, capture.text
    assert "no order" in capture.json()["error"]

    for uid in (stranger.StudyInstanceUID, no_accession.StudyInstanceUID):
        assert hospital.studies(StudyInstanceUID=str(uid)) == []
    assert hospital.studies(AccessionNumber="ACC9003") == []
    assert hospital.studies() == []
