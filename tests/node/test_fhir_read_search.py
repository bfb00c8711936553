"""FHIR read and search over a real node: Patient, ServiceRequest, ImagingStudy, Observation,
Endpoint and the CapabilityStatement; every body validated with the R4B models."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from pydicom.uid import generate_uid

from node.fhir import imaging as fhir_imaging
from node.fhir import observations as fhir_observations
from node.fhir import orders as fhir_orders
from node.fhir import patients as fhir_patients
from node.fhir import reports as fhir_reports
from tests.node.factories import CT_IMAGE_STORAGE, make_ct
from tests.node.fhir_helpers import FhirNode, index_database, serve_node


@dataclass
class World:
    node: FhirNode
    jane: int
    john: int
    old_jane: int
    study_1: str  # Jane's CT+MR study, matched to order ACC-2
    study_2: str  # a study whose patient the order system never registered
    finding: int


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with (
        index_database(request.param) as url,
        serve_node(tmp_path_factory.mktemp("fhir-node"), url) as node,
    ):
        jane = node.add_patient(
            mrn="MRN-1", issuer="HOSP", name="Doe^Jane^Q", sex="F", birth_date="19800214"
        )
        john = node.add_patient(
            mrn="MRN-2", issuer="1.2.3.4", name="Smith^John", sex="M", birth_date="19751231"
        )
        old_jane = node.add_patient(
            mrn="MRN-OLD",
            issuer="HOSP",
            name="Doe^Jane",
            sex="F",
            birth_date="19800214",
            merged_into_mrn="MRN-1",
        )
        study_1, study_2 = str(generate_uid()), str(generate_uid())
        node.add_order(
            accession_number="ACC-1",
            placer_order_number="PL-1",
            filler_order_number="FI-1",
            patient_mrn="MRN-1",
            patient_issuer="HOSP",
            status="scheduled",
            priority="STAT",
            modality="CT",
            procedure_code="CTCHEST",
            procedure_code_system="LN",
            procedure_code_meaning="CT chest",
            requested_procedure_description="CT of the chest",
            scheduled_date="20240301",
            scheduled_time="083000",
            referring_physician="House^Gregory^^Dr",
            reason="cough",
            study_uid=str(generate_uid()),
        )
        node.add_order(
            accession_number="ACC-2",
            patient_mrn="MRN-1",
            patient_issuer="HOSP",
            status="completed",
            modality="CT",
            scheduled_date="20240115",
            study_uid=study_1,
            matched_study_uid=study_1,
        )
        node.add_order(
            accession_number="ACC/3 x",
            patient_mrn="MRN-2",
            patient_issuer="1.2.3.4",
            status="cancelled",
            modality="MR",
            study_uid=str(generate_uid()),
        )
        ct_series, mr_series = str(generate_uid()), str(generate_uid())
        datasets = []
        for number in (1, 2):
            ds = make_ct(
                study_1, ct_series, patient_id="MRN-1", patient_name="Doe^Jane", seed=number
            )
            ds.AccessionNumber = "ACC-2"
            ds.InstanceNumber = number
            datasets.append(ds)
        mr = make_ct(study_1, mr_series, patient_id="MRN-1", patient_name="Doe^Jane", seed=3)
        mr.Modality, mr.SeriesNumber, mr.AccessionNumber = "MR", 2, "ACC-2"
        datasets.append(mr)
        other = make_ct(study_2, patient_id="MRN-NOADT", study_date="20230301", seed=4)
        other.AccessionNumber = "ACC-X"
        datasets.append(other)
        node.stow(datasets)
        finding = node.add_observation(
            study_uid=study_1,
            patient_mrn="MRN-1",
            code="233604007",
            code_system="http://snomed.info/sct",
            display="Pneumonia",
            value_quantity=0.87,
            method="model sha256:abc",
        )
        yield World(node, jane, john, old_jane, study_1, study_2, finding)


def _ids(bundle: dict[str, object]) -> list[str]:
    entries = bundle.get("entry", [])
    assert isinstance(entries, list)
    return [e["resource"]["id"] for e in entries]


def _outcome(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error" and issue["code"] == code, body
    message: str = issue["diagnostics"]
    return message


def test_capability_statement_lists_what_is_served(world: World) -> None:
    r = world.node.get("metadata")
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    resources = {res["type"]: res for res in cs["rest"][0]["resource"]}
    expected = {
        "Patient": fhir_patients.SEARCH_PARAMS,
        "ServiceRequest": fhir_orders.SEARCH_PARAMS,
        "ImagingStudy": fhir_imaging.SEARCH_PARAMS,
        "DiagnosticReport": fhir_reports.SEARCH_PARAMS,
        "Observation": fhir_observations.SEARCH_PARAMS,
    }
    for resource_type, params in expected.items():
        assert {p["name"] for p in resources[resource_type]["searchParam"]} == params
    codes = {i["code"] for i in resources["DiagnosticReport"]["interaction"]}
    assert codes == {"read", "search-type", "vread", "history-instance", "create", "update"}
    assert {i["code"] for i in resources["Patient"]["interaction"]} == {"read", "search-type"}
    # Every interaction it claims answers something other than 404/405.
    for resource_type in expected:
        r = world.node.get(f"{resource_type}?_count=1")
        assert r.status_code == 200, resource_type


def test_json_only_negotiation(world: World) -> None:
    assert world.node.get("metadata", headers={"Accept": "application/json"}).status_code == 200
    assert world.node.get("metadata?_format=json").status_code == 200
    r = world.node.get("metadata", headers={"Accept": "application/fhir+xml"})
    _outcome(r, 406, "not-supported")
    _outcome(world.node.get("Patient?_format=xml"), 406, "not-supported")


def test_patient_read(world: World) -> None:
    jane = world.node.get(f"Patient/{world.jane}").json()
    assert jane["name"][0]["family"] == "Doe" and jane["name"][0]["given"] == ["Jane", "Q"]
    assert jane["gender"] == "female" and jane["birthDate"] == "1980-02-14"
    assert jane["identifier"][0]["value"] == "MRN-1"
    assert jane["identifier"][0]["assigner"]["display"] == "HOSP"
    assert jane["active"] is True
    john = world.node.get(f"Patient/{world.john}").json()
    assert john["identifier"][0]["system"] == "urn:oid:1.2.3.4"
    # A record merged away by ADT^A40 points at the survivor.
    old = world.node.get(f"Patient/{world.old_jane}").json()
    assert old["active"] is False
    assert old["link"] == [
        {"other": {"reference": f"Patient/{world.jane}", "type": "Patient"}, "type": "replaced-by"}
    ]
    message = _outcome(world.node.get("Patient/999999"), 404, "not-found")
    assert "Patient" in message
    _outcome(world.node.get("Patient/not-a-key"), 404, "not-found")


def test_patient_search(world: World) -> None:
    n, jane, john, old = world.node, str(world.jane), str(world.john), str(world.old_jane)
    assert _ids(n.search("Patient?identifier=MRN-1")) == [jane]
    assert _ids(n.search("Patient?identifier=HOSP|MRN-1")) == [jane]
    assert _ids(n.search("Patient?identifier=urn:oid:1.2.3.4|MRN-2")) == [john]
    assert _ids(n.search("Patient?identifier=OTHER|MRN-2")) == []
    assert sorted(_ids(n.search("Patient?name=doe"))) == sorted([jane, old])
    assert _ids(n.search("Patient?name=jOh")) == [john]
    assert _ids(n.search("Patient?name=q&gender=female")) == [jane]
    assert _ids(n.search("Patient?gender=male")) == [john]
    assert _ids(n.search("Patient?birthdate=1975")) == [john]
    assert sorted(_ids(n.search("Patient?birthdate=ge1976-01-01"))) == sorted([jane, old])
    assert _ids(n.search("Patient?birthdate=lt1980-02")) == [john]
    assert sorted(_ids(n.search("Patient?name=smith,jane"))) == sorted([jane, john, old])


def test_paging_walks_every_match_once(world: World) -> None:
    first = world.node.search("Patient?_count=2")
    assert first["total"] == 3 and len(first["entry"]) == 2
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert "previous" not in links
    second = world.node.search(links["next"])
    assert second["total"] == 3 and len(second["entry"]) == 1
    links_2 = {link["relation"]: link["url"] for link in second["link"]}
    assert "next" not in links_2
    assert _ids(world.node.search(links_2["previous"])) == _ids(first)
    assert sorted(_ids(first) + _ids(second)) == sorted(
        str(k) for k in (world.jane, world.john, world.old_jane)
    )
    # Paging keeps the search's own parameters.
    page = world.node.search("Patient?name=doe&_count=1")
    following = {link["relation"]: link["url"] for link in page["link"]}["next"]
    assert "name=doe" in following
    counted = world.node.search("Patient?_count=0")
    assert counted["total"] == 3 and "entry" not in counted


def test_bad_search_parameters_are_400_operation_outcomes(world: World) -> None:
    message = _outcome(world.node.get("Patient?nickname=x"), 400, "invalid")
    assert "nickname" in message
    lenient = world.node.search("Patient?nickname=x", headers={"Prefer": "handling=lenient"})
    assert lenient["total"] == 3
    self_link = next(link["url"] for link in lenient["link"] if link["relation"] == "self")
    assert "nickname" not in self_link
    assert "_count" in _outcome(world.node.get("Patient?_count=-1"), 400, "invalid")
    assert "_count" in _outcome(world.node.get("Patient?_count=100000"), 400, "invalid")
    assert "birthdate" in _outcome(world.node.get("Patient?birthdate=14.02.1980"), 400, "invalid")
    _outcome(world.node.get("ImagingStudy?patient=Practitioner/1"), 400, "invalid")


def test_unknown_paths_and_methods(world: World) -> None:
    _outcome(world.node.get("Medication/1"), 404, "not-found")
    r = world.node.request("DELETE", f"Patient/{world.jane}")
    _outcome(r, 405, "not-supported")
    assert "GET" in r.headers["allow"]
    _outcome(
        world.node.request("POST", "Patient", json={"resourceType": "Patient"}),
        405,
        "not-supported",
    )
    # DICOMweb keeps its own error bodies.
    r = httpx.get(world.node.url + "/dicom-web/studies/1.2.3/nothing")
    assert r.status_code == 404 and set(r.json()) == {"error"}


def test_service_request_read(world: World) -> None:
    sr = world.node.get("ServiceRequest/ACC-1").json()
    assert sr["status"] == "active" and sr["intent"] == "order" and sr["priority"] == "stat"
    types = {i["type"]["coding"][0]["code"]: i["value"] for i in sr["identifier"]}
    assert types == {"ACSN": "ACC-1", "PLAC": "PL-1", "FILL": "FI-1"}
    assert sr["code"]["coding"] == [
        {"code": "CTCHEST", "system": "http://loinc.org", "display": "CT chest"}
    ]
    assert sr["code"]["text"] == "CT of the chest"
    assert sr["subject"]["reference"] == f"Patient/{world.jane}"
    assert sr["occurrenceDateTime"].startswith("2024-03-01T08:30:00")
    assert sr["requester"] == {"display": "Dr Gregory House"}
    assert sr["reasonCode"] == [{"text": "cough"}]
    # An accession number with characters a FHIR id cannot hold gets an escaped id.
    found = world.node.search("ServiceRequest?identifier=ACC/3 x".replace(" ", "%20"))
    (odd,) = [e["resource"] for e in found["entry"]]
    assert odd["id"] == "ACC.2F3.20x" and odd["status"] == "revoked"
    assert (
        world.node.get(f"ServiceRequest/{odd['id']}").json()["identifier"][0]["value"] == "ACC/3 x"
    )
    _outcome(world.node.get("ServiceRequest/NOPE"), 404, "not-found")
    _outcome(world.node.get("ServiceRequest/ACC.2"), 404, "not-found")


def test_service_request_search(world: World) -> None:
    n = world.node
    assert _ids(n.search(f"ServiceRequest?patient=Patient/{world.jane}")) == ["ACC-2", "ACC-1"]
    assert _ids(n.search(f"ServiceRequest?subject={world.john}")) == ["ACC.2F3.20x"]
    assert _ids(n.search("ServiceRequest?status=completed")) == ["ACC-2"]
    assert sorted(_ids(n.search("ServiceRequest?status=active,revoked"))) == [
        "ACC-1",
        "ACC.2F3.20x",
    ]
    assert _ids(n.search("ServiceRequest?identifier=PL-1")) == ["ACC-1"]
    assert _ids(n.search("ServiceRequest?code=http://loinc.org|CTCHEST")) == ["ACC-1"]
    assert _ids(n.search("ServiceRequest?occurrence=2024-03")) == ["ACC-1"]
    assert _ids(n.search("ServiceRequest?accession=ACC-2")) == ["ACC-2"]
    assert _ids(n.search("ServiceRequest?modality=MR")) == ["ACC.2F3.20x"]
    assert _ids(n.search("ServiceRequest?patient=Patient/424242")) == []


def test_imaging_study_read(world: World) -> None:
    study = world.node.get(f"ImagingStudy/{world.study_1}").json()
    assert study["id"] == world.study_1 and study["status"] == "available"
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{world.study_1}"} in study["identifier"]
    assert any(i.get("value") == "ACC-2" for i in study["identifier"])
    assert study["subject"]["reference"] == f"Patient/{world.jane}"
    assert study["basedOn"] == [{"reference": "ServiceRequest/ACC-2", "type": "ServiceRequest"}]
    assert study["numberOfSeries"] == 2 and study["numberOfInstances"] == 3
    assert {m["code"] for m in study["modality"]} == {"CT", "MR"}
    assert study["started"].startswith("2024-01-15T10:15:00")
    ct, mr = study["series"]
    assert ct["modality"]["code"] == "CT" and ct["numberOfInstances"] == 2
    assert [i["number"] for i in ct["instance"]] == [1, 2]
    assert ct["instance"][0]["sopClass"]["code"] == f"urn:oid:{CT_IMAGE_STORAGE}"
    assert mr["modality"]["code"] == "MR" and mr["number"] == 2
    # Where the images are: the node's DICOMweb service.
    assert study["endpoint"] == [{"reference": "Endpoint/dicomweb", "type": "Endpoint"}]
    endpoint = world.node.get("Endpoint/dicomweb").json()
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["address"] == f"{world.node.url}/dicom-web"
    # A patient the order system never registered: referenced by MRN, not by a guess.
    other = world.node.get(f"ImagingStudy/{world.study_2}").json()
    assert "reference" not in other["subject"]
    assert other["subject"]["identifier"]["value"] == "MRN-NOADT"
    assert "basedOn" not in other
    _outcome(world.node.get("ImagingStudy/1.2.3.4.5"), 404, "not-found")
    _outcome(world.node.get("Endpoint/other"), 404, "not-found")


def test_imaging_study_search(world: World) -> None:
    n, s1, s2 = world.node, world.study_1, world.study_2
    assert _ids(n.search(f"ImagingStudy?patient=Patient/{world.jane}")) == [s1]
    assert _ids(n.search(f"ImagingStudy?subject={world.john}")) == []
    assert _ids(n.search(f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{s1}")) == [s1]
    assert _ids(n.search(f"ImagingStudy?identifier=urn:oid:{s2}")) == [s2]
    assert _ids(n.search("ImagingStudy?identifier=ACC-X")) == [s2]
    assert _ids(n.search("ImagingStudy?modality=MR")) == [s1]
    assert _ids(n.search("ImagingStudy?accession=ACC-2")) == [s1]
    assert _ids(n.search("ImagingStudy?accession=ACC-1")) == []
    assert _ids(
        n.search("ImagingStudy?modality=http://dicom.nema.org/resources/ontology/DCM|CT")
    ) == [s2, s1]
    assert _ids(n.search("ImagingStudy?started=2023-03")) == [s2]
    assert _ids(n.search("ImagingStudy?started=gt2023-12-31")) == [s1]
    assert _ids(n.search("ImagingStudy?basedon=ServiceRequest/ACC-2")) == [s1]
    assert _ids(n.search("ImagingStudy?status=available&_count=1"))[0] == s2
    assert n.search("ImagingStudy?status=cancelled")["total"] == 0
    assert _ids(n.search(f"ImagingStudy?_id={quote(s1)}")) == [s1]


def test_observation_read_and_search(world: World) -> None:
    obs = world.node.get(f"Observation/{world.finding}").json()
    assert obs["code"]["coding"][0] == {
        "code": "233604007",
        "system": "http://snomed.info/sct",
        "display": "Pneumonia",
    }
    assert obs["valueQuantity"] == {"value": 0.87}
    assert obs["derivedFrom"] == [{"reference": f"ImagingStudy/{world.study_1}"}]
    assert obs["subject"]["reference"] == f"Patient/{world.jane}"
    found = str(world.finding)
    n = world.node
    assert _ids(n.search(f"Observation?derived-from=ImagingStudy/{world.study_1}")) == [found]
    assert _ids(n.search(f"Observation?patient={world.jane}")) == [found]
    assert _ids(n.search("Observation?code=http://snomed.info/sct|233604007")) == [found]
    assert _ids(n.search("Observation?code=12345")) == []
    _outcome(n.get("Observation/77777"), 404, "not-found")
