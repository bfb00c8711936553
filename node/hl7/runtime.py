"""Starting and stopping the node's HL7 parts with the application (FastAPI lifespan)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from node.hl7.listener import start_listener
from node.hl7.mllp import MLLPServer
from node.hl7.outbound import DeliveryWorker, start_delivery
from node.services.audit import NodeAudit
from node.settings import NodeSettings

log = logging.getLogger("pacsmesh.hl7")


@dataclass
class HL7Runtime:
    """The MLLP listener (hl7_port != 0) and the outbox worker (ocs_host set)."""

    listener: MLLPServer | None = None
    worker: DeliveryWorker | None = None

    def stop(self) -> None:
        """Stop accepting messages first, then let the worker finish its message in flight."""
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None


def start_hl7(settings: NodeSettings, engine: Engine, audit: NodeAudit | None = None) -> HL7Runtime:
    """Start what the settings ask for; inbound messages are audited when `audit` is given."""
    runtime = HL7Runtime()
    try:
        if settings.hl7_port:
            runtime.listener = start_listener(settings, engine, audit=audit)
            log.info("HL7 MLLP listener on %s:%d", settings.host, runtime.listener.port)
        if settings.ocs_host:
            runtime.worker = start_delivery(engine, settings)
    except BaseException:
        runtime.stop()
        raise
    return runtime
