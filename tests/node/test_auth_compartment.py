"""A patient token reads only its own FHIR compartment; another patient's records are 404."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from node.auth.policy import PatientBinding
from node.fhir.orders import order_id
from node.settings import NodeSettings
from tests.node.authhelpers import account_token
from tests.node.factories import make_ct
from tests.node.fhir_helpers import FhirNode, serve_node

FHIR = {"Content-Type": "application/fhir+json"}


@dataclass
class Chart:
    """One patient's records on the node."""

    patient_key: int
    study_uid: str
    order_id: str
    report_id: str
    observation_id: int


@dataclass
class World:
    node: FhirNode
    alice: Chart
    bob: Chart
    settings: NodeSettings

    def as_patient(self, mrn: str, issuer: str = "HOSP") -> dict[str, str]:
        binding = PatientBinding(mrn, issuer)
        issued = account_token(self.settings, f"p-{mrn}", "patient", 300, patient=binding)
        return {"Authorization": f"Bearer {issued.access_token}"}

    def as_staff(self, role: str) -> dict[str, str]:
        issued = account_token(self.settings, role, role, 300)
        return {"Authorization": f"Bearer {issued.access_token}"}


def _chart(node: FhirNode, mrn: str, seed: int) -> Chart:
    key = node.add_patient(mrn=mrn, issuer="HOSP", name=f"Test^{mrn}", sex="F")
    ds = make_ct(patient_id=mrn, seed=seed)
    node.stow([ds])
    accession = f"ACC-{seed}"
    node.add_order(
        accession_number=accession,
        patient_mrn=mrn,
        patient_issuer="HOSP",
        status="completed",
        modality="CT",
        study_uid=ds.StudyInstanceUID,
        matched_study_uid=ds.StudyInstanceUID,
    )
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
        "subject": {"reference": f"Patient/{key}"},
        "basedOn": [{"reference": f"ServiceRequest/{order_id(accession)}"}],
        "imagingStudy": [{"reference": f"ImagingStudy/{ds.StudyInstanceUID}"}],
        "conclusion": "No acute finding.",
    }
    r = node.request("POST", "DiagnosticReport", content=json.dumps(report), headers=FHIR)
    assert r.status_code == 201, r.text
    observation = node.add_observation(
        study_uid=ds.StudyInstanceUID, patient_mrn=mrn, code="nodule", code_system="urn:test"
    )
    return Chart(key, ds.StudyInstanceUID, order_id(accession), r.json()["id"], observation)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with serve_node(tmp_path_factory.mktemp("compartment") / "node", auth_enabled=True) as node:
        settings = node.archive.settings
        admin = account_token(settings, "root", "admin", 600)
        node.headers = {"Authorization": f"Bearer {admin.access_token}"}
        alice = _chart(node, "MRN-ALICE", 1)
        bob = _chart(node, "MRN-BOB", 2)
        node.headers = {}
        yield World(node, alice, bob, settings)


def _ids(node: FhirNode, path: str, headers: dict[str, str]) -> list[str]:
    bundle = node.search(path, headers=headers)
    assert bundle["total"] == len(bundle.get("entry", []))
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def test_a_patient_searches_only_their_own_records(world: World) -> None:
    alice, bob, node = world.alice, world.bob, world.node
    me = world.as_patient("MRN-ALICE")
    assert _ids(node, "Patient", me) == [str(alice.patient_key)]
    assert _ids(node, "ImagingStudy", me) == [alice.study_uid]
    assert _ids(node, "ServiceRequest", me) == [alice.order_id]
    assert _ids(node, "DiagnosticReport", me) == [alice.report_id]
    assert _ids(node, "Observation", me) == [str(alice.observation_id)]
    # Asking for the other patient explicitly finds nothing rather than widening the search.
    assert _ids(node, f"ImagingStudy?patient=Patient/{bob.patient_key}", me) == []
    assert _ids(node, f"Patient?_id={bob.patient_key}", me) == []
    assert _ids(node, "Patient?identifier=MRN-BOB", me) == []


def test_staff_still_see_every_patient(world: World) -> None:
    clinician = world.as_staff("clinician")
    assert len(_ids(world.node, "Patient", clinician)) == 2
    assert len(_ids(world.node, "DiagnosticReport", clinician)) == 2


def test_reading_another_patients_record_looks_like_it_does_not_exist(world: World) -> None:
    alice, bob, node = world.alice, world.bob, world.node
    me = world.as_patient("MRN-ALICE")
    mine_and_theirs = [
        (f"Patient/{alice.patient_key}", f"Patient/{bob.patient_key}"),
        (f"ImagingStudy/{alice.study_uid}", f"ImagingStudy/{bob.study_uid}"),
        (f"ServiceRequest/{alice.order_id}", f"ServiceRequest/{bob.order_id}"),
        (f"DiagnosticReport/{alice.report_id}", f"DiagnosticReport/{bob.report_id}"),
        (
            f"DiagnosticReport/{alice.report_id}/_history",
            f"DiagnosticReport/{bob.report_id}/_history",
        ),
        (
            f"DiagnosticReport/{alice.report_id}/_history/1",
            f"DiagnosticReport/{bob.report_id}/_history/1",
        ),
        (f"Observation/{alice.observation_id}", f"Observation/{bob.observation_id}"),
    ]
    for mine, theirs in mine_and_theirs:
        assert node.get(mine, headers=me).status_code == 200, mine
        refused = node.get(theirs, headers=me)
        assert refused.status_code == 404, (theirs, refused.text)
        assert refused.json()["issue"][0]["code"] == "not-found"
        assert "MRN-BOB" not in refused.text and "Test" not in refused.text
    # The same answer as an id nobody has: the refusal tells nothing about existence.
    missing = node.get("Patient/999999", headers=me)
    other = node.get(f"Patient/{bob.patient_key}", headers=me)
    assert missing.status_code == other.status_code == 404
    assert missing.json()["issue"][0]["diagnostics"].replace("999999", "X") == other.json()[
        "issue"
    ][0]["diagnostics"].replace(str(bob.patient_key), "X")


def test_a_patient_the_node_does_not_know_sees_nothing(world: World) -> None:
    stranger = world.as_patient("MRN-NOBODY")
    for resource in ("Patient", "ImagingStudy", "ServiceRequest", "DiagnosticReport"):
        assert _ids(world.node, resource, stranger) == []
    # Same MRN under another issuer is another patient.
    assert _ids(world.node, "Patient", world.as_patient("MRN-ALICE", "OTHER-HOSP")) == []


def test_patients_may_not_write_or_use_dicomweb(world: World) -> None:
    me = world.as_patient("MRN-ALICE")
    r = httpx.get(f"{world.node.url}/dicom-web/studies", headers=me, timeout=30)
    assert r.status_code == 403
    assert "insufficient_scope" in r.headers["www-authenticate"]
    put = world.node.request(
        "PUT", f"DiagnosticReport/{world.alice.report_id}", content="{}", headers={**FHIR, **me}
    )
    assert put.status_code == 403
    assert put.json()["issue"][0]["code"] == "forbidden"
