"""Every access to a real node process becomes an audit event, readable as FHIR AuditEvent.

STOW, QIDO, WADO, a FHIR read, an HL7 message and refused requests each leave the right event
(type, action, outcome, agent, entities), each with an inclusion proof that verifies against
the root; searches by patient, action, type and date find them. Over SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from ledger.audit_events import uid_hash
from tests.node.audit_helpers import audit_search, leaf_event, verify_proof
from tests.node.conftest import free_port, start_node
from tests.node.factories import make_ct, to_bytes
from tests.node.fhir_helpers import validate
from tests.node.hl7_support import ack_code, adt, send
from tests.node.opshelpers import multipart_body

MRN = "AUD-MRN-7"


def _entities(event: dict[str, Any], kind: str) -> list[str]:
    return [e["ref"] for e in event.get("entities", []) if e["kind"] == kind]


def _one(events: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [e for e in events if all(leaf_event(e)[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, [leaf_event(e) for e in events])
    return found[0]


def test_each_interface_leaves_its_event_with_a_proof(database_url: str, tmp_path: Path) -> None:
    hl7_port = free_port()
    node = start_node(tmp_path / "node", database_url, args=["--hl7-port", str(hl7_port)])
    try:
        # HL7: the OCS registers the patient (PS3.15 A.5.3.10 Patient Record, Create).
        assert ack_code(send(hl7_port, adt("A01", mrn=MRN))) == "AA"
        # STOW-RS: one CT of that patient.
        ds = make_ct(patient_id=MRN)
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        body, content_type = multipart_body([to_bytes(ds)])
        r = httpx.post(
            f"{node.dicomweb}/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        # QIDO-RS by patient, WADO-RS of the instance, a FHIR read of the study.
        r = httpx.get(f"{node.dicomweb}/studies", params={"PatientID": MRN}, timeout=30)
        assert r.status_code == 200 and len(r.json()) == 1
        wado = f"{node.dicomweb}/studies/{study}/series/{series}/instances/{sop}"
        assert httpx.get(wado, timeout=30).status_code == 200
        assert httpx.get(f"{node.url}/fhir/ImagingStudy/{study}", timeout=30).status_code == 200
        # Refused: an unknown study (404) and an HL7 message for an unsupported event (AR).
        missing = "1.2.826.0.1.3680043.8.498.1"
        assert httpx.get(f"{node.dicomweb}/studies/{missing}", timeout=30).status_code == 404
        assert ack_code(send(hl7_port, adt("A99", control="BAD1", mrn=MRN))) == "AR"

        events = audit_search(node.url)
        assert len(events) == 7
        roots = {verify_proof(e) for e in events}
        assert len(roots) == 1  # one head for the whole answer

        hl7_ok = leaf_event(_one(events, event_type="110110", outcome=0))
        assert hl7_ok["action"] == "C" and hl7_ok["agents"][0]["who"] == "hl7:HIS@GENHOSP"
        patient_refs = set(_entities(hl7_ok, "patient"))
        assert patient_refs and all(ref.startswith("sha256:") for ref in patient_refs)
        assert MRN not in str(events)  # pseudonyms only

        stow = leaf_event(_one(events, event_type="110104", action="C"))
        assert stow["outcome"] == 0 and _entities(stow, "study") == [uid_hash(study)]
        assert stow["agents"][0] == {
            "who": "anonymous",
            "role": "110153",
            "requestor": True,
            "network_address": "127.0.0.1",
        }
        query = leaf_event(_one(events, event_type="110112"))
        assert query["action"] == "E" and _entities(query, "query")
        assert _entities(query, "patient")  # the MRN asked for, pseudonymised
        read = leaf_event(_one(events, event_type="110104", action="R", outcome=0))
        assert set(_entities(read, "instance")) == {uid_hash(sop)}
        fhir = leaf_event(_one(events, event_type="110103"))
        assert _entities(fhir, "study") == [uid_hash(study)]
        refused = leaf_event(_one(events, event_type="110104", outcome=4))
        assert _entities(refused, "study") == [uid_hash(missing)]
        rejected = leaf_event(_one(events, event_type="110110", outcome=4))
        assert rejected["action"] == "U"

        # Searches an auditor makes.
        created = audit_search(node.url, "action=C")
        assert {leaf_event(e)["event_type"] for e in created} == {"110104", "110110"}
        assert len(audit_search(node.url, "type=110112")) == 1
        assert len(audit_search(node.url, "outcome=4")) == 2
        assert len(audit_search(node.url, "subtype=read")) == 3  # WADO, FHIR read, the 404
        today = datetime.now(UTC).date()
        assert len(audit_search(node.url, f"date=ge{today.isoformat()}")) >= 7
        assert audit_search(node.url, f"date=lt{(today - timedelta(days=1)).isoformat()}") == []
        assert len(audit_search(node.url, "agent=hl7:HIS@GENHOSP")) == 2
        assert len(audit_search(node.url, f"entity=ImagingStudy/{study}")) == 3  # STOW, WADO, read

        # By patient: the FHIR Patient the ADT created names every access to their data —
        # the HL7 messages, the query by MRN, the store, the retrieve and the FHIR read.
        patients = httpx.get(f"{node.url}/fhir/Patient", timeout=30).json()
        (patient_id,) = [e["resource"]["id"] for e in patients["entry"]]
        mine = audit_search(node.url, f"patient=Patient/{patient_id}")
        assert {leaf_event(e)["event_type"] for e in mine} == {
            "110110",
            "110104",
            "110112",
            "110103",
        }
        assert len(mine) == 6  # all but the 404 on another study
        # The auditor's own searches were recorded as "Audit Log Used" (110101).
        used = audit_search(node.url, "type=110101")
        assert len(used) >= 10 and all(leaf_event(e)["action"] == "E" for e in used)

        # Paging and read.
        r = httpx.get(f"{node.url}/fhir/AuditEvent?_count=2", timeout=30)
        page = validate(r.json())
        assert len(page["entry"]) == 2 and any(lk["relation"] == "next" for lk in page["link"])
        one = events[0]
        r = httpx.get(f"{node.url}/fhir/AuditEvent/{one['id']}", timeout=30)
        assert r.status_code == 200 and validate(r.json())["id"] == one["id"]
        verify_proof(r.json())
        assert httpx.get(f"{node.url}/fhir/AuditEvent/999999", timeout=30).status_code == 404
        r = httpx.get(f"{node.url}/fhir/AuditEvent?date=yesterday", timeout=30)
        assert r.status_code == 400 and "date" in r.text
    finally:
        node.stop()
    assert MRN not in node.log()
