"""DIMSE operations from DCMTK clients leave their events: C-STORE, C-FIND, C-GET, a refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ledger.audit_events import uid_hash
from tests.node.audit_helpers import audit_search, leaf_event, verify_proof
from tests.node.dimse_helpers import (
    ARCHIVE_AE,
    MODALITY_AE,
    NODE_AE,
    WORKSTATION_AE,
    dcmtk,
    findscu,
    start_dimse_node,
    storescu,
)
from tests.node.factories import make_ct


def _refs(event: dict[str, Any], kind: str) -> set[str]:
    return {e["ref"] for e in event.get("entities", []) if e["kind"] == kind}


def test_dimse_operations_are_audited(tmp_path: Path) -> None:
    running = start_dimse_node(tmp_path / "node", None)
    try:
        ds = make_ct(patient_id="DIMSE-PAT-1")
        path = tmp_path / "ct.dcm"
        ds.save_as(path, enforce_file_format=True)
        out = storescu(running, ARCHIVE_AE, [path])
        assert "Error" not in out, out
        no_accession = make_ct(patient_id="DIMSE-PAT-2")
        del no_accession.AccessionNumber
        refused_path = tmp_path / "refused.dcm"
        no_accession.save_as(refused_path, enforce_file_format=True)
        storescu(running, MODALITY_AE, [refused_path])  # a modality must send an accession
        other_patient = make_ct(study_uid=ds.StudyInstanceUID, patient_id="DIMSE-PAT-3")
        mismatch_path = tmp_path / "mismatch.dcm"
        other_patient.save_as(mismatch_path, enforce_file_format=True)
        storescu(running, ARCHIVE_AE, [mismatch_path])  # the study is another patient's
        found, _ = findscu(
            running, "-S", ["QueryRetrieveLevel=STUDY", "PatientID=DIMSE-PAT-1"], tmp_path / "f"
        )
        assert len(found) == 1
        got = tmp_path / "got"
        got.mkdir()
        result = dcmtk(
            "getscu", "-S", "-aet", WORKSTATION_AE, "-aec", NODE_AE, "-od", str(got),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
            "127.0.0.1", str(running.dimse_port),
        )  # fmt: skip
        assert len(list(got.iterdir())) == 1, result.stdout + result.stderr

        events = audit_search(running.node.url, "agent-role=110153")
        for resource in events:
            verify_proof(resource)
        dimse = [
            leaf_event(e) for e in events if leaf_event(e)["agents"][0]["who"].startswith("ae:")
        ]
        by_kind = {
            (e["agents"][0]["who"], e["event_type"], e["action"], e["outcome"]): e for e in dimse
        }
        assert len(dimse) == 5, dimse
        stored = by_kind[f"ae:{ARCHIVE_AE}", "110104", "C", 0]
        assert _refs(stored, "study") == {uid_hash(ds.StudyInstanceUID)}
        assert _refs(stored, "instance") == {uid_hash(ds.SOPInstanceUID)}
        assert _refs(stored, "order") == {uid_hash("ACC-1")}
        assert stored["agents"][0]["network_address"] == "127.0.0.1"
        refused = by_kind[f"ae:{MODALITY_AE}", "110104", "C", 8]
        assert _refs(refused, "instance") == {uid_hash(no_accession.SOPInstanceUID)}
        mismatch = by_kind[f"ae:{ARCHIVE_AE}", "110104", "C", 8]
        assert _refs(mismatch, "instance") == {uid_hash(other_patient.SOPInstanceUID)}
        query = by_kind[f"ae:{WORKSTATION_AE}", "110112", "E", 0]
        assert len(_refs(query, "patient")) == 1 and len(_refs(query, "query")) == 1
        sent = by_kind[f"ae:{WORKSTATION_AE}", "110104", "R", 0]
        assert _refs(sent, "instance") == {uid_hash(ds.SOPInstanceUID)}
        assert _refs(sent, "study") == {uid_hash(ds.StudyInstanceUID)}
        # The store and the query name the same patient under the same pseudonym.
        assert _refs(stored, "patient") == _refs(query, "patient")
        assert "DIMSE-PAT" not in str(events)
    finally:
        running.node.stop()
