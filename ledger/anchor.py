"""AuditAnchor contract client and the background anchoring worker (interface stub)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AnchorReceipt:
    """Where an anchor transaction landed."""

    tx_hash: str
    block_number: int


class AuditAnchorClient:
    """Typed access to the AuditAnchor contract."""

    def __init__(self, chain: Any, deployment: Any) -> None:
        self.chain = chain
        self.deployment = deployment

    def anchor(self, size: int, root: bytes) -> AnchorReceipt:
        """Anchor this node's audit log at (size, root)."""
        raise NotImplementedError

    def latest(self, member: str) -> tuple[int, bytes] | None:
        """The member's latest anchored (size, root), or None."""
        raise NotImplementedError

    def history(self, member: str) -> list[tuple[int, bytes, int]]:
        """Every (size, root, block) the member anchored, oldest first."""
        raise NotImplementedError


class AnchorWorker:
    """Anchors the log's root every N events or T seconds."""

    def __init__(
        self, log: Any, client: AuditAnchorClient, every_events: int, every_seconds: float
    ) -> None:
        self.log = log
        self.client = client
        self.every_events = every_events
        self.every_seconds = every_seconds

    def run_once(self) -> AnchorReceipt | None:
        """Anchor now if due; None when nothing was anchored."""
        raise NotImplementedError

    def start(self) -> None:
        """Run in a background thread."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the background thread."""
        raise NotImplementedError
