"""HL7 test helpers: messages shaped like real HIS output, the `hl7` package's MLLP client, and
a fake OCS (a real MLLP socket server standing in for the hospital's order system)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import hl7
from hl7.client import MLLPClient

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def msh(kind: str, control: str = "MSG0001", version: str = "2.5", processing: str = "P") -> str:
    """An MSH as a HIS interface engine writes it (with MSH-18 and a Z-friendly layout)."""
    return (
        f"MSH|^~\\&|HIS|GENHOSP|PACS|RAD|20240115083000+0900||{kind}|{control}|{processing}|{version}"
        "|||AL|NE||UNICODE UTF-8"
    )


def pid(
    mrn: str = "MRN1001",
    name: str = "Kim^Minsu^J",
    birth: str = "19700215",
    sex: str = "M",
    issuer: str = "GENHOSP",
) -> str:
    """PID with a repeated PID-3 (national ID first, then the MR), as many HIS send."""
    ids = f"8001011234567^^^KR-NID^NI~{mrn}^^^{issuer}^MR" if mrn else ""
    return f"PID|1||{ids}||{name}^^^^L||{birth}|{sex}|||Seoul^^^^04524||010-1234-5678"


def adt(event: str, control: str = "ADT0001", **pid_args: str) -> str:
    """ADT^A01/A04/A08 with PV1 and the Z-segment HIS products add."""
    return (
        "\r".join(
            [
                msh(f"ADT^{event}^ADT_A01", control),
                f"EVN|{event}|20240115083000",
                pid(**pid_args),
                "PV1|1|O|RAD^^^GENHOSP||||1234^Park^Jisoo",
                "ZPI|VIP|N|ward-note with \\F\\ escaped bar",
            ]
        )
        + "\r"
    )


def orm(
    accession: str = "ACC20240001",
    control: str = "ORM0001",
    order_control: str = "NW",
    mrn: str = "MRN1001",
    when: str = "202401151030",
    modality: str = "CT",
    version: str = "2.3",
) -> str:
    """ORM^O01 in the IHE SWF layout (OBR-18 accession, OBR-19 procedure ID, OBR-24 modality,
    ORC-7.4 start) with escape sequences in the procedure text and a ZDS-like Z-segment."""
    return (
        "\r".join(
            [
                msh("ORM^O01", control, version=version),
                pid(mrn=mrn),
                "PV1|1|O|RAD",
                f"ORC|{order_control}|PL{accession}|FL{accession}||SC||^^^{when}^^R|||||"
                "1234^Park^Jisoo^^^Dr",
                seg(
                    "OBR",
                    {
                        1: "1",
                        2: f"PL{accession}",
                        3: f"FL{accession}",
                        4: "CTCHEST^CT Chest \\T\\ Abdomen^LOCAL",
                        7: when,
                        16: "1234^Park^Jisoo",
                        18: accession,
                        19: f"RP{accession[-6:]}",
                        20: "SPS1",
                        24: modality,
                        27: f"^^^{when}^^R",
                        31: "^Cough\\R\\fever",
                    },
                ),
                "ZDS|1.2.3^HIS^Application^DICOM",
            ]
        )
        + "\r"
    )


def omi(
    accession: str, control: str = "OMI0001", order_control: str = "NW", mrn: str = "MRN1001"
) -> str:
    """OMI^O23 (v2.5) with TQ1 start time and IPC (accession, procedure ID, modality, AE)."""
    return (
        "\r".join(
            [
                msh("OMI^O23^OMI_O23", control),
                pid(mrn=mrn),
                f"ORC|{order_control}|P{accession}|F{accession}",
                "TQ1|1||||||20240116140000||S",
                f"OBR|1|P{accession}|F{accession}|MRBRAIN^MR Brain^LOCAL",
                f"IPC|{accession}|RP77|||MR|||SPS77|MRI_1",
            ]
        )
        + "\r"
    )


def seg(name: str, values: dict[int, str]) -> str:
    """A segment from {field number: value}."""
    return "|".join([name, *(values.get(i, "") for i in range(1, max(values) + 1))])


def send(port: int, text: str | bytes) -> hl7.Message:
    """Send one message with the `hl7` package's MLLP client; the ACK parsed by `hl7`."""
    with MLLPClient("127.0.0.1", port) as client:
        raw = client.send_message(text)
    return parse_ack(raw)


def parse_ack(raw: bytes) -> hl7.Message:
    """An MLLP-framed ACK as an `hl7.Message` (the framing checked)."""
    assert raw.startswith(VT) and raw.endswith(FS + CR), raw[:20]
    return hl7.parse(raw[1:-2].decode("utf-8"))


def ack_code(ack: hl7.Message) -> str:
    """MSA-1."""
    return str(ack.segment("MSA")[1])


def err(ack: hl7.Message) -> tuple[str, str, str]:
    """(ERR-2 location, ERR-3.1 code, ERR-8 user message)."""
    seg = ack.segment("ERR")
    return str(seg[2]), str(seg[3][0][0]), str(seg[8])


@dataclass
class FakeOCS:
    """A real MLLP server that records what it receives and answers with `answer` (AA/AE/AR)."""

    port: int
    answer: str = "AA"
    received: list[str] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> FakeOCS:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen()
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while FS in buf:
                    body, buf = buf.split(FS, 1)
                    buf = buf.lstrip(CR)
                    text = body.lstrip(VT).decode("utf-8")
                    self.received.append(text)
                    control = hl7.parse(text).segment("MSH")[10]
                    reply = f"MSH|^~\\&|OCS|HOSP|PACSMESH|PACSMESH|20240115||ACK|A{control}|P|2.5\r"
                    reply += f"MSA|{self.answer}|{control}\r"
                    if self.answer != "AA":
                        reply += "ERR||ORC^1^2|204^Unknown key identifier^HL70357|E||||"
                        reply += "order unknown at OCS\r"
                    conn.sendall(VT + reply.encode() + FS + CR)


def wait_for(check: Callable[[], object], timeout: float = 30, what: str = "condition") -> object:
    """Poll until check() is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
