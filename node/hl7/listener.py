"""The node's HL7 listener: MLLP frames in, `InboundProcessor` ACKs out."""

from __future__ import annotations

from sqlalchemy import Engine

from node.errors import NodeError
from node.hl7.audit import audit_hl7
from node.hl7.inbound import InboundProcessor
from node.hl7.mllp import MLLPServer
from node.services.audit import NodeAudit
from node.settings import NodeSettings


def decode_message(payload: bytes) -> str:
    """Message bytes as text: UTF-8 (MSH-18 "UNICODE UTF-8"), else ISO 8859-1 (8859/1).

    Any byte string decodes as 8859-1, so a sender's character set never stops a message
    from being answered; the fields the node reads are ASCII in the profiles it accepts."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


def start_listener(
    settings: NodeSettings,
    engine: Engine,
    port: int | None = None,
    audit: NodeAudit | None = None,
) -> MLLPServer:
    """Bind settings.host:settings.hl7_port (or `port`) and serve in the background."""
    processor = InboundProcessor(engine, settings.hl7_application, settings.hl7_facility)

    def handle(payload: bytes) -> bytes:
        text = decode_message(payload)
        ack = processor.handle(text)
        if audit is not None:
            # Before the ACK leaves: a sender never holds an ACK for an unaudited message. If
            # the event cannot be recorded, the sender gets no ACK and resends.
            audit_hl7(audit, text, ack)
        return ack.encode("utf-8")

    bind_port = settings.hl7_port if port is None else port
    server = MLLPServer(settings.host, bind_port, handle)
    try:
        server.start()
    except OSError as exc:
        raise NodeError(
            f"cannot listen for HL7 on {settings.host}:{bind_port}: {exc.strerror or exc}"
        ) from exc
    return server
