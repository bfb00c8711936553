"""The cross-node audit report: per-node counts, findings, unverifiable transfers; text and JSON.

No personal data: findings name nodes (URL, member account, hospital id), leaf indices,
transfer ids and chain blocks. Patients, studies and users stay in the nodes' logs, where they
are pseudonyms already; the report does not repeat them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_UNREADABLE = 2

FindingKind = Literal[
    # one node's log against its anchors (ledger/audit_check.py)
    "edited",
    "missing",
    "reordered",
    "anchor-mismatch",
    "inconsistent-anchors",
    "anchor-unknown",
    "unanchored",  # only with --require-anchored
    # transfers and consent across nodes (ledger/audit_transfers.py)
    "transfer-unpaired",
    "transfer-mismatch",
    "transfer-incomplete",
    "transfer-unverifiable",  # only with --strict
    "access-not-recorded",
    "access-without-consent",
]


@dataclass(frozen=True)
class Finding:
    """One thing wrong, on one node, naming its entries (and transfer) where there are some."""

    kind: FindingKind
    node: str
    detail: str
    entries: tuple[int, ...] = ()
    span: tuple[int, int] | None = None  # a range of indices too long to list
    transfer_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "node": self.node,
            "entries": list(self.entries),
            "detail": self.detail,
        }
        if self.span is not None:
            out["range"] = list(self.span)
        if self.transfer_id is not None:
            out["transfer_id"] = self.transfer_id
        return out

    def __str__(self) -> str:
        where = ""
        if self.span is not None:
            where = f" entries {self.span[0]}..{self.span[1]}"
        elif self.entries:
            noun = "entry" if len(self.entries) == 1 else "entries"
            where = f" {noun} {', '.join(map(str, self.entries))}"
        transfer = f" transfer {self.transfer_id}" if self.transfer_id else ""
        return f"{self.kind}: {self.node}{where}{transfer}: {self.detail}"


@dataclass(frozen=True)
class Unverifiable:
    """A transfer whose other side could not be checked (that node was not given, or unread)."""

    node: str
    transfer_id: str
    entry: int
    side: str
    other_member: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "node": self.node,
            "transfer_id": self.transfer_id,
            "entry": self.entry,
            "side": self.side,
            "other_member": self.other_member,
            "reason": self.reason,
        }


@dataclass
class NodeReport:
    """What was checked on one node."""

    url: str
    member: str | None = None
    hospital_id: str | None = None
    error: str | None = None
    entries: int = 0  # the snapshot's size
    served: int = 0
    anchors_checked: int = 0
    anchored_size: int = 0
    anchors_after_snapshot: int = 0
    transfers_owner: int = 0
    transfers_requester: int = 0

    @property
    def unanchored(self) -> int:
        """Entries of the snapshot past the last anchor checked."""
        return max(0, self.entries - self.anchored_size)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        out: dict[str, Any] = {
            "url": self.url,
            "member": self.member,
            "hospital_id": self.hospital_id,
            "readable": self.error is None,
        }
        if self.error is not None:
            out["error"] = self.error
            return out
        out.update(
            entries=self.entries,
            served=self.served,
            anchors_checked=self.anchors_checked,
            anchored_size=self.anchored_size,
            anchors_after_snapshot=self.anchors_after_snapshot,
            unanchored=self.unanchored,
            transfers={"owner": self.transfers_owner, "requester": self.transfers_requester},
        )
        return out


@dataclass
class AccessCounts:
    """How the cross-hospital accesses of the transfers were justified."""

    checked: int = 0
    consented: int = 0
    break_glass: int = 0
    not_released: int = 0  # both sides logged a failure: nothing left the owner

    def to_json(self) -> dict[str, int]:
        """JSON form."""
        return {
            "checked": self.checked,
            "consented": self.consented,
            "break_glass": self.break_glass,
            "not_released": self.not_released,
        }


@dataclass
class Report:
    """The whole verification."""

    nodes: list[NodeReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    unverifiable: list[Unverifiable] = field(default_factory=list)
    accesses: AccessCounts = field(default_factory=AccessCounts)
    strict: bool = False

    @property
    def exit_code(self) -> int:
        """2 when a node could not be read (the check is incomplete), 1 on findings, else 0."""
        if any(n.error is not None for n in self.nodes):
            return EXIT_UNREADABLE
        return EXIT_FINDINGS if self.findings else EXIT_CLEAN

    def to_json(self) -> dict[str, Any]:
        """JSON form (what --json prints)."""
        return {
            "ok": self.exit_code == EXIT_CLEAN,
            "exit_code": self.exit_code,
            "strict": self.strict,
            "nodes": [n.to_json() for n in self.nodes],
            "accesses": self.accesses.to_json(),
            "findings": [f.to_json() for f in self.findings],
            "unverifiable": [u.to_json() for u in self.unverifiable],
        }

    def to_text(self) -> str:
        """The human report."""
        lines: list[str] = []
        for n in self.nodes:
            who = n.hospital_id or "?"
            lines.append(f"node {n.url} ({who}, member {n.member or 'unknown'})")
            if n.error is not None:
                lines.append(f"  UNREADABLE: {n.error}")
                continue
            missing = n.entries - n.served
            lines.append(
                f"  {n.entries} entries ({missing} not served), {n.anchors_checked} anchor(s) "
                f"checked, anchored up to {n.anchored_size}, {n.unanchored} unanchored"
            )
            if n.anchors_after_snapshot:
                lines.append(f"  {n.anchors_after_snapshot} anchor(s) newer than the snapshot")
            lines.append(
                f"  transfers: {n.transfers_owner} as owner, {n.transfers_requester} as requester"
            )
        a = self.accesses
        lines.append(
            f"cross-hospital accesses: {a.checked} checked, {a.consented} under consent, "
            f"{a.break_glass} by break-glass, {a.not_released} refused on both sides"
        )
        if self.unverifiable:
            note = " (findings: --strict)" if self.strict else " (not findings without --strict)"
            lines.append(f"{len(self.unverifiable)} transfer(s) unverifiable{note}:")
            lines += [
                f"  {u.node} entry {u.entry} transfer {u.transfer_id} ({u.side} side): "
                f"{u.other_member} {u.reason}"
                for u in self.unverifiable
            ]
        lines += [str(f) for f in self.findings]
        unreadable = [n.url for n in self.nodes if n.error is not None]
        if unreadable:
            lines.append(f"INCOMPLETE: could not read {', '.join(unreadable)}")
        if self.findings:
            lines.append(f"FAILED: {len(self.findings)} finding(s)")
        elif not unreadable:
            lines.append("OK: no findings")
        return "\n".join(lines)
