"""DiagnosticReport over a real node: create, update, vread, history, search, the status rules,
and the ORU^R01 payload queued in the HL7 outbox when a report becomes final or amended."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.storage.workflow_index import OutboundMessage
from tests.node.factories import make_ct
from tests.node.fhir_helpers import FhirNode, index_database, serve_node

FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FhirNode]:
    with (
        index_database(request.param) as url,
        serve_node(tmp_path_factory.mktemp("fhir-reports"), url) as running,
    ):
        yield running


@dataclass
class Case:
    """One patient with one ordered, acquired and matched study."""

    patient_id: int
    mrn: str
    accession: str
    study_uid: str


def _case(node: FhirNode, tag: str) -> Case:
    mrn, accession, study_uid = f"MRN-{tag}", f"ACC-{tag}", str(generate_uid())
    patient_id = node.add_patient(
        mrn=mrn, issuer="HOSP", name="Roe^Richard", sex="M", birth_date="19600505"
    )
    node.add_order(
        accession_number=accession,
        placer_order_number=f"PL-{tag}",
        filler_order_number=f"FI-{tag}",
        patient_mrn=mrn,
        patient_issuer="HOSP",
        status="completed",
        modality="CT",
        procedure_code="24627-2",
        procedure_code_system="LN",
        procedure_code_meaning="CT Chest",
        requested_procedure_description="CT chest without contrast",
        study_uid=study_uid,
        matched_study_uid=study_uid,
    )
    ds = make_ct(study_uid, patient_id=mrn, patient_name="Roe^Richard", study_date="20240220")
    ds.AccessionNumber = accession
    node.stow([ds])
    return Case(patient_id, mrn, accession, study_uid)


def _report(case: Case, status: str, conclusion: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
        "subject": {"reference": f"Patient/{case.patient_id}"},
        "basedOn": [{"reference": f"ServiceRequest/{case.accession}"}],
        "imagingStudy": [{"reference": f"ImagingStudy/{case.study_uid}"}],
        "resultsInterpreter": [{"display": "Dr Reader"}],
        "conclusion": conclusion,
        "presentedForm": [
            {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}
        ],
        **extra,
    }


def _post(node: FhirNode, body: object, **kwargs: Any) -> httpx.Response:
    return node.request(
        "POST", "DiagnosticReport", content=json.dumps(body), headers=FHIR, **kwargs
    )


def _put(
    node: FhirNode, rid: str, body: object, headers: dict[str, str] | None = None
) -> httpx.Response:
    return node.request(
        "PUT",
        f"DiagnosticReport/{rid}",
        content=json.dumps(body),
        headers={**FHIR, **(headers or {})},
    )


def _outbox(node: FhirNode) -> list[tuple[str, dict[str, Any]]]:
    table = OutboundMessage.__table__  # type: ignore[attr-defined]
    with node.engine.connect() as conn:
        rows = conn.execute(select(table.c.kind, table.c.payload).order_by(table.c.message_key))
        return [(str(kind), json.loads(str(payload))) for kind, payload in rows]


def _outcome(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert r.json()["resourceType"] == "OperationOutcome" and issue["code"] == code, r.text
    message: str = issue["diagnostics"]
    return message


def test_report_lifecycle_keeps_history_and_queues_final_and_amended(node: FhirNode) -> None:
    case = _case(node, "LIFE")
    before = len(_outbox(node))

    created = _post(node, _report(case, "preliminary", "Possible nodule.", "Draft text."))
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    assert created.headers["location"].endswith(f"/fhir/DiagnosticReport/{rid}/_history/1")
    assert created.headers["etag"] == 'W/"1"'
    prelim = created.json()
    assert prelim["status"] == "preliminary" and prelim["meta"]["versionId"] == "1"
    assert prelim["subject"]["reference"] == f"Patient/{case.patient_id}"
    assert prelim["basedOn"] == [{"reference": f"ServiceRequest/{case.accession}"}]
    assert prelim["imagingStudy"] == [{"reference": f"ImagingStudy/{case.study_uid}"}]
    assert base64.b64decode(prelim["presentedForm"][0]["data"]).decode() == "Draft text."
    assert len(_outbox(node)) == before  # nothing goes to the OCS for a preliminary report

    final_body = _report(case, "final", "Nodule 6 mm, right upper lobe.", "Final text.", id=rid)
    final = _put(node, rid, final_body, {"If-Match": 'W/"1"'})
    assert final.status_code == 200, final.text
    assert final.json()["status"] == "final" and final.headers["etag"] == 'W/"2"'
    messages = _outbox(node)[before:]
    assert len(messages) == 1
    kind, payload = messages[0]
    assert kind == "report"
    issued = payload["report"].pop("issued")
    assert datetime.fromisoformat(issued).utcoffset() == UTC.utcoffset(None)
    assert final.json()["issued"].startswith(issued[:19])
    assert payload == {
        "accession_number": case.accession,
        "study_uid": case.study_uid,
        "patient": {
            "mrn": case.mrn,
            "issuer": "HOSP",
            "name": "Roe^Richard",
            "birth_date": "19600505",
            "sex": "M",
        },
        "order": {
            "placer_order_number": "PL-LIFE",
            "filler_order_number": "FI-LIFE",
            "procedure_code": "24627-2",
            "procedure_code_system": "LN",
            "procedure_code_meaning": "CT Chest",
            "requested_procedure_description": "CT chest without contrast",
            "modality": "CT",
        },
        "report": {
            "report_key": int(rid),
            "version": 2,
            "status": "final",
            "conclusion": "Nodule 6 mm, right upper lobe.",
            "text": "Final text.",
            "author": "Dr Reader",
        },
    }

    # A final report never goes back to preliminary, and the refusal stores nothing.
    back = _put(node, rid, _report(case, "preliminary", "Oops.", "Oops.", id=rid))
    assert "amended" in _outcome(back, 422, "business-rule")
    assert node.get(f"DiagnosticReport/{rid}").json()["meta"]["versionId"] == "2"
    again = _put(node, rid, _report(case, "final", "Again.", "Again.", id=rid))
    _outcome(again, 422, "business-rule")

    amended_body = _report(case, "amended", "Nodule 7 mm on re-measurement.", "Amended.", id=rid)
    amended = _put(node, rid, amended_body)
    assert amended.status_code == 200 and amended.json()["meta"]["versionId"] == "3"
    kinds = [(k, p["report"]["status"], p["report"]["version"]) for k, p in _outbox(node)[before:]]
    assert kinds == [("report", "final", 2), ("report", "amended", 3)]

    history = node.get(f"DiagnosticReport/{rid}/_history").json()
    assert history["type"] == "history" and history["total"] == 3
    versions = [
        (e["resource"]["meta"]["versionId"], e["resource"]["status"]) for e in history["entry"]
    ]
    assert versions == [("3", "amended"), ("2", "final"), ("1", "preliminary")]
    first = node.get(f"DiagnosticReport/{rid}/_history/1").json()
    assert first["status"] == "preliminary" and first["conclusion"] == "Possible nodule."
    assert node.get(f"DiagnosticReport/{rid}").json()["conclusion"].startswith("Nodule 7 mm")
    _outcome(node.get(f"DiagnosticReport/{rid}/_history/9"), 404, "not-found")

    # A stale version in If-Match is refused, not silently overwritten.
    stale = _put(node, rid, amended_body, {"If-Match": 'W/"2"'})
    _outcome(stale, 412, "conflict")


def test_report_search(node: FhirNode) -> None:
    case = _case(node, "SEARCH")
    rid = _post(node, _report(case, "final", "Normal.", "Normal chest.")).json()["id"]
    other = _case(node, "SEARCH2")
    other_id = _post(node, _report(other, "preliminary", "Draft.", "Draft.")).json()["id"]

    def ids(query: str) -> list[str]:
        r = node.get(f"DiagnosticReport?{query}")
        assert r.status_code == 200, r.text
        return [e["resource"]["id"] for e in r.json().get("entry", [])]

    assert ids(f"patient=Patient/{case.patient_id}") == [rid]
    assert ids(f"subject={other.patient_id}") == [other_id]
    assert ids(f"based-on=ServiceRequest/{case.accession}") == [rid]
    assert ids(f"accession={other.accession}") == [other_id]
    assert rid in ids("status=final") and other_id not in ids("status=final")
    assert {rid, other_id} <= set(ids("date=2024-02-20"))
    assert ids("date=2023") == []
    assert rid in ids("code=http://loinc.org|18748-4")
    page = node.get("DiagnosticReport?_count=1").json()
    assert page["total"] >= 2 and any(link["relation"] == "next" for link in page["link"])


def test_final_on_create_is_queued(node: FhirNode) -> None:
    case = _case(node, "DIRECT")
    before = len(_outbox(node))
    # basedOn alone finds the study through the order's match.
    body = _report(case, "final", "No acute findings.", "Text.")
    del body["imagingStudy"]
    created = _post(node, body)
    assert created.status_code == 201, created.text
    assert created.json()["imagingStudy"] == [{"reference": f"ImagingStudy/{case.study_uid}"}]
    [(kind, payload)] = _outbox(node)[before:]
    assert kind == "report" and payload["report"]["version"] == 1
    assert payload["accession_number"] == case.accession


def test_invalid_reports_are_refused_with_what_was_wrong(node: FhirNode) -> None:
    case = _case(node, "BAD")
    before = len(_outbox(node))
    with node.engine.connect() as conn:
        from node.services.reports import REPORT_T

        reports_before = conn.execute(select(REPORT_T.c.report_key)).all()

    # Not a valid R4 DiagnosticReport: the message names the field, never the value.
    bad_status = _report(case, "bogus", "x", "x")
    assert "status" in _outcome(_post(node, bad_status), 400, "invalid")
    bad_issued = _report(case, "final", "x", "x", issued="Roe^Richard")
    message = _outcome(_post(node, bad_issued), 400, "invalid")
    assert "issued" in message and "Roe" not in message
    assert "JSON" in _outcome(
        node.request("POST", "DiagnosticReport", content=b"{not json", headers=FHIR), 400, "invalid"
    )
    wrong_type = {"resourceType": "Patient"}
    _outcome(_post(node, wrong_type), 400, "invalid")
    plain = node.request(
        "POST", "DiagnosticReport", content=b"{}", headers={"Content-Type": "text/plain"}
    )
    _outcome(plain, 415, "not-supported")

    # Valid FHIR, but against the workflow's rules.
    nowhere = _report(case, "final", "x", "x")
    nowhere["imagingStudy"] = [{"reference": "ImagingStudy/1.2.3.999"}]
    del nowhere["basedOn"]
    assert "study" in _outcome(_post(node, nowhere), 422, "business-rule")
    other = _case(node, "BAD2")
    wrong_patient = _report(case, "final", "x", "x")
    wrong_patient["subject"] = {"reference": f"Patient/{other.patient_id}"}
    assert "subject" in _outcome(_post(node, wrong_patient), 422, "business-rule")
    amended_first = _report(case, "amended", "x", "x")
    _outcome(_post(node, amended_first), 422, "business-rule")
    no_study = _report(case, "final", "x", "x")
    del no_study["imagingStudy"], no_study["basedOn"]
    _outcome(_post(node, no_study), 422, "business-rule")

    # Updates: unknown id, id mismatch.
    _outcome(_put(node, "99999", _report(case, "final", "x", "x", id="99999")), 404, "not-found")
    rid = _post(node, _report(case, "preliminary", "p", "p")).json()["id"]
    mismatch = _report(case, "final", "x", "x", id="12345")
    assert "id" in _outcome(_put(node, rid, mismatch), 400, "invalid")
    moved = _report(other, "final", "x", "x", id=rid)
    _outcome(_put(node, rid, moved), 422, "business-rule")

    # Nothing from the refused requests was stored or queued.
    assert len(_outbox(node)) == before
    with node.engine.connect() as conn:
        after = conn.execute(select(REPORT_T.c.report_key)).all()
    assert len(after) == len(reports_before) + 1  # only the preliminary created on purpose


def test_imaging_study_follows_the_archive(node: FhirNode) -> None:
    case = _case(node, "STEP")
    study = node.get(f"ImagingStudy/{case.study_uid}").json()
    assert study["numberOfInstances"] == 1
    extra = make_ct(case.study_uid, patient_id=case.mrn, seed=9)
    extra.AccessionNumber = case.accession
    node.stow([extra])
    study = node.get(f"ImagingStudy/{case.study_uid}").json()
    assert study["numberOfInstances"] == 2 and study["numberOfSeries"] == 2
    r = httpx.delete(f"{node.url}/dicom-web/studies/{case.study_uid}", timeout=60)
    assert r.status_code in (200, 202, 204), r.text
    r = node.get(f"ImagingStudy/{case.study_uid}")
    assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-found"


def test_racing_finalisations_send_one_report(node: FhirNode) -> None:
    case = _case(node, "RACE")
    rid = _post(node, _report(case, "preliminary", "p", "p")).json()["id"]
    before = len(_outbox(node))
    body = _report(case, "final", "Final.", "Final.", id=rid)
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda _: _put(node, rid, body).status_code, range(6)))
    # One radiologist's click wins; the others are told the report moved on (409/412/422).
    assert statuses.count(200) == 1, statuses
    assert set(statuses) - {200} <= {409, 412, 422}, statuses
    assert [p["report"]["status"] for _, p in _outbox(node)[before:]] == ["final"]
    history = node.get(f"DiagnosticReport/{rid}/_history").json()
    assert history["total"] == 2
