"""Pairing the two sides of a transfer (ledger/audit_transfers.py) as the exchange logs them.

The events are built the way node/services/exchange*.py builds them: an owner that refuses
names no consent (it found none in force), while the requester's event of the same transfer
names the basis it relied on. The ledger records are read from a real (embedded) chain.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from ledger.audit_events import (
    Agent,
    AuditEvent,
    Outcome,
    ParticipantRole,
    Purpose,
    Source,
)
from ledger.audit_transfers import (
    ChainRecords,
    TransferCheck,
    check_transfers,
    owner_event,
    requester_event,
    transfer_side,
)
from tests.ledger.conftest import ChainEnv, make_env

OWNER, REQUESTER = "https://a.example", "https://b.example"
STUDY = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ChainEnv]:
    chain_env = make_env("embedded", tmp_path, None)
    chain_env.deploy([("hosp-a", Account.create()), ("hosp-b", Account.create())])
    yield chain_env
    chain_env.deployer.close()


class Transfer:
    """One transfer between two members, and the events each side could log of it."""

    def __init__(self, env: ChainEnv) -> None:
        assert env.deployment is not None
        self.env = env
        self.owner = Account.create().address.lower()
        self.requester = Account.create().address.lower()
        self.patient = Account.create().address.lower()
        self.transfer_id = uuid.uuid4().hex
        self.members = {OWNER: self.owner, REQUESTER: self.requester}

    def event(self, side: str, outcome: Outcome, consent: str | None) -> AuditEvent:
        facts: dict[str, Any] = {
            "owner": self.owner, "requester": self.requester, "patient": self.patient,
            "study_uid": STUDY, "transfer_id": self.transfer_id, "consent": consent,
            "purpose": Purpose.TREATMENT, "outcome": outcome,
        }  # fmt: skip
        if side == "owner":
            return owner_event(source=Source(node="hosp-a"), requester_host=None, **facts)
        user = Agent(who="user:dr-b", role=ParticipantRole.CLINICIAN, requestor=True)
        return requester_event(source=Source(node="hosp-b"), user=user, **facts)

    def check(self, owner: AuditEvent | None, requester: AuditEvent | None) -> TransferCheck:
        """The check of the events the owner (entry 7) and the requester (entry 9) logged."""
        sides = [transfer_side(owner, OWNER, 7)] if owner is not None else []
        if requester is not None:
            sides.append(transfer_side(requester, REQUESTER, 9))
        assert self.env.deployment is not None
        records = ChainRecords(self.env.deployer, self.env.deployment)
        return check_transfers([s for s in sides if s is not None], self.members, {}, records)


def ref() -> str:
    return "0x" + uuid.uuid4().hex * 2


def test_an_owner_refusal_pairs_with_the_requester_event_that_names_its_basis(
    env: ChainEnv,
) -> None:
    # The requester found a grant (its cache, a moment before a revocation); the owner, at the
    # head, found none and refused. Both logged it honestly: no finding, nothing released.
    t = Transfer(env)
    owner = t.event("owner", Outcome.MINOR_FAILURE, consent=None)
    requester = t.event("requester", Outcome.MINOR_FAILURE, consent=ref())

    result = t.check(owner, requester)

    assert result.findings == []
    assert (result.accesses.not_released, result.accesses.checked) == (1, 0)


def test_an_owner_refusal_the_requester_never_logged_is_unpaired(env: ChainEnv) -> None:
    t = Transfer(env)

    result = t.check(t.event("owner", Outcome.MINOR_FAILURE, consent=None), None)

    assert [(f.kind, f.node, f.transfer_id) for f in result.findings] == [
        ("transfer-unpaired", OWNER, t.transfer_id)
    ]


def test_a_side_that_released_data_must_name_its_consent(env: ChainEnv) -> None:
    t = Transfer(env)
    owner = t.event("owner", Outcome.SUCCESS, consent=None)
    requester = t.event("requester", Outcome.SUCCESS, consent=ref())

    result = t.check(owner, requester)

    kinds = {(f.kind, f.node) for f in result.findings}
    assert ("transfer-incomplete", OWNER) in kinds
    (incomplete,) = [f for f in result.findings if f.kind == "transfer-incomplete"]
    assert incomplete.detail.endswith("does not name exactly one consent")


def test_two_sides_that_name_different_consents_disagree(env: ChainEnv) -> None:
    t = Transfer(env)
    owner = t.event("owner", Outcome.MINOR_FAILURE, consent=ref())
    requester = t.event("requester", Outcome.MINOR_FAILURE, consent=ref())

    result = t.check(owner, requester)

    (mismatch,) = result.findings
    assert mismatch.kind == "transfer-mismatch"
    assert mismatch.detail.endswith("disagree on the consent")


def test_a_requester_that_never_reached_the_owner_needs_no_owner_event(env: ChainEnv) -> None:
    # The owner was down (connection refused, no answer in time): the requester logged the
    # attempt with outcome 12, and the owner, which never saw it, logged nothing. Honest.
    t = Transfer(env)

    result = t.check(None, t.event("requester", Outcome.MAJOR_FAILURE, consent=ref()))

    assert result.findings == [] and result.unverifiable == []
    assert (result.accesses.not_released, result.accesses.checked) == (1, 0)


def test_a_transfer_the_owner_began_must_be_in_its_log(env: ChainEnv) -> None:
    # The owner answered with the study and the stream broke (8): instances may have left it,
    # so its log must hold the transfer, and the access must be on chain.
    t = Transfer(env)

    result = t.check(None, t.event("requester", Outcome.SERIOUS_FAILURE, consent=ref()))

    assert {(f.kind, f.node) for f in result.findings} == {
        ("transfer-unpaired", REQUESTER),
        ("access-not-recorded", REQUESTER),
    }
    assert result.accesses.checked == 1


@pytest.mark.parametrize(
    ("owner_outcome", "requester_outcome"),
    [
        (Outcome.MINOR_FAILURE, Outcome.SUCCESS),  # refused, yet received in full
        (Outcome.SERIOUS_FAILURE, Outcome.SUCCESS),  # the stream stopped, yet all arrived
        (Outcome.SUCCESS, Outcome.MAJOR_FAILURE),  # sent in full, yet never answered
        (Outcome.SUCCESS, Outcome.MINOR_FAILURE),  # sent in full, yet refused
    ],
)
def test_sides_whose_outcomes_contradict_each_other_disagree(
    env: ChainEnv, owner_outcome: Outcome, requester_outcome: Outcome
) -> None:
    t = Transfer(env)
    consent = ref()
    owner_consent = None if owner_outcome is Outcome.MINOR_FAILURE else consent

    result = t.check(
        t.event("owner", owner_outcome, consent=owner_consent),
        t.event("requester", requester_outcome, consent=consent),
    )

    (mismatch,) = [f for f in result.findings if f.kind.startswith("transfer-")]
    assert (mismatch.kind, mismatch.node, mismatch.entries) == ("transfer-mismatch", OWNER, (7,))
    assert mismatch.detail.endswith(
        f"disagree on the outcome (the owner recorded {int(owner_outcome)}, "
        f"the requester {int(requester_outcome)})"
    )


def test_a_stream_the_requester_gave_up_on_before_the_answer_came_is_consistent(
    env: ChainEnv,
) -> None:
    # The owner began sending (8) after the requester had stopped waiting for its answer (12):
    # one transfer, told honestly from both ends. The owner began, so the access is checked.
    t = Transfer(env)
    consent = ref()

    result = t.check(
        t.event("owner", Outcome.SERIOUS_FAILURE, consent=consent),
        t.event("requester", Outcome.MAJOR_FAILURE, consent=consent),
    )

    assert [f.kind for f in result.findings] == ["access-not-recorded"]
    assert result.accesses.checked == 1
