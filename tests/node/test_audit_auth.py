"""With authentication on: logins, principals and refusals in the audit trail; a patient's view.

The node refuses /fhir routes its route table does not name yet, so these read the node's log
file the way `pacsmesh audit` does, and check the patient's filtered view with the service the
/fhir/AuditEvent route uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from ledger.audit_events import uid_hash
from ledger.audit_log import AuditLog
from node.fhir.audit_search import AuditIndex
from node.fhir.search import parse_search
from node.services.audit import AUDIT_DB_FILE, NodeAudit
from node.storage.db import default_database_url, open_index
from tests.node.conftest import start_node
from tests.node.test_auth_node import ENV, PASSWORD, cli, cli_token, login


def _events(data_dir: Path) -> list[dict[str, Any]]:
    log = AuditLog.open(data_dir / AUDIT_DB_FILE)
    try:
        return [json.loads(log.entry(i)) for i in range(log.size())]
    finally:
        log.close()


def test_principals_logins_and_refusals_are_recorded(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node", env=ENV)
    try:
        added = cli(node, "add", "alice", "--role", "clinician", "--password-stdin", stdin=PASSWORD)
        assert added.returncode == 0, added.stderr
        for name, role, extra in (
            ("aud", "auditor", []),
            ("pat", "patient", ["--patient", "MRN-1"]),
        ):
            assert cli(node, "add", name, "--role", role, *extra).returncode == 0
        assert login(node, "alice", "wrong password!").status_code == 401
        r = login(node, "alice", PASSWORD)
        assert r.status_code == 200
        alice = {"Authorization": f"Bearer {r.json()['access_token']}"}
        auditor, patient = cli_token(node, "aud"), cli_token(node, "pat")
        studies = f"{node.dicomweb}/studies"
        for mrn in ("MRN-1", "MRN-2"):
            r = httpx.get(studies, params={"PatientID": mrn}, headers=alice, timeout=30)
            assert r.status_code == 204  # no studies yet: PS3.18 §8.3.4.5
        assert httpx.get(studies, timeout=30).status_code == 401
        assert httpx.get(studies, headers=auditor, timeout=30).status_code == 403
        assert httpx.get(studies, headers=patient, timeout=30).status_code == 403
    finally:
        node.stop()

    events = _events(node.data_dir)
    assert len(events) == 7
    failed, signed_in, q1, q2, anonymous, by_auditor, by_patient = events
    assert failed["event_type"] == signed_in["event_type"] == "110114"
    assert failed["outcome"] == 4 and signed_in["outcome"] == 0
    # A failed sign-in keeps only a hash of the name typed; a successful one names the user.
    assert failed["agents"][0]["who"] == f"user:{uid_hash('alice')}"
    assert signed_in["agents"][0]["who"] == "user:alice"
    assert signed_in["agents"][0]["role"] == "clinician"
    for query in (q1, q2):
        assert query["event_type"] == "110112" and query["outcome"] == 0
        assert query["agents"][0]["who"] == "user:alice"
        assert query["agents"][0]["role"] == "clinician"
    assert anonymous["agents"][0]["who"] == "anonymous" and anonymous["outcome"] == 4
    assert by_auditor["agents"][0] == {
        "who": "user:aud",
        "role": "auditor",
        "requestor": True,
        "network_address": "127.0.0.1",
    }
    assert by_auditor["outcome"] == 4
    assert by_patient["agents"][0]["role"] == "patient" and by_patient["outcome"] == 4
    assert by_patient["agents"][0]["who"].startswith("sha256:")  # no ledger address yet
    assert "MRN-1" not in json.dumps(events)

    # The patient's own view: the events about them (the query for MRN-1, not MRN-2) and their
    # own (refused) request.
    audit = NodeAudit.open(node.data_dir, "PACSMESH")
    engine = open_index(default_database_url(node.data_dir))
    try:
        index = AuditIndex(audit)
        with engine.connect() as conn:
            own = index.patient_refs(conn, mrn="MRN-1")
            everything = parse_search([], frozenset(), lenient=False)
            total, hits = index.search(conn, everything, own)
            assert total == 2 and [h.leaf_index for h in hits] == [6, 2]
            assert index.read(3, own) is None and index.read(2, own) is not None
            total, _ = index.search(conn, everything, None)
            assert total == 7
    finally:
        engine.dispose()
        audit.close()
