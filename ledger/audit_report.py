"""The cross-node audit report: what the checks returned, per node and across, as text and JSON.

The report holds the checks' own results — each node's ``LogCheck`` and the ``TransferCheck``
— and only renders them.

No personal data: findings name nodes (URL, member account, hospital id), leaf indices,
transfer ids and chain blocks. Patients, studies and users stay in the nodes' logs, where they
are pseudonyms already; the report does not repeat them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ledger.audit_check import LogCheck
from ledger.audit_findings import Finding
from ledger.audit_transfers import TransferCheck

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_UNREADABLE = 2


@dataclass
class NodeReport:
    """What was checked on one node: who it is, and its log check (None when unreadable)."""

    url: str
    member: str | None = None
    hospital_id: str | None = None
    error: str | None = None
    log: LogCheck | None = None
    transfers_owner: int = 0
    transfers_requester: int = 0

    def findings(self) -> list[Finding]:
        """The log check's findings, naming this node."""
        return [replace(f, node=self.url) for f in self.log.findings] if self.log else []

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        out: dict[str, Any] = {
            "url": self.url,
            "member": self.member,
            "hospital_id": self.hospital_id,
            "readable": self.error is None,
        }
        if self.error is not None or self.log is None:
            if self.error is not None:
                out["error"] = self.error
            return out
        log = self.log
        out.update(
            entries=log.size,
            served=log.served,
            anchors_checked=log.anchors_checked,
            anchored_size=log.anchored_size,
            anchors_after_snapshot=log.anchors_after_snapshot,
            unanchored=log.unanchored,
            transfers={"owner": self.transfers_owner, "requester": self.transfers_requester},
        )
        return out


@dataclass
class Report:
    """The whole verification."""

    nodes: list[NodeReport] = field(default_factory=list)
    transfers: TransferCheck = field(default_factory=TransferCheck)
    strict: bool = False

    @property
    def findings(self) -> list[Finding]:
        """Per node, in the order given: its log's findings as the check ordered them (entries,
        then anchors), then those of the transfers it logged."""
        cross = sorted(self.transfers.findings, key=lambda f: (f.entries, f.kind))
        out: list[Finding] = []
        for n in self.nodes:
            out += n.findings()
            out += [f for f in cross if f.node == n.url]
        return out

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
            "accesses": self.transfers.accesses.to_json(),
            "findings": [f.to_json() for f in self.findings],
            "unverifiable": [u.to_json() for u in self.transfers.unverifiable],
        }

    def to_text(self) -> str:
        """The human report."""
        lines: list[str] = []
        for n in self.nodes:
            who = n.hospital_id or "?"
            lines.append(f"node {n.url} ({who}, member {n.member or 'unknown'})")
            if n.error is not None or n.log is None:
                lines.append(f"  UNREADABLE: {n.error}")
                continue
            log = n.log
            lines.append(
                f"  {log.size} entries ({log.size - log.served} not served), "
                f"{log.anchors_checked} anchor(s) checked, anchored up to {log.anchored_size}, "
                f"{log.unanchored} unanchored"
            )
            if log.anchors_after_snapshot:
                lines.append(f"  {log.anchors_after_snapshot} anchor(s) newer than the snapshot")
            lines.append(
                f"  transfers: {n.transfers_owner} as owner, {n.transfers_requester} as requester"
            )
        a, unverifiable = self.transfers.accesses, self.transfers.unverifiable
        lines.append(
            f"cross-hospital accesses: {a.checked} checked, {a.consented} under consent, "
            f"{a.break_glass} by break-glass, {a.not_released} not released"
        )
        if unverifiable:
            note = " (findings: --strict)" if self.strict else " (not findings without --strict)"
            lines.append(f"{len(unverifiable)} transfer(s) unverifiable{note}:")
            lines += [
                f"  {u.node} entry {u.entry} transfer {u.transfer_id} ({u.side} side): "
                f"{u.other_member} {u.reason}"
                for u in unverifiable
            ]
        findings = self.findings
        lines += [str(f) for f in findings]
        unreadable = [n.url for n in self.nodes if n.error is not None]
        if unreadable:
            lines.append(f"INCOMPLETE: could not read {', '.join(unreadable)}")
        if findings:
            lines.append(f"FAILED: {len(findings)} finding(s)")
        elif not unreadable:
            lines.append("OK: no findings")
        return "\n".join(lines)
