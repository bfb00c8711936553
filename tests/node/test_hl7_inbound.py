"""The HL7 listener in process, over a real MLLP socket with the `hl7` package's client:
real-HIS message shapes, every ACK code, nothing stored from a message that was not accepted."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from node.hl7.listener import start_listener
from node.hl7.mllp import MLLPServer
from node.settings import NodeSettings
from node.storage.db import open_index
from node.storage.workflow_index import ImagingOrder, Patient
from tests.node.hl7_support import ack_code, adt, err, msh, omi, orm, parse_ack, pid, send

PATIENT = Patient.__table__  # type: ignore[attr-defined]
ORDER = ImagingOrder.__table__  # type: ignore[attr-defined]


@dataclass
class Listener:
    engine: Engine
    server: MLLPServer

    @property
    def port(self) -> int:
        return self.server.port

    def patients(self) -> dict[str, dict[str, object]]:
        with self.engine.connect() as conn:
            return {r.mrn: dict(r._mapping) for r in conn.execute(select(PATIENT))}

    def orders(self) -> dict[str, dict[str, object]]:
        with self.engine.connect() as conn:
            return {r.accession_number: dict(r._mapping) for r in conn.execute(select(ORDER))}

    def counts(self) -> tuple[int, int]:
        with self.engine.connect() as conn:
            p = conn.execute(select(func.count()).select_from(PATIENT)).scalar_one()
            o = conn.execute(select(func.count()).select_from(ORDER)).scalar_one()
        return p, o


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    settings = NodeSettings(data_dir=tmp_path, dimse_port=0, hl7_port=0)
    engine = open_index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    server = start_listener(settings, engine, port=0)
    yield Listener(engine, server)
    server.stop()
    engine.dispose()


def test_adt_registers_patient_with_mr_identifier_and_decoded_escapes(listener: Listener) -> None:
    ack = send(listener.port, adt("A04", name="O\\S\\Brien\\T\\x^Mary"))
    assert ack_code(ack) == "AA"
    assert str(ack.segment("MSA")[2]) == "ADT0001"  # MSA-2 echoes MSH-10
    assert str(ack.segment("MSH")[9]) == "ACK^A04^ACK"
    patient = listener.patients()["MRN1001"]  # the MR-typed PID-3 repetition, not the NI
    assert patient["issuer"] == "GENHOSP"
    assert patient["name"] == "O Brien&x^Mary"  # decoded, yet no extra PN component
    assert patient["birth_date"] == "19700215"
    assert patient["sex"] == "M"
    # A08 updates the same record.
    assert ack_code(send(listener.port, adt("A08", control="ADT0002", name="Kim^Minji"))) == "AA"
    assert listener.patients()["MRN1001"]["name"] == "Kim^Minji"
    assert listener.counts() == (1, 0)


@pytest.mark.parametrize(
    ("text", "code", "error_code", "location"),
    [
        (adt("A99"), "AR", "201", "MSH^1^9"),  # unknown trigger event
        (adt("A01").replace("ADT^A01^ADT_A01", "SIU^S12"), "AR", "200", "MSH^1^9"),
        (adt("A01").replace("|2.5|", "|2.1|"), "AR", "203", "MSH^1^12"),  # wrong version
        (adt("A01").replace("|ADT0001|", "||"), "AR", "101", "MSH^1^10"),  # missing MSH-10
        (adt("A01").replace("|P|2.5", "|X|2.5"), "AR", "202", "MSH^1^11"),
        (adt("A01", mrn=""), "AE", "101", "PID^1^3"),  # missing PID-3
        (adt("A01", birth="19701340"), "AE", "102", "PID^1^7"),  # bad date
        (adt("A01", birth="1970-02-15"), "AE", "102", "PID^1^7"),
        (adt("A01", sex="Q"), "AE", "103", "PID^1^8"),
    ],
)
def test_bad_messages_are_answered_with_err_and_store_nothing(
    listener: Listener, text: str, code: str, error_code: str, location: str
) -> None:
    ack = send(listener.port, text)
    assert ack_code(ack) == code
    where, got_code, user_message = err(ack)
    assert (where, got_code) == (location, error_code)
    assert user_message  # says what was wrong ...
    for personal in ("Kim", "Minsu", "MRN1001", "19700215", "8001011234567"):
        assert personal not in str(ack)  # ... without personal data
    assert listener.counts() == (0, 0)


def test_orm_new_order_read_from_ihe_fields(listener: Listener) -> None:
    ack = send(listener.port, orm("ACC20240001"))
    assert ack_code(ack) == "AA", str(ack)
    order = listener.orders()["ACC20240001"]
    assert order["status"] == "scheduled"
    assert order["patient_mrn"] == "MRN1001"
    assert order["placer_order_number"] == "PLACC20240001"
    assert order["filler_order_number"] == "FLACC20240001"
    assert order["modality"] == "CT"
    assert order["requested_procedure_id"] == "RP240001"
    assert order["procedure_code"] == "CTCHEST"
    assert order["procedure_code_meaning"] == "CT Chest & Abdomen"  # \T\ decoded
    assert order["procedure_code_system"] == "LOCAL"
    assert (order["scheduled_date"], order["scheduled_time"]) == ("20240115", "103000")
    assert order["priority"] == "routine"
    assert order["referring_physician"] == "Park^Jisoo^^Dr"
    assert order["reason"] == "Cough~fever"  # \R\ decoded, repetition separator kept as text
    assert order["study_uid"]  # assigned for the worklist
    assert "MRN1001" in listener.patients()  # the order's patient registered too


def test_omi_new_then_cancel(listener: Listener) -> None:
    assert ack_code(send(listener.port, omi("ACC77"))) == "AA"
    order = listener.orders()["ACC77"]
    assert (order["modality"], order["scheduled_station_ae"]) == ("MR", "MRI_1")
    assert (order["scheduled_date"], order["scheduled_time"]) == ("20240116", "140000")
    assert order["priority"] == "stat"
    assert ack_code(send(listener.port, omi("ACC77", control="OMI2", order_control="CA"))) == "AA"
    assert listener.orders()["ACC77"]["status"] == "cancelled"
    # A new order reusing a cancelled accession number is refused.
    ack = send(listener.port, omi("ACC77", control="OMI3"))
    assert ack_code(ack) == "AE" and err(ack)[1] == "205"


def test_bad_order_rolls_back_the_whole_message(listener: Listener) -> None:
    ack = send(listener.port, orm("ACC1", when="20241399"))  # bad scheduled date
    assert ack_code(ack) == "AE" and err(ack)[1] == "102"
    ack = send(listener.port, orm("ACC1", control="C2").replace("|ACC1|", "||"))  # no OBR-18
    assert ack_code(ack) == "AE" and err(ack)[:2] == ("OBR^1^18", "101")
    ack = send(listener.port, orm("ACC1", control="C3", order_control="ZZ"))
    assert ack_code(ack) == "AE" and err(ack)[:2] == ("ORC^1^1", "103")
    assert listener.counts() == (0, 0)  # not even the PID's patient was kept
    ack = send(listener.port, orm("NOSUCH", control="C4", order_control="CA"))
    assert ack_code(ack) == "AE" and err(ack)[1] == "204"
    assert listener.counts() == (0, 0)


def test_a40_merge_moves_orders_to_the_surviving_mrn(listener: Listener) -> None:
    assert ack_code(send(listener.port, orm("ACC5", mrn="OLD1"))) == "AA"
    merge = "\r".join(
        [msh("ADT^A40^ADT_A39", "M1"), "EVN|A40", pid(mrn="NEW1"), "MRG|OLD1^^^GENHOSP^MR"]
    )
    assert ack_code(send(listener.port, merge)) == "AA"
    assert listener.orders()["ACC5"]["patient_mrn"] == "NEW1"
    assert listener.patients()["OLD1"]["merged_into_mrn"] == "NEW1"
    unknown = merge.replace("OLD1", "GHOST").replace("|M1|", "|M2|")
    ack = send(listener.port, unknown)
    assert ack_code(ack) == "AE" and err(ack)[1] == "204"


def test_mllp_framing_errors_do_not_stop_the_listener(listener: Listener) -> None:
    port = listener.port
    # Bytes outside a frame, then a frame: the junk is dropped, the message answered.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n\x0b" + adt("A01").encode() + b"\x1c\r")
        assert ack_code(parse_ack(_read_frame(s))) == "AA"
    # Not HL7 inside a frame: AR 100.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x0bhello\x1c\r")
        ack = parse_ack(_read_frame(s))
        assert ack_code(ack) == "AR" and err(ack)[1] == "100"
    # A sender that dies mid-frame, and one that sends a frame over the size limit.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x0bMSH|^~\\&|HIS")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(b"\x0b" + b"A" * (5 << 20))
            assert s.recv(10) == b""  # the listener closed this connection
        except ConnectionError:
            pass
    assert ack_code(send(port, adt("A08", control="after"))) == "AA"


def test_several_connections_and_many_messages_on_one(listener: Listener) -> None:
    errors: list[str] = []

    def sender(n: int) -> None:
        from hl7.client import MLLPClient

        with MLLPClient("127.0.0.1", listener.port) as client:
            for i in range(20):
                ack = parse_ack(
                    client.send_message(adt("A04", control=f"C{n}-{i}", mrn=f"M{n}-{i}"))
                )
                if ack_code(ack) != "AA" or str(ack.segment("MSA")[2]) != f"C{n}-{i}":
                    errors.append(str(ack))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert listener.counts() == (80, 0)


def test_lf_separated_segments_are_understood(listener: Listener) -> None:
    ack = send(listener.port, adt("A01").replace("\r", "\n"))
    assert ack_code(ack) == "AA"


def _read_frame(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\x1c\r"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def test_cancel_by_placer_order_number_alone(listener: Listener) -> None:
    assert ack_code(send(listener.port, orm("ACC42"))) == "AA"
    cancel = "\r".join([msh("ORM^O01", "CAN1", version="2.3"), pid(), "ORC|CA|PLACC42"])
    assert ack_code(send(listener.port, cancel)) == "AA"
    assert listener.orders()["ACC42"]["status"] == "cancelled"
    unknown = cancel.replace("PLACC42", "PLNONE").replace("CAN1", "CAN2")
    ack = send(listener.port, unknown)
    assert ack_code(ack) == "AE" and err(ack)[:2] == ("ORC^1^2", "204")


def test_order_with_bare_pid_keeps_registered_demographics(listener: Listener) -> None:
    assert ack_code(send(listener.port, adt("A04"))) == "AA"
    bare = orm("ACC43").replace(pid(), "PID|1||MRN1001^^^GENHOSP^MR")
    assert ack_code(send(listener.port, bare)) == "AA"
    patient = listener.patients()["MRN1001"]
    assert (patient["name"], patient["birth_date"]) == ("Kim^Minsu^J", "19700215")
