"""RFC 6962 Merkle functions against published vectors and a naive recomputation."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle

# --- An independent, deliberately naive RFC 6962 §2.1 implementation -------------------------
# Straight from the RFC's recursive definitions: no shared helpers with ledger.merkle.


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """Largest power of two strictly less than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    if len(d) == 0:
        return _sha(b"")
    if len(d) == 1:
        return _sha(b"\x00" + d[0])
    k = _k(len(d))
    return _sha(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:]))


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = _k(n)
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def naive_proof(m: int, d: list[bytes]) -> list[bytes]:
    return naive_subproof(m, d, True)


# --- Known answers --------------------------------------------------------------------------
# The Certificate Transparency reference leaves and roots (used by every RFC 6962 implementation's
# tests). Size 2 by hand: leaf("") = SHA-256(00) = 6e34…a01d, leaf(00) = SHA-256(00 00) = 96a2…cfc7,
# root = SHA-256(01 || 6e34…a01d || 96a2…cfc7) = fac5…c125 (checked in test_two_leaf_tree_by_hand).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest()
    assert merkle.root([]).hex() == CT_ROOTS[0]


def test_two_leaf_tree_by_hand() -> None:
    left = hashlib.sha256(b"\x00").digest()
    right = hashlib.sha256(b"\x00\x00").digest()
    assert left.hex().startswith("6e340b9c") and right.hex().startswith("96a296d2")
    assert merkle.leaf_hash(b"") == left
    assert merkle.node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert merkle.root([b"", b"\x00"]).hex() == CT_ROOTS[2]


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_reference_roots(size: int) -> None:
    assert merkle.root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "expected"), CT_INCLUSION)
def test_reference_inclusion_proofs(index: int, size: int, expected: list[str]) -> None:
    proof = merkle.inclusion_proof(index, CT_LEAVES[:size])
    assert [p.hex() for p in proof] == expected
    assert merkle.verify_inclusion(
        index, size, merkle.leaf_hash(CT_LEAVES[index]), proof, bytes.fromhex(CT_ROOTS[size])
    )


def test_reference_consistency_proofs_match_the_rfc_definition() -> None:
    # RFC 6962 §2.1.3 works a 7-leaf example:
    # PROOF(3) = [c, d, g, l], PROOF(4) = [l], PROOF(6) = [i, j, k].
    for m, n in [(1, 8), (6, 8), (2, 5), (3, 7), (4, 7)]:
        proof = merkle.consistency_proof(m, CT_LEAVES[:n])
        assert proof == naive_proof(m, CT_LEAVES[:n])
        assert merkle.verify_consistency(
            m, n, bytes.fromhex(CT_ROOTS[m]), bytes.fromhex(CT_ROOTS[n]), proof
        )
    assert len(merkle.consistency_proof(3, CT_LEAVES[:7])) == 4
    assert len(merkle.consistency_proof(4, CT_LEAVES[:7])) == 1
    assert len(merkle.consistency_proof(6, CT_LEAVES[:7])) == 3


# --- Properties against the naive recomputation ---------------------------------------------

leaf_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None)
@given(leaves=st.lists(st.binary(max_size=12), max_size=70))
def test_root_matches_naive(leaves: list[bytes]) -> None:
    assert merkle.root(leaves) == naive_mth(leaves)


@settings(max_examples=150, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_inclusion_proofs_match_naive_and_verify(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    index = data.draw(st.integers(0, n - 1))
    proof = merkle.inclusion_proof(index, leaves)
    assert proof == naive_path(index, leaves)
    root = naive_mth(leaves)
    lh = merkle.leaf_hash(leaves[index])
    assert merkle.verify_inclusion(index, n, lh, proof, root)
    # Anything else must fail: another leaf, index, size, a flipped proof byte or a short proof.
    assert not merkle.verify_inclusion(
        index, n, merkle.leaf_hash(leaves[index] + b"x"), proof, root
    )
    if n > 1:
        other = data.draw(st.integers(0, n - 1).filter(lambda i: i != index))
        if leaves[other] != leaves[index]:
            assert not merkle.verify_inclusion(other, n, lh, proof, root)
        # (A wrong tree size can still verify when the path has the same shape, e.g. leaf 0 of
        # 3 and of 4 — which is why callers take the size from the anchor, never the prover.)
        spot = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[spot] = bytes([bad[spot][0] ^ 1]) + bad[spot][1:]
        assert not merkle.verify_inclusion(index, n, lh, bad, root)
        assert not merkle.verify_inclusion(index, n, lh, proof[:-1], root)
    assert not merkle.verify_inclusion(index, n, lh, [*proof, root], root)
    assert not merkle.verify_inclusion(n, n, lh, proof, root)


@settings(max_examples=150, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_consistency_proofs_match_naive_and_verify(
    leaves: list[bytes], data: st.DataObject
) -> None:
    n = len(leaves)
    m = data.draw(st.integers(0, n))
    proof = merkle.consistency_proof(m, leaves)
    if 0 < m < n:
        assert proof == naive_proof(m, leaves)
    else:
        assert proof == []
    old_root, new_root = naive_mth(leaves[:m]), naive_mth(leaves)
    assert merkle.verify_consistency(m, n, old_root, new_root, proof)
    # A rewritten history must fail: change one of the first m leaves.
    if m > 0:
        spot = data.draw(st.integers(0, m - 1))
        forged = list(leaves)
        forged[spot] = forged[spot] + b"forged"
        forged_old = naive_mth(forged[:m])
        assert not merkle.verify_consistency(m, n, forged_old, new_root, proof)
    if 0 < m < n:
        bad = list(proof)
        spot = data.draw(st.integers(0, len(bad) - 1))
        bad[spot] = bytes([bad[spot][0] ^ 0x80]) + bad[spot][1:]
        assert not merkle.verify_consistency(m, n, old_root, new_root, bad)
        assert not merkle.verify_consistency(n, m, new_root, old_root, proof)


def test_ranges_decompose_into_aligned_perfect_subtrees() -> None:
    assert merkle.perfect_subtrees(0, 7) == [(2, 0), (1, 2), (0, 6)]
    assert merkle.perfect_subtrees(8, 13) == [(2, 2), (0, 12)]
    with pytest.raises(merkle.MerkleError):
        merkle.perfect_subtrees(3, 7)  # not a subtree RFC 6962's split produces


def test_out_of_range_requests_are_refused() -> None:
    with pytest.raises(merkle.MerkleError, match="not in a tree of size 3"):
        merkle.inclusion_proof(3, [b"a", b"b", b"c"])
    with pytest.raises(merkle.MerkleError, match="from size 4 to size 3"):
        merkle.consistency_proof(4, [b"a", b"b", b"c"])
    assert not merkle.verify_inclusion(0, 0, merkle.leaf_hash(b""), [], merkle.EMPTY_ROOT)
    assert not merkle.verify_consistency(0, 3, b"\x00" * 32, merkle.root([b"a"] * 3), [])
