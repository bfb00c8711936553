"""RFC 6962 Merkle tree hashing, inclusion and consistency proofs (pure functions).

Definitions follow RFC 6962 §2.1 (the same tree as RFC 9162 §2.1): SHA-256, leaves hashed as
``SHA-256(0x00 || data)``, interior nodes as ``SHA-256(0x01 || left || right)``, and a tree of
``n`` leaves split at ``k``, the largest power of two smaller than ``n``. Verification uses the
iterative algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2, which need only the proof, not the tree.

Besides the functions over in-memory leaves, this module exposes the *shape* of proofs as leaf
ranges (``inclusion_ranges``, ``consistency_ranges``) and the decomposition of such ranges into
perfect, aligned subtrees (``perfect_subtrees``). A store that keeps the hash of every complete
subtree (``AuditLog``) answers any root or proof with O(log n) stored-node reads from them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


class MerkleError(ValueError):
    """A proof or tree request outside what the tree can answer (bad index or size)."""


def leaf_hash(data: bytes) -> bytes:
    """Hash one leaf's bytes: SHA-256(0x00 || data) (RFC 6962 §2.1)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes | bytearray, right: bytes | bytearray) -> bytes:
    """Hash two child hashes into their parent: SHA-256(0x01 || left || right) (RFC 6962 §2.1)."""
    return hashlib.sha256(b"".join((NODE_PREFIX, left, right))).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``): RFC 6962's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Decompose the leaf range [start, end) into perfect subtrees, left to right.

    Each subtree is ``(level, index)``: it covers leaves ``[index << level, (index + 1) << level)``.
    The range must be one that RFC 6962's recursive split produces (``start`` a multiple of a
    power of two at least ``end - start``); then its hash is the right fold of these subtrees'
    hashes (``fold_subtrees``), because the split always peels off the largest power of two.
    """
    if not 0 <= start < end:
        raise MerkleError(f"empty or negative leaf range [{start}, {end})")
    size = end - start
    width = 1 << (size.bit_length() - 1)
    if start % width:
        raise MerkleError(f"leaf range [{start}, {end}) is not a subtree of an RFC 6962 tree")
    out: list[tuple[int, int]] = []
    position = start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, position >> level))
            position += 1 << level
    return out


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Combine perfect-subtree hashes (left to right) into the hash of their range."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form PATH(index, D[size]), leaf-side first (RFC 6962 §2.1.1)."""
    if not 0 <= index < size:
        raise MerkleError(f"leaf index {index} is not in a tree of size {size}")
    out: list[tuple[int, int]] = []
    start, end = 0, size
    # Walk down from the root; siblings are collected top-down and returned bottom-up.
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start = start + k
    out.reverse()
    return out


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form PROOF(old_size, D[new_size]) (RFC 6962 §2.1.2)."""
    if not 0 <= old_size <= new_size:
        raise MerkleError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        # RFC 6962 defines the proof for 0 < m < n; the empty tree and an unchanged tree need
        # nothing beyond the two roots.
        return []
    out: list[tuple[int, int]] = []
    start, end, m = 0, new_size, old_size
    complete = True  # SUBPROOF's "b": the old tree's root is the current subtree's root
    while m != end:
        k = split_point(end - start)
        if m - start <= k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start = start + k
            complete = False
    if not complete:
        out.append((start, end))
    out.reverse()
    return out


def _range_hash(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    if end - start == 1:
        return leaf_hashes[start]
    k = split_point(end - start)
    return node_hash(
        _range_hash(leaf_hashes, start, start + k), _range_hash(leaf_hashes, start + k, end)
    )


def root_from_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves (RFC 6962 §2.1); the empty tree's root is SHA-256("")."""
    stack: list[tuple[int, bytes]] = []  # (level, hash) of the perfect subtrees seen so far
    for h in leaf_hashes:
        level, acc = 0, h
        while stack and stack[-1][0] == level:
            acc = node_hash(stack.pop()[1], acc)
            level += 1
        stack.append((level, acc))
    return fold_subtrees([h for _, h in stack])


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of the leaves' data (RFC 6962 §2.1)."""
    return root_from_hashes([leaf_hash(d) for d in leaves])


def _proof_from_ranges(
    ranges: Sequence[tuple[int, int]], subtree: Callable[[int, int], bytes]
) -> list[bytes]:
    return [subtree(s, e) for s, e in ranges]


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The audit path for leaf ``index`` in the tree of ``leaves`` (RFC 6962 §2.1.1)."""
    hashes = [leaf_hash(d) for d in leaves]
    ranges = inclusion_ranges(index, len(hashes))
    return _proof_from_ranges(ranges, lambda s, e: _range_hash(hashes, s, e))


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Proof that the first ``old_size`` leaves' tree is a prefix of the whole (§2.1.2)."""
    hashes = [leaf_hash(d) for d in leaves]
    ranges = consistency_ranges(old_size, len(hashes))
    return _proof_from_ranges(ranges, lambda s, e: _range_hash(hashes, s, e))


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check an audit path against a root (RFC 9162 §2.1.3.2)."""
    # The parameter names follow the RFC (and shadow the functions of the same name here).
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check that ``old_root``'s tree is a prefix of ``new_root``'s (RFC 9162 §2.1.4.2)."""
    if not 0 <= old_size <= new_size or any(len(p) != HASH_SIZE for p in proof):
        return False
    if old_size == 0:
        # Every tree extends the empty tree; there is nothing to prove beyond its fixed root.
        return not proof and old_root == EMPTY_ROOT
    if old_size == new_size:
        return not proof and old_root == new_root
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a perfect subtree of the new one: its root is the path's first node.
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


class LeafTree:
    """Every complete subtree's hash over a list of leaf hashes, level by level.

    Built once in O(n) from the concatenated leaf hashes; then any root, subtree or consistency
    proof over a prefix costs O(log n) lookups (``perfect_subtrees``). Verifiers use it to check
    many anchored (size, root) pairs against one recomputed log.
    """

    def __init__(self, leaf_hashes: bytes | bytearray) -> None:
        if len(leaf_hashes) % HASH_SIZE:
            raise MerkleError("leaf hashes must be concatenated 32-byte SHA-256 digests")
        levels = [bytearray(leaf_hashes)]
        while len(levels[-1]) >= 2 * HASH_SIZE:
            below = levels[-1]
            above = bytearray()
            for i in range(0, len(below) // (2 * HASH_SIZE) * 2 * HASH_SIZE, 2 * HASH_SIZE):
                above += node_hash(
                    below[i : i + HASH_SIZE], below[i + HASH_SIZE : i + 2 * HASH_SIZE]
                )
            levels.append(above)
        self.levels = levels

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self.levels[0]) // HASH_SIZE

    def subtree(self, level: int, index: int) -> bytes:
        """The hash of the perfect subtree ``(level, index)``."""
        start = index * HASH_SIZE
        return bytes(self.levels[level][start : start + HASH_SIZE])

    def range_hash(self, start: int, end: int) -> bytes:
        """The hash of the leaf range [start, end) (a range RFC 6962's split produces)."""
        return fold_subtrees([self.subtree(lv, ix) for lv, ix in perfect_subtrees(start, end)])

    def root(self, size: int) -> bytes:
        """The root of the first ``size`` leaves."""
        if not 0 <= size <= self.size:
            raise MerkleError(f"no tree of size {size} over {self.size} leaves")
        return EMPTY_ROOT if size == 0 else self.range_hash(0, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[new_size]) over these leaves (RFC 6962 §2.1.2)."""
        return [self.range_hash(s, e) for s, e in consistency_ranges(old_size, new_size)]


def index_runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs in sorted leaf indices, as (first, last) pairs: how a report names
    entries (``3-7`` rather than five findings)."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs
