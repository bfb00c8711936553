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

    def check(self, owner: AuditEvent, requester: AuditEvent | None) -> TransferCheck:
        sides = [transfer_side(owner, OWNER, 7)]
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
