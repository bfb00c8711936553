"""What the cross-node auditor can find, and one finding as the checks return it.

The log check (ledger/audit_check.py), the transfer and consent check
(ledger/audit_transfers.py) and ``--require-anchored`` (ledger/audit_network.py) all return
``Finding``s; the report (ledger/audit_report.py) prints them as they are. No personal data: a
finding names a node, leaf indices, a transfer id and chain blocks, never a patient, study or
user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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
    """One thing wrong, naming its entries (and node and transfer) where there are some.

    A log check does not know the node's URL: the verifier sets ``node`` on its findings.
    """

    kind: FindingKind
    entries: tuple[int, ...]
    detail: str
    span: tuple[int, int] | None = None  # first..last index, for a range too long to list
    node: str | None = None
    transfer_id: str | None = None

    def indices(self) -> range | tuple[int, ...]:
        """Every index the finding names (the whole span, when it has one)."""
        if self.span is not None:
            return range(self.span[0], self.span[1] + 1)
        return self.entries

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
        return f"{self.kind}: {self.node or 'log'}{where}{transfer}: {self.detail}"
