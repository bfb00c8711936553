"""End to end over real sockets against `pacsmesh node serve --hl7-port`: ADT and order by MLLP,
a study stored by STOW-RS, the order-status message delivered to a fake OCS after the node was
restarted while the OCS was down; and the admin CLI resolving an unmatched study."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import hl7
import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.node.conftest import RunningNode, free_port, start_node
from tests.node.factories import make_ct, to_bytes
from tests.node.hl7_support import FakeOCS, ack_code, adt, err, orm, send, wait_for
from tests.node.opshelpers import multipart_body


def _stow(node: RunningNode, accession: str, mrn: str) -> str:
    ds = make_ct(patient_id=mrn)
    ds.AccessionNumber = accession
    body, content_type = multipart_body([to_bytes(ds)])
    response = httpx.post(
        f"{node.dicomweb}/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return str(ds.StudyInstanceUID)


def _admin(node: RunningNode, path: str) -> Any:
    response = httpx.get(f"{node.url}/admin/{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _node(tmp_path: Path, database_url: str | None, hl7_port: int, ocs_port: int) -> RunningNode:
    env = {"NODE_OCS_HOST": "127.0.0.1", "NODE_OCS_PORT": str(ocs_port)}
    return start_node(tmp_path / "node", database_url, env=env, args=["--hl7-port", str(hl7_port)])


def test_order_loop_survives_restart_while_ocs_is_down(database_url: str, tmp_path: Path) -> None:
    hl7_port, ocs_port = free_port(), free_port()
    node = _node(tmp_path, database_url, hl7_port, ocs_port)
    ocs: FakeOCS | None = None
    try:
        assert ack_code(send(hl7_port, adt("A04"))) == "AA"
        assert ack_code(send(hl7_port, orm("ACC777", control="ORM1"))) == "AA"
        # A malformed message over the same listener: refused, nothing stored.
        bad = send(hl7_port, orm("ACC888", control="ORM2", when="20240230"))  # no 30 February
        assert ack_code(bad) == "AE" and err(bad)[1] == "102"
        assert [o["accession_number"] for o in _admin(node, "orders")] == ["ACC777"]

        study_uid = _stow(node, "ACC777", "MRN1001")
        assert _admin(node, "orders") == []  # completed: off the open list
        wait_for(lambda: _admin(node, "outbox")[0]["attempts"] >= 1, what="a failed attempt")
        pending = _admin(node, "outbox")
        assert [(m["kind"], m["status"]) for m in pending] == [("order-status", "pending")]
        assert "unreachable" in pending[0]["last_error"]

        node.stop()
        # Listener and worker stopped within the grace period (uvicorn re-raises SIGTERM once
        # shut down; a hang would have ended in SIGKILL), and nothing failed on the way.
        assert node.process.returncode in (0, -signal.SIGTERM)
        assert "Traceback" not in node.log()
        node = _node(tmp_path, database_url, hl7_port, ocs_port)
        ocs = FakeOCS(ocs_port).start()
        wait_for(lambda: _admin(node, "outbox")[0]["status"] == "delivered", 90, "delivery")
        assert len(ocs.received) == 1
        msg = hl7.parse(ocs.received[0])
        assert str(msg.segment("MSH")[9]) == "ORM^O01^ORM_O01"
        assert (str(msg.segment("ORC")[1]), str(msg.segment("ORC")[5])) == ("SC", "CM")
        assert str(msg.segment("OBR")[18]) == "ACC777"
        assert str(msg.segment("PID")[3][0][0]) == "MRN1001"
        assert str(msg.segment("ZDS")[1][0][0]) == study_uid
    finally:
        node.stop()
        if ocs is not None:
            ocs.stop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "node", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_admin_cli_resolves_unmatched_study_and_sees_ocs_rejection(
    database_url: str, tmp_path: Path
) -> None:
    hl7_port, ocs_port = free_port(), free_port()
    ocs = FakeOCS(ocs_port, answer="AE").start()
    node = _node(tmp_path, database_url, hl7_port, ocs_port)
    try:
        assert ack_code(send(hl7_port, orm("ACC321"))) == "AA"
        study_uid = _stow(node, "ACC32I", "MRN1001")  # the technologist mistyped it
        listed = _cli("reconcile", "list", "--node", node.url)
        assert listed.returncode == 0, listed.stderr
        assert '"reason": "no-order"' in listed.stdout and study_uid in listed.stdout

        wrong = _cli("reconcile", "resolve", study_uid, "--order", "NOPE", "--node", node.url)
        assert wrong.returncode == 1 and "no order has this accession number" in wrong.stderr
        done = _cli("reconcile", "resolve", study_uid, "--order", "ACC321", "--node", node.url)
        assert done.returncode == 0, done.stderr
        assert _admin(node, "reconciliation") == []

        wait_for(lambda: _admin(node, "outbox")[0]["status"] == "rejected", what="AE from OCS")
        rejected = _cli("outbox", "list", "--status", "rejected", "--node", node.url)
        assert rejected.returncode == 0, rejected.stderr
        assert "AE: order unknown at OCS" in rejected.stdout
        assert str(hl7.parse(ocs.received[0]).segment("OBR")[18]) == "ACC321"
    finally:
        node.stop()
        ocs.stop()
    down = _cli("outbox", "list", "--node", node.url)
    assert down.returncode == 2 and "cannot reach the node" in down.stderr
