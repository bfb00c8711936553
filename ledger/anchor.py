"""AuditAnchor client, and the background worker that anchors the audit log's root.

The worker never loses an event: events are durable in the AuditLog before it runs, and an
anchor covers every event up to its tree size. When the chain is unreachable the worker just
tries again later; after a reorg it forgets anchors whose transaction left the canonical chain
and anchors the current root again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from eth_utils.address import to_checksum_address

from ledger.chain import Chain
from ledger.deploy import Deployment, address_topic, checksum, contract
from ledger.errors import ConflictError, LedgerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnchorReceipt:
    """Where an anchor transaction landed."""

    tx_hash: str
    block_number: int


@dataclass(frozen=True)
class AccessRecord:
    """One cross-hospital access as recorded on chain."""

    requester: str
    provider: str
    patient: str
    study_hash: bytes
    purpose: int
    consent_ref: bytes
    permitted: bool
    tx_hash: str
    block_number: int


class AnchorRecordLike(Protocol):
    """What the worker reads from AuditLog.anchors()."""

    size: int
    root: bytes
    tx_hash: str
    block_number: int


class AuditLogLike(Protocol):
    """The part of ledger.audit_log.AuditLog the worker uses."""

    def size(self) -> int: ...
    def root(self, size: int | None = None) -> bytes: ...
    def record_anchor(self, size: int, root: bytes, tx_hash: str, block_number: int) -> None: ...
    def anchors(self) -> list[Any]: ...
    def forget_anchor(self, tx_hash: str) -> None: ...


def _hex(tx_hash: Any) -> str:
    return "0x" + bytes(tx_hash).hex()


class AuditAnchorClient:
    """Typed access to the AuditAnchor contract."""

    def __init__(self, chain: Chain, deployment: Deployment) -> None:
        self.chain = chain
        self.deployment = deployment
        self.contract = contract(chain, "AuditAnchor", deployment.audit_anchor)

    def anchor(self, size: int, root: bytes) -> AnchorReceipt:
        """Anchor this node's audit log at (size, root)."""
        receipt = self.chain.transact(self.contract.functions.anchor(size, bytes(root)))
        return AnchorReceipt(_hex(receipt["transactionHash"]), int(receipt["blockNumber"]))

    def latest(self, member: str) -> tuple[int, bytes] | None:
        """The member's latest anchored (size, root), or None."""
        size, root, _block = self.chain.call(self.contract.functions.latestAnchor(checksum(member)))
        if int(size) == 0:
            return None
        return int(size), bytes(root)

    def history(self, member: str, to_block: int | None = None) -> list[tuple[int, bytes, int]]:
        """Every (size, root, block) the member anchored, oldest first (bounded log ranges)."""
        return [
            (size, root, block) for size, root, block, _ in self.history_with_tx(member, to_block)
        ]

    def history_with_tx(
        self, member: str, to_block: int | None = None
    ) -> list[tuple[int, bytes, int, str]]:
        """Like history, with each anchor's transaction hash."""
        event = self.contract.events.Anchored()
        logs = self.chain.get_logs(
            self.deployment.audit_anchor,
            self.deployment.block_number,
            to_block,
            topics=[event.topic, address_topic(member)],
        )
        out = []
        for lg in sorted(logs, key=lambda x: (x["blockNumber"], x["logIndex"])):
            args = event.process_log(lg)["args"]
            out.append(
                (
                    int(args["treeSize"]),
                    bytes(args["root"]),
                    int(lg["blockNumber"]),
                    _hex(lg["transactionHash"]),
                )
            )
        return out

    def record_access(
        self,
        provider: str,
        patient: str,
        study_hash: bytes,
        purpose: int,
        consent_ref: bytes = b"\x00" * 32,
    ) -> AnchorReceipt:
        """Record one cross-hospital access by this node (the requester)."""
        fn = self.contract.functions.recordAccess(
            checksum(provider), checksum(patient), bytes(study_hash), int(purpose), consent_ref
        )
        receipt = self.chain.transact(fn)
        return AnchorReceipt(_hex(receipt["transactionHash"]), int(receipt["blockNumber"]))

    def accesses(
        self, *, requester: str | None = None, patient: str | None = None
    ) -> list[AccessRecord]:
        """Cross-hospital access records, filtered by requester and/or patient."""
        event = self.contract.events.CrossHospitalAccess()

        def topic(addr: str | None) -> bytes | None:
            return None if addr is None else address_topic(addr)

        logs = self.chain.get_logs(
            self.deployment.audit_anchor,
            self.deployment.block_number,
            None,
            topics=[event.topic, topic(requester), None, topic(patient)],
        )
        out = []
        for lg in sorted(logs, key=lambda x: (x["blockNumber"], x["logIndex"])):
            a = event.process_log(lg)["args"]
            out.append(
                AccessRecord(
                    requester=to_checksum_address(a["requester"]),
                    provider=to_checksum_address(a["provider"]),
                    patient=to_checksum_address(a["patient"]),
                    study_hash=bytes(a["studyHash"]),
                    purpose=int(a["purpose"]),
                    consent_ref=bytes(a["consentRef"]),
                    permitted=bool(a["permitted"]),
                    tx_hash=_hex(lg["transactionHash"]),
                    block_number=int(lg["blockNumber"]),
                )
            )
        return out


class AnchorWorker:
    """Anchors the log's root every N unanchored events or T seconds."""

    def __init__(
        self,
        log: AuditLogLike,
        client: AuditAnchorClient,
        every_events: int,
        every_seconds: float,
        *,
        reorg_depth: int = 64,
        poll_interval: float | None = None,
    ) -> None:
        if every_events < 1 or every_seconds <= 0:
            raise ValueError("every_events must be ≥ 1 and every_seconds > 0")
        self.log = log
        self.client = client
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.reorg_depth = reorg_depth
        self.poll_interval = (
            poll_interval if poll_interval is not None else min(1.0, every_seconds / 4)
        )
        self.last_error: LedgerError | None = None
        self._last_anchor_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_lock = threading.Lock()
        # (block number, its hash, anchor transactions found canonical on the chain through it)
        self._verified: tuple[int, bytes, frozenset[str]] | None = None

    def _anchored_size(self) -> int:
        return max((int(a.size) for a in self.log.anchors()), default=0)

    def check_reorgs(self) -> list[str]:
        """Forget recorded anchors whose transaction left the canonical chain; return them.

        Each anchor's transaction is looked up once. After that, one block hash stands for all
        of them: the hash of the block holding the newest anchor, read when they were checked.
        While the chain still has that block, every block below it is unchanged too (each block
        names its parent's hash), so the anchors are still in place; when it has changed,
        everything is checked again.
        """
        anchors = self.log.anchors()
        if not anchors:
            self._verified = None
            return []
        chain = self.client.chain
        top = max(int(a.block_number) for a in anchors)
        # Read before any transaction is checked: a reorg after this read shows at the next run.
        top_hash = chain.block_hash(top)
        still_good: frozenset[str] = frozenset()
        if self._verified is not None and top_hash is not None:
            height, block_hash, txs = self._verified
            if (height, block_hash) == (top, top_hash) or (
                height < top and chain.block_hash(height) == block_hash
            ):
                still_good = txs
        to_check = [a for a in anchors if a.tx_hash not in still_good]
        dropped = []
        if to_check:
            head = chain.block_number()
            for a in to_check:
                if int(a.block_number) < head - self.reorg_depth:
                    continue  # deep enough to be final on this chain
                if not chain.is_canonical(a.tx_hash, int(a.block_number)):
                    log.warning("anchor tx %s left the canonical chain; re-anchoring", a.tx_hash)
                    self.log.forget_anchor(a.tx_hash)
                    dropped.append(a.tx_hash)
        self._verified = (
            None
            if dropped or top_hash is None
            else (top, top_hash, still_good | {a.tx_hash for a in to_check})
        )
        return dropped

    def due(self) -> bool:
        """Whether enough events or time have accumulated for an anchor."""
        pending = self.log.size() - self._anchored_size()
        if pending <= 0:
            return False
        waited = time.monotonic() - self._last_anchor_at
        return pending >= self.every_events or waited >= self.every_seconds

    def run_once(self, force: bool = False) -> AnchorReceipt | None:
        """Anchor now if due (or forced and anything is unanchored); None otherwise."""
        with self._run_lock:
            try:
                # A dropped anchor is re-submitted at once, not after the next N events or T s.
                dropped = self.check_reorgs()
                size = self.log.size()
                if size <= self._anchored_size() or not (force or dropped or self.due()):
                    return None
                root = self.log.root(size)
                try:
                    receipt = self.client.anchor(size, root)
                except ConflictError as exc:
                    # Already anchored on chain (e.g. we crashed after sending): adopt it.
                    receipt_or_none = self._adopt_existing(size, root)
                    if receipt_or_none is None:
                        raise exc
                    receipt = receipt_or_none
                self.log.record_anchor(size, root, receipt.tx_hash, receipt.block_number)
                self._last_anchor_at = time.monotonic()
                self.last_error = None
                return receipt
            except LedgerError as exc:
                # The events are durable in the log; the next run anchors them.
                self.last_error = exc
                log.warning("anchoring deferred: %s", type(exc).__name__)
                return None

    def _adopt_existing(self, size: int, root: bytes) -> AnchorReceipt | None:
        for s, r, block, tx in self.client.history_with_tx(self.client.chain.address):
            if s == size and r == root:
                return AnchorReceipt(tx, block)
        return None

    def start(self) -> None:
        """Run in a background thread."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self.run_once()
                self._stop.wait(self.poll_interval)

        self._thread = threading.Thread(target=loop, name="audit-anchor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread (after a final attempt to anchor what is pending)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.run_once(force=True)
