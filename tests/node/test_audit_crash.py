"""A node killed (SIGKILL) under load: no request it answered lacks its audit event."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx

from ledger.audit_log import AuditLog
from node.services.audit import AUDIT_DB_FILE, NodeAudit
from tests.node.conftest import start_node

THREADS = 6


def test_no_acknowledged_request_is_unaudited_after_a_crash(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node")
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        # Each request names its own patient ID, so its event can be found after the crash.
        with httpx.Client(timeout=10) as http:
            for i in range(100_000):
                if stop.is_set():
                    return
                patient_id = f"CRASH-{worker}-{i}"
                try:
                    r = http.get(f"{node.dicomweb}/studies", params={"PatientID": patient_id})
                except httpx.HTTPError:
                    return  # the node died under this request: it was never answered
                if r.status_code in (200, 204):
                    with lock:
                        acknowledged.add(patient_id)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len(acknowledged) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        node.kill()  # mid-stream: requests in flight die with it
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        if node.process.poll() is None:
            node.kill()
    assert len(acknowledged) >= 200

    log = AuditLog.open(node.data_dir / AUDIT_DB_FILE)
    try:
        assert log.verify([]) == []  # the tree is whole after the crash
        recorded = {
            ref
            for i in range(log.size())
            for entity in json.loads(log.entry(i)).get("entities", [])
            if entity["kind"] == "patient"
            for ref in [entity["ref"]]
        }
    finally:
        log.close()
    audit = NodeAudit.open(node.data_dir, "PACSMESH")  # for the node's pseudonym key
    try:
        missing = [p for p in acknowledged if audit.patient_ref(p, "") not in recorded]
    finally:
        audit.close()
    assert missing == []
