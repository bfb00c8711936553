"""Matching stored studies to orders, on SQLite and PostgreSQL: through the real store path
(`store_bytes` with factory datasets), the order table, the outbox and the reconciliation queue."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from node.errors import ConflictError, NotFoundError
from node.services import orders, patients
from node.services.archive import Archive
from node.services.matching import list_reconciliation, resolve
from node.services.store import REASON_PATIENT_MISMATCH, StoreFailure, store_bytes
from node.storage.index import Study
from node.storage.workflow_index import OutboundMessage
from tests.node.conftest import store_concurrently
from tests.node.factories import make_ct, to_bytes

OUTBOX = OutboundMessage.__table__  # type: ignore[attr-defined]
STUDY = Study.__table__  # type: ignore[attr-defined]


def _order(archive: Archive, accession: str, mrn: str = "MRN1", status: str | None = None) -> None:
    with archive.engine.begin() as conn:
        patients.upsert_patient(conn, patients.PatientData(mrn, "HOSP", "Lee^Ana", "19800101", "F"))
        orders.place_order(
            conn,
            orders.OrderData(
                accession_number=accession,
                patient_mrn=mrn,
                patient_issuer="HOSP",
                placer_order_number=f"P-{accession}",
                filler_order_number=f"F-{accession}",
                modality="CT",
                procedure_code="CTHEAD",
                procedure_code_system="LOCAL",
                procedure_code_meaning="CT Head",
            ),
        )
        if status == "cancelled":
            orders.cancel_order(conn, accession)


def _store(archive: Archive, accession: str | None, mrn: str, study_uid: str | None = None) -> str:
    ds = make_ct(study_uid=study_uid, patient_id=mrn)
    if accession is None:
        del ds.AccessionNumber
    else:
        ds.AccessionNumber = accession
    return store_bytes(archive, to_bytes(ds)).study_uid


def _outbox(archive: Archive) -> list[dict[str, Any]]:
    with archive.engine.connect() as conn:
        return [
            dict(r._mapping) for r in conn.execute(select(OUTBOX).order_by(OUTBOX.c.message_key))
        ]


def _order_row(archive: Archive, accession: str) -> dict[str, Any]:
    with archive.engine.connect() as conn:
        row = orders.get_order(conn, accession)
    assert row is not None
    return row


def test_stored_study_completes_its_order_and_queues_one_message(archive: Archive) -> None:
    _order(archive, "ACC100")
    study_uid = _store(archive, "ACC100", "MRN1")
    _store(archive, "ACC100", "MRN1", study_uid)  # a second instance of the same study
    order = _order_row(archive, "ACC100")
    assert (order["status"], order["matched_study_uid"]) == ("completed", study_uid)
    messages = _outbox(archive)
    assert [(m["kind"], m["status"]) for m in messages] == [("order-status", "pending")]
    payload = json.loads(messages[0]["payload"])
    assert payload["accession_number"] == "ACC100"
    assert payload["study_uid"] == study_uid
    assert payload["status"] == "completed" and payload["matched_at"]
    assert payload["patient"] == {
        "mrn": "MRN1",
        "issuer": "HOSP",
        "name": "Lee^Ana",
        "birth_date": "19800101",
        "sex": "F",
    }
    assert payload["order"]["placer_order_number"] == "P-ACC100"
    assert payload["order"]["procedure_code"] == "CTHEAD"
    with archive.engine.connect() as conn:
        assert list_reconciliation(conn) == []


def test_unmatched_studies_wait_with_their_reason(archive: Archive) -> None:
    _order(archive, "ACC200")
    _order(archive, "ACC300", status="cancelled")
    no_order = _store(archive, "NOPE", "MRN1")
    mismatch = _store(archive, "ACC200", "SOMEONE-ELSE")
    cancelled = _store(archive, "ACC300", "MRN1")
    matched = _store(archive, "ACC200", "MRN1")
    second = _store(archive, "ACC200", "MRN1")  # a different study for a completed order
    _store(archive, None, "MRN1")  # no accession number: not an order's study, left alone
    with archive.engine.connect() as conn:
        queue = {i["study_uid"]: i["reason"] for i in list_reconciliation(conn)}
    assert queue == {
        no_order: "no-order",
        mismatch: "patient-mismatch",
        cancelled: "order-cancelled",
        second: "order-already-matched",
    }
    assert _order_row(archive, "ACC200")["matched_study_uid"] == matched
    assert len(_outbox(archive)) == 1


def test_merged_mrn_still_matches(archive: Archive) -> None:
    _order(archive, "ACC400", mrn="NEW9")
    with archive.engine.begin() as conn:
        patients.upsert_patient(conn, patients.PatientData("OLD9", "HOSP"))
        patients.merge_patients(conn, patients.PatientData("NEW9", "HOSP"), "OLD9", "HOSP")
    study_uid = _store(archive, "ACC400", "OLD9")  # the modality still had the old MRN
    assert _order_row(archive, "ACC400")["matched_study_uid"] == study_uid


def test_admin_resolves_a_queued_study(archive: Archive) -> None:
    _order(archive, "ACC500")
    study_uid = _store(archive, "TYPO500", "MRN1")
    with pytest.raises(NotFoundError):
        resolve(archive.engine, study_uid, "NO-SUCH-ORDER")
    result = resolve(archive.engine, study_uid, "ACC500", "admin-kim")
    assert result["resolved_accession"] == "ACC500"
    order = _order_row(archive, "ACC500")
    assert (order["status"], order["matched_study_uid"]) == ("completed", study_uid)
    assert [json.loads(m["payload"])["study_uid"] for m in _outbox(archive)] == [study_uid]
    with archive.engine.connect() as conn:
        assert list_reconciliation(conn) == []
        done = list_reconciliation(conn, include_resolved=True)
        accession: str = conn.execute(
            select(STUDY.c.accession_number).where(STUDY.c.study_uid == study_uid)
        ).scalar_one()
    assert done[0]["resolved_by"] == "admin-kim"
    assert accession == "ACC500"  # QIDO by the order's accession now finds the study
    with pytest.raises(ConflictError):
        resolve(archive.engine, study_uid, "ACC500")
    with pytest.raises(NotFoundError):
        resolve(archive.engine, "1.2.3.4", "ACC500")


def test_a_reconciled_study_takes_only_its_orders_patient_from_then_on(archive: Archive) -> None:
    _order(archive, "ACC700", mrn="MRN7")
    study_uid = _store(archive, "ACC700", "MRN7-TYPO")  # queued: patient-mismatch
    resolve(archive.engine, study_uid, "ACC700", "admin-kim")
    # The study is the order's patient's now: more of it under the right MRN joins it, more
    # under the mistyped one is refused instead of being filed under the order's patient.
    _store(archive, "ACC700", "MRN7", study_uid)
    with pytest.raises(StoreFailure) as refused:
        _store(archive, "ACC700", "MRN7-TYPO", study_uid)
    assert refused.value.code == REASON_PATIENT_MISMATCH
    with archive.engine.connect() as conn:
        filed = conn.execute(
            select(STUDY.c.patient_id, STUDY.c.patient_issuer, STUDY.c.number_of_instances).where(
                STUDY.c.study_uid == study_uid
            )
        ).one()
    assert tuple(filed) == ("MRN7", "HOSP", 2)


def test_instances_stored_concurrently_complete_the_order_once(archive: Archive) -> None:
    _order(archive, "ACC600")
    study_uid = make_ct().StudyInstanceUID
    parts = []
    for i in range(8):
        ds = make_ct(study_uid=study_uid, patient_id="MRN1", seed=i)
        ds.AccessionNumber = "ACC600"
        parts.append(to_bytes(ds))
    assert not store_concurrently(archive, parts)
    assert _order_row(archive, "ACC600")["matched_study_uid"] == study_uid
    assert len(_outbox(archive)) == 1
    with archive.engine.connect() as conn:
        assert list_reconciliation(conn) == []
