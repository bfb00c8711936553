"""Checking one node's served audit log against its anchors on chain, naming the failing entries.

Inputs: the entries a node served (``ServedEntry``: leaf bytes, the node's tree head and audit
path for each, and the anchor it cites) and the (size, root, block, tx) anchors the chain holds
for the node's member account. Nothing the node says is trusted for the verdict; its proofs are
used only to say *where* a change is:

1. Every served leaf is re-hashed. Its path must lead to the node's own tree head. The node's
   stored tree was written when the event was appended, so a leaf whose path fails was changed
   afterwards: it is **edited**, or, when its bytes are what the node's proofs say another index
   holds, **reordered** (two entries that hold each other's events are a swap; a run of entries
   all holding the events of a shifted range is one finding). An index the node does not serve
   is **missing**.
2. The tree is rebuilt from the served leaves alone (a missing leaf counts as all zeros), and
   every anchor of the member is compared with the root of its first ``size`` leaves. An anchor
   that does not match is an **anchor-mismatch** naming the range between the last anchor that
   still matched and this one, with the entries step 1 found in it; when step 1 found none, the
   node rewrote its stored tree to agree with the changed entries, and the range is all that can
   be said. Successive anchors must extend each other (RFC 6962 consistency over the rebuilt
   tree): a matching anchor that does not extend the previous one is **inconsistent-anchors**.
3. Every anchor the node cites in its proofs — size, root, transaction and block — must be one
   of the chain's (**anchor-unknown** otherwise): a node cannot make up anchors.

Entries past the last anchor are counted as unanchored; they are a finding (**unanchored**)
only when the caller requires every entry to be anchored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ledger import merkle
from ledger.audit_findings import Finding
from ledger.audit_wire import ServedEntry

# Trying a changed leaf at every other changed index costs O(k²) proofs: only for small k.
_BRUTE_FORCE_LIMIT = 256


@dataclass(frozen=True)
class ChainAnchor:
    """One Anchored event of the node's member account."""

    size: int
    root: bytes
    block_number: int
    tx_hash: str


@dataclass
class LogCheck:
    """The outcome of checking one node's log."""

    size: int
    served: int
    anchors_checked: int = 0
    anchored_size: int = 0
    anchors_after_snapshot: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def unanchored(self) -> int:
        """Entries in the snapshot that no anchor covers yet."""
        return max(0, self.size - self.anchored_size)


def check_log(
    entries: Mapping[int, ServedEntry],
    size: int,
    anchors: Sequence[ChainAnchor],
    *,
    require_anchored: bool = False,
) -> LogCheck:
    """Check the first ``size`` served entries against the chain's anchors (oldest first);
    with ``require_anchored``, entries no anchor covers are a finding too."""
    result = LogCheck(size=size, served=sum(1 for i in entries if i < size))
    leaves = bytearray()
    changed: list[int] = []  # served, but their own proof fails
    missing: list[int] = []
    for index in range(size):
        entry = entries.get(index)
        if entry is None:
            missing.append(index)
            leaves += bytes(merkle.HASH_SIZE)
            continue
        leaf_hash = entry.leaf_hash
        leaves += leaf_hash
        if not entry.proves(leaf_hash):
            changed.append(index)
    entry_findings = _entry_findings(entries, changed, missing)
    problems = sorted({i for f in entry_findings for i in f.indices()})
    result.findings += entry_findings
    tree = merkle.LeafTree(leaves)
    in_snapshot = [a for a in anchors if a.size <= size]
    result.anchors_after_snapshot = len(anchors) - len(in_snapshot)
    result.anchors_checked = len(in_snapshot)
    result.anchored_size = max((a.size for a in in_snapshot), default=0)
    result.findings += _anchor_findings(in_snapshot, tree, problems)
    result.findings += _cited_anchor_findings(entries, anchors)
    if require_anchored and result.unanchored:
        result.findings.append(
            Finding(
                "unanchored",
                (),
                f"{result.unanchored} entries are not anchored on chain yet",
                span=(result.anchored_size, size - 1),
            )
        )
    return result


def _claimed_leaves(entries: Mapping[int, ServedEntry]) -> dict[int, bytes]:
    """Leaf hashes the node's own proofs state for indices: each leaf's sibling in its path.

    The lowest step of an audit path is the sibling leaf's hash whenever that sibling is a leaf
    (RFC 6962 §2.1.1); the node took it from its stored tree, written at append time.
    """
    claimed: dict[int, bytes] = {}
    for index, entry in entries.items():
        sibling = index ^ 1
        if (
            entry.path
            and max(index, sibling) < entry.tree_size
            and merkle.inclusion_ranges(index, entry.tree_size)[0] == (sibling, sibling + 1)
        ):
            claimed.setdefault(sibling, entry.path[0])
    return claimed


def _entry_findings(
    entries: Mapping[int, ServedEntry], changed: list[int], missing: list[int]
) -> list[Finding]:
    claimed = _claimed_leaves(entries)
    positions: dict[bytes, list[int]] = {}
    for index, leaf_hash in claimed.items():
        positions.setdefault(leaf_hash, []).append(index)
    changed_set = set(changed)
    origin: dict[int, int] = {}  # changed index -> index where its bytes were recorded
    for index in changed:
        leaf_hash = entries[index].leaf_hash
        found = [j for j in positions.get(leaf_hash, []) if j != index]
        if found:
            origin[index] = found[0]
        elif len(changed) <= _BRUTE_FORCE_LIMIT:
            # The sibling rule does not cover every index (an unpaired last leaf): try the
            # other changed entries' own paths.
            for j in changed:
                if j != index and entries[j].proves(leaf_hash):
                    origin[index] = j
                    break
    findings: list[Finding] = []
    done: set[int] = set()
    for index in changed:
        if index in done:
            continue
        source = origin.get(index)
        if source is None:
            findings.append(
                Finding(
                    "edited",
                    (index,),
                    "its content differs from the event the node recorded at this index "
                    "(the node's own audit path for it fails)",
                )
            )
            done.add(index)
            continue
        if source not in changed_set and source in entries:
            findings.append(
                Finding(
                    "edited",
                    (index,),
                    f"it was overwritten with a copy of entry {source}, which is still in place",
                )
            )
            done.add(index)
            continue
        if origin.get(source) == index and source not in done:
            first, second = sorted((index, source))
            findings.append(
                Finding("reordered", (first, second), f"entries {first} and {second} are swapped")
            )
            done.update((index, source))
            continue
        # A run of entries holding the events of a shifted range (one dropped, the rest moved).
        last = index
        while (
            last + 1 in origin
            and last + 1 not in done
            and origin[last + 1] == origin[last] + 1
            and origin.get(origin[last + 1]) != last + 1
        ):
            last += 1
        done.update(range(index, last + 1))
        if last == index:
            findings.append(
                Finding("reordered", (index,), f"it holds the event recorded at {source}")
            )
        else:
            findings.append(
                Finding(
                    "reordered",
                    (index, last),
                    f"entries {index}..{last} hold the events recorded at {source}..{origin[last]}",
                    span=(index, last),
                )
            )
    for first, last in merkle.index_runs(missing):
        if first == last:
            findings.append(
                Finding(
                    "missing",
                    (first,),
                    "the node does not serve this entry (deleted from its log, or hidden "
                    "from its search index)",
                )
            )
        else:
            findings.append(
                Finding(
                    "missing",
                    (first, last),
                    f"the node does not serve entries {first}..{last}",
                    span=(first, last),
                )
            )
    return sorted(findings, key=lambda f: (f.entries[0], f.kind))


def _anchor_findings(
    anchors: Sequence[ChainAnchor], tree: merkle.LeafTree, problems: list[int]
) -> list[Finding]:
    findings: list[Finding] = []
    good = 0  # the largest anchored size the served entries still match
    previous: ChainAnchor | None = None
    for anchor in anchors:
        matches = tree.root(anchor.size) == anchor.root
        if matches:
            good = max(good, anchor.size)
        else:
            low = min(good, anchor.size)
            named = tuple(i for i in problems if low <= i < anchor.size)
            if named:
                noun = "entry" if len(named) == 1 else "entries"
                detail = (
                    f"the first {anchor.size} entries do not hash to the root anchored in block "
                    f"{anchor.block_number}: because of {noun} {_list(named)}"
                )
            else:
                detail = (
                    f"the first {anchor.size} entries do not hash to the root anchored in block "
                    f"{anchor.block_number}, yet the node's own proofs agree with what it serves: "
                    f"its stored tree was rebuilt after a change in entries "
                    f"{low}..{anchor.size - 1}"
                )
            findings.append(
                Finding(
                    "anchor-mismatch", named, detail, span=None if named else (low, anchor.size - 1)
                )
            )
        if previous is not None and matches:
            proof = tree.consistency_proof(previous.size, anchor.size)
            if not merkle.verify_consistency(
                previous.size, anchor.size, previous.root, anchor.root, proof
            ):
                findings.append(
                    Finding(
                        "inconsistent-anchors",
                        (),
                        f"the anchor of size {anchor.size} (block {anchor.block_number}) does "
                        f"not extend the anchor of size {previous.size} (block "
                        f"{previous.block_number})",
                        span=(0, previous.size - 1),
                    )
                )
        previous = anchor
    return findings


def _cited_anchor_findings(
    entries: Mapping[int, ServedEntry], anchors: Sequence[ChainAnchor]
) -> list[Finding]:
    on_chain = {(a.size, a.root, a.tx_hash.lower(), a.block_number) for a in anchors}
    cited: dict[tuple[int, bytes, str, int], list[int]] = {}
    for index, entry in entries.items():
        if entry.anchor is not None:
            a = entry.anchor
            cited.setdefault((a.size, a.root, a.tx_hash, a.block_number), []).append(index)
    findings: list[Finding] = []
    for key, indices in sorted(cited.items()):
        if key not in on_chain:
            size, _root, tx_hash, block = key
            findings.append(
                Finding(
                    "anchor-unknown",
                    (min(indices),),
                    f"the node's proofs cite an anchor of size {size} in transaction {tx_hash} "
                    f"(block {block}) that the chain does not hold for its member account",
                )
            )
    return findings


def _list(indices: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(map(str, indices[:limit]))
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")
