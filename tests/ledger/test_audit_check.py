"""The served-log check names the entries an attacker changed, against real RFC 6962 trees.

Each case builds the tree a node recorded at append time, tampers with what it serves the way
an attacker with database access would (rows only, or rows and the stored tree), and checks
what the auditor is told.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger import merkle
from ledger.audit_check import ChainAnchor, LogCheck, check_log
from ledger.audit_wire import ServedAnchor, ServedEntry

N = 16
ORIGINAL = [f'{{"event":{i}}}'.encode() for i in range(N)]
TX = "0x" + "ab" * 32


def anchor_of(leaves: Sequence[bytes], size: int, block: int) -> ChainAnchor:
    return ChainAnchor(size, merkle.root(leaves[:size]), block, f"0x{block:064x}")


def served(
    bodies: dict[int, bytes], tree: Sequence[bytes], cited: ServedAnchor | None = None
) -> dict[int, ServedEntry]:
    """What a node serves: these bodies, with audit paths from the stored `tree`."""
    root = merkle.root(tree)
    return {
        i: ServedEntry(i, body, len(tree), root, tuple(merkle.inclusion_proof(i, tree)), cited)
        for i, body in bodies.items()
    }


def kinds(check: LogCheck) -> list[tuple[str, tuple[int, ...]]]:
    return [(f.kind, f.entries) for f in check.findings]


ANCHORS = [anchor_of(ORIGINAL, 6, 10), anchor_of(ORIGINAL, 12, 20)]


def test_a_clean_log_has_no_findings_and_counts_what_is_unanchored() -> None:
    check = check_log(served(dict(enumerate(ORIGINAL)), ORIGINAL), N, ANCHORS)
    assert check.findings == []
    assert (check.served, check.anchors_checked, check.anchored_size) == (N, 2, 12)
    assert check.unanchored == 4


def test_entries_past_the_last_anchor_are_a_finding_only_when_anchoring_is_required() -> None:
    entries = served(dict(enumerate(ORIGINAL)), ORIGINAL)
    assert check_log(entries, N, ANCHORS).findings == []

    check = check_log(entries, N, ANCHORS, require_anchored=True)
    (finding,) = check.findings
    assert (finding.kind, finding.span) == ("unanchored", (12, N - 1))
    assert finding.detail == "4 entries are not anchored on chain yet"


def test_an_edited_row_is_named_and_the_anchors_say_why_they_fail() -> None:
    bodies = dict(enumerate(ORIGINAL))
    bodies[3] = b'{"event":3,"outcome":4}'
    check = check_log(served(bodies, ORIGINAL), N, ANCHORS)
    assert kinds(check) == [("edited", (3,)), ("anchor-mismatch", (3,)), ("anchor-mismatch", (3,))]


def test_a_swap_is_reported_as_one_reordered_pair() -> None:
    bodies = dict(enumerate(ORIGINAL))
    bodies[2], bodies[9] = ORIGINAL[9], ORIGINAL[2]
    check = check_log(served(bodies, ORIGINAL), N, ANCHORS)
    assert kinds(check)[0] == ("reordered", (2, 9))
    assert check.findings[0].detail == "entries 2 and 9 are swapped"
    assert {f.kind for f in check.findings[1:]} == {"anchor-mismatch"}


def test_a_deleted_row_is_missing() -> None:
    bodies = dict(enumerate(ORIGINAL))
    del bodies[4]
    check = check_log(served(bodies, ORIGINAL), N, ANCHORS)
    assert kinds(check) == [("missing", (4,)), ("anchor-mismatch", (4,)), ("anchor-mismatch", (4,))]


def test_a_deletion_that_renumbers_the_rest_is_one_shifted_run() -> None:
    shifted = ORIGINAL[:4] + ORIGINAL[5:]
    check = check_log(served(dict(enumerate(shifted)), ORIGINAL), N, ANCHORS)
    run, gone = check.findings[0], check.findings[1]
    assert (run.kind, run.span) == ("reordered", (4, 14))
    assert run.detail == "entries 4..14 hold the events recorded at 5..15"
    assert (gone.kind, gone.entries) == ("missing", (15,))


def test_a_row_overwritten_with_a_copy_of_another_is_edited() -> None:
    bodies = dict(enumerate(ORIGINAL))
    bodies[6] = ORIGINAL[2]
    check = check_log(served(bodies, ORIGINAL), N, ANCHORS)
    assert check.findings[0].kind == "edited" and check.findings[0].entries == (6,)
    assert "copy of entry 2" in check.findings[0].detail


def test_a_rebuilt_tree_is_still_caught_by_the_anchors_within_their_range() -> None:
    # The attacker edits entry 7 and rewrites the stored tree: every served proof verifies.
    tampered = list(ORIGINAL)
    tampered[7] = b'{"event":7,"outcome":4}'
    check = check_log(served(dict(enumerate(tampered)), tampered), N, ANCHORS)
    assert kinds(check) == [("anchor-mismatch", ())]
    assert check.findings[0].span == (6, 11)
    assert "rebuilt" in check.findings[0].detail


def test_entries_dropped_from_the_end_below_an_anchor_are_missing() -> None:
    bodies = {i: b for i, b in enumerate(ORIGINAL[:10])}
    check = check_log(served(bodies, ORIGINAL[:10]), 12, ANCHORS)
    assert check.findings[0].kind == "missing" and check.findings[0].span == (10, 11)


def test_an_anchor_the_chain_does_not_hold_is_reported() -> None:
    made_up = ServedAnchor(8, merkle.root(ORIGINAL[:8]), TX, 15)
    check = check_log(served(dict(enumerate(ORIGINAL)), ORIGINAL, made_up), N, ANCHORS)
    assert kinds(check) == [("anchor-unknown", (0,))]


def test_a_cited_anchor_is_the_chain_s_only_in_the_block_the_chain_mined_it() -> None:
    real = ANCHORS[1]
    as_mined = ServedAnchor(real.size, real.root, real.tx_hash, real.block_number)
    check = check_log(served(dict(enumerate(ORIGINAL)), ORIGINAL, as_mined), N, ANCHORS)
    assert check.findings == []

    elsewhere = ServedAnchor(real.size, real.root, real.tx_hash, real.block_number + 1)
    check = check_log(served(dict(enumerate(ORIGINAL)), ORIGINAL, elsewhere), N, ANCHORS)
    assert kinds(check) == [("anchor-unknown", (0,))]
    assert f"(block {real.block_number + 1})" in check.findings[0].detail


def test_anchors_that_do_not_extend_each_other_are_inconsistent() -> None:
    forged_first = ChainAnchor(4, merkle.root([b"x"] * 4), 5, TX)
    check = check_log(served(dict(enumerate(ORIGINAL)), ORIGINAL), N, [forged_first, ANCHORS[1]])
    assert [f.kind for f in check.findings] == ["anchor-mismatch", "inconsistent-anchors"]
    assert check.findings[0].span == (0, 3)
