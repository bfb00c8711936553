"""Outbound HL7: the rendered ORM^O01 / ORU^R01 read back by the `hl7` package, and the delivery
worker against a fake OCS on a real socket (delivered on AA, rejected on AE, retried while down)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from sqlalchemy import Engine, select, update

from node.hl7.builders import order_status_message, report_message
from node.hl7.outbound import DeliveryWorker
from node.services import outbox
from node.settings import NodeSettings
from node.storage.db import open_index
from node.storage.workflow_index import OutboundMessage
from tests.node.conftest import free_port
from tests.node.hl7_support import FakeOCS, wait_for

OUTBOX = OutboundMessage.__table__  # type: ignore[attr-defined]

PAYLOAD: dict[str, Any] = {
    "accession_number": "ACC9",
    "study_uid": "1.2.826.0.1.3680043.8.498.1",
    "patient": {
        "mrn": "MRN9",
        "issuer": "HOSP",
        "name": "Choi^Yuna^^Dr^Jr",
        "birth_date": "19900505",
        "sex": "F",
    },
    "order": {
        "placer_order_number": "P9",
        "filler_order_number": "F9",
        "procedure_code": "CTCHEST",
        "procedure_code_system": "LOCAL",
        "procedure_code_meaning": "CT Chest | contrast",
        "requested_procedure_description": "CT Chest",
        "modality": "CT",
    },
}


def _settings(tmp_path: Path, ocs_port: int = 1) -> NodeSettings:
    return NodeSettings(
        data_dir=tmp_path,
        dimse_port=0,
        hl7_port=0,
        ocs_host="127.0.0.1",
        ocs_port=ocs_port,
        ocs_application="OCSAPP",
        ocs_facility="GENHOSP",
    )


def test_order_status_is_orm_o01_sc_cm(tmp_path: Path) -> None:
    payload = {**PAYLOAD, "status": "completed", "matched_at": "2024-01-15T10:00:00+00:00"}
    msg = hl7.parse(order_status_message(_settings(tmp_path), 42, payload))
    assert str(msg.segment("MSH")[9]) == "ORM^O01^ORM_O01"
    assert str(msg.segment("MSH")[10]) == "PMO42"
    assert str(msg.segment("MSH")[5]) == "OCSAPP"
    orc, obr = msg.segment("ORC"), msg.segment("OBR")
    assert (str(orc[1]), str(orc[2]), str(orc[3]), str(orc[5])) == ("SC", "P9", "F9", "CM")
    assert str(orc[9]).startswith("20240115100000")
    assert str(obr[18]) == "ACC9" and str(obr[24]) == "CT"
    assert msg.unescape(str(obr[4][0][1])) == "CT Chest | contrast"  # escaped on the way out
    pid = msg.segment("PID")
    assert str(pid[3]) == "MRN9^^^HOSP^MR"
    assert str(pid[5]) == "Choi^Yuna^^Jr^Dr"  # PN prefix/suffix swapped into XPN order
    assert str(msg.segment("ZDS")[1][0][0]) == PAYLOAD["study_uid"]


@pytest.mark.parametrize(("status", "code"), [("final", "F"), ("amended", "C")])
def test_report_is_oru_r01(tmp_path: Path, status: str, code: str) -> None:
    report = {
        "report_key": 1,
        "version": 2,
        "status": status,
        "conclusion": "No acute disease.",
        "text": "Lungs clear.\nHeart normal size.",
        "author": "Han^Jiwoo",
        "issued": "2024-01-15T11:00:00+00:00",
    }
    msg = hl7.parse(report_message(_settings(tmp_path), 7, {**PAYLOAD, "report": report}))
    assert str(msg.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(msg.segment("OBR")[25]) == code
    obx = [s for s in msg if str(s[0]) == "OBX"]
    assert [str(s[5]) for s in obx] == ["Lungs clear.", "Heart normal size.", "No acute disease."]
    assert {str(s[11]) for s in obx} == {code}
    assert str(obx[2][3][0][0]) == "19005-8"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = open_index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield eng
    eng.dispose()


def _enqueue(engine: Engine, accession: str) -> int:
    payload = {**PAYLOAD, "accession_number": accession, "status": "completed"}
    payload["matched_at"] = "2024-01-15T10:00:00+00:00"
    with engine.begin() as conn:
        return outbox.enqueue(conn, "order-status", payload)


def _row(engine: Engine, key: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(OUTBOX).where(OUTBOX.c.message_key == key)).one()
    return dict(row._mapping)


def test_worker_retries_while_ocs_is_down_then_delivers(engine: Engine, tmp_path: Path) -> None:
    port = free_port()
    worker = DeliveryWorker(engine, _settings(tmp_path, port), poll_s=0.05, first_backoff_s=0.1)
    key = _enqueue(engine, "ACC1")
    worker.start()
    try:
        wait_for(lambda: _row(engine, key)["attempts"] >= 2, what="retries")
        row = _row(engine, key)
        assert row["status"] == "pending" and "unreachable" in row["last_error"]
        ocs = FakeOCS(port).start()
        try:
            wait_for(lambda: _row(engine, key)["status"] == "delivered", what="delivery")
            assert len(ocs.received) == 1
            assert str(hl7.parse(ocs.received[0]).segment("OBR")[18]) == "ACC1"
        finally:
            ocs.stop()
    finally:
        worker.stop()
    assert _row(engine, key)["delivered_at"] is not None


def test_ae_from_ocs_marks_rejected_with_its_error(engine: Engine, tmp_path: Path) -> None:
    port = free_port()
    ocs = FakeOCS(port, answer="AE").start()
    worker = DeliveryWorker(engine, _settings(tmp_path, port), poll_s=0.05)
    first = _enqueue(engine, "ACC2")
    second = _enqueue(engine, "ACC3")
    try:
        assert worker.run_once() == 2  # a rejection does not hold up the next message
    finally:
        worker.stop()
        ocs.stop()
    for key in (first, second):
        row = _row(engine, key)
        assert row["status"] == "rejected"
        assert row["last_error"] == "AE: order unknown at OCS"
    assert len(ocs.received) == 2


def test_not_yet_due_messages_wait(engine: Engine, tmp_path: Path) -> None:
    port = free_port()
    ocs = FakeOCS(port).start()
    key = _enqueue(engine, "ACC4")
    from datetime import UTC, datetime, timedelta

    with engine.begin() as conn:
        later = datetime.now(UTC) + timedelta(hours=1)
        conn.execute(
            update(OUTBOX).where(OUTBOX.c.message_key == key).values(next_attempt_at=later)
        )
    worker = DeliveryWorker(engine, _settings(tmp_path, port))
    try:
        assert worker.run_once() == 0
    finally:
        worker.stop()
        ocs.stop()
    assert _row(engine, key)["status"] == "pending" and not ocs.received


def test_worker_delivers_a_final_report_as_oru(engine: Engine, tmp_path: Path) -> None:
    port = free_port()
    ocs = FakeOCS(port).start()
    report = {
        "report_key": 3,
        "version": 1,
        "status": "final",
        "conclusion": "Normal.",
        "text": "Clear lungs.",
        "author": "Han^Jiwoo",
        "issued": "2024-01-15T11:00:00+00:00",
    }
    with engine.begin() as conn:
        key = outbox.enqueue(conn, "report", {**PAYLOAD, "report": report})
    worker = DeliveryWorker(engine, _settings(tmp_path, port))
    try:
        assert worker.run_once() == 1
    finally:
        worker.stop()
        ocs.stop()
    assert _row(engine, key)["status"] == "delivered"
    msg = hl7.parse(ocs.received[0])
    assert str(msg.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(msg.segment("MSH")[10]) == f"PMO{key}"
    assert str(msg.segment("OBR")[25]) == "F"
