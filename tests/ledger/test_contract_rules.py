"""Every contract rule, on the embedded chain and on a real anvil process."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from eth_account.signers.local import LocalAccount

from ledger.anchor import AuditAnchorClient
from ledger.chain import Chain
from ledger.consent import (
    ALL_MEMBERS,
    ALL_STUDIES,
    ConsentClient,
    Purpose,
    consent_ref,
    study_hash,
)
from ledger.consortium import ConsortiumClient, MemberStatus, ProposalKind, ProposalStatus
from ledger.deploy import load_artifact
from ledger.errors import (
    ConflictError,
    ExpiredError,
    InvalidRequestError,
    InvalidSignatureError,
    NotFoundError,
    PermissionDeniedError,
)
from tests.ledger.conftest import ChainEnv

STUDY = study_hash("1.2.840.113619.2.55.3.1")
OTHER_STUDY = study_hash("1.2.840.113619.2.55.3.2")


@dataclass
class Hospital:
    account: LocalAccount
    chain: Chain
    registry: ConsortiumClient
    consent: ConsentClient
    anchors: AuditAnchorClient


def hospitals(env: ChainEnv, n: int = 3, voting_period: int = 3600) -> list[Hospital]:
    accounts = [env.new_account() for _ in range(n)]
    env.deploy([(f"hosp-{i}", a) for i, a in enumerate(accounts)], voting_period)
    assert env.deployment is not None
    out = []
    for a in accounts:
        chain = env.chain_for(a)
        out.append(
            Hospital(
                a,
                chain,
                ConsortiumClient(chain, env.deployment),
                ConsentClient(chain, env.deployment),
                AuditAnchorClient(chain, env.deployment),
            )
        )
    return out


def remove_member(proposers: list[Hospital], target: Hospital) -> None:
    pid = proposers[0].registry.propose(ProposalKind.REMOVE, target.account.address)
    for h in proposers[1:]:
        if proposers[0].registry.proposal(pid).status is ProposalStatus.OPEN:
            h.registry.vote(pid, True)
    assert not proposers[0].registry.is_active(target.account.address)


# -- consortium registry ------------------------------------------------------------------------


def test_founders_are_active_and_outsiders_cannot_propose(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    members = a.registry.members()
    assert [m.hospital_id for m in members] == ["hosp-0", "hosp-1", "hosp-2"]
    assert all(m.status is MemberStatus.ACTIVE for m in members)
    assert a.registry.resolve("hosp-1") == b.account.address

    outsider = env.new_account()
    outsider_registry = ConsortiumClient(env.chain_for(outsider), env.deployment)  # type: ignore[arg-type]
    with pytest.raises(PermissionDeniedError) as err:
        outsider_registry.propose(ProposalKind.ADD, outsider.address, "hosp-x", "https://x")
    assert err.value.error_name == "ConsortiumRegistryNotMember"
    assert err.value.http_status == 403


def test_a_member_joins_only_after_a_majority_votes_yes(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    newcomer = env.new_account()
    pid = a.registry.propose(ProposalKind.ADD, newcomer.address, "hosp-new", "https://new")
    # One yes of three members is not a majority.
    assert a.registry.proposal(pid).status is ProposalStatus.OPEN
    assert not a.registry.is_active(newcomer.address)
    after = b.registry.vote(pid, True)
    assert after.status is ProposalStatus.EXECUTED and after.yes_votes == 2
    assert a.registry.member(newcomer.address).hospital_id == "hosp-new"
    assert a.registry.is_active(newcomer.address)


def test_votes_against_reject_and_closed_or_repeated_votes_fail(env: ChainEnv) -> None:
    a, b, c = hospitals(env)
    newcomer = env.new_account()
    pid = a.registry.propose(ProposalKind.ADD, newcomer.address, "hosp-new", "https://new")
    with pytest.raises(ConflictError) as err:
        a.registry.vote(pid, True)
    assert err.value.error_name == "ConsortiumRegistryAlreadyVoted"
    b.registry.vote(pid, False)
    assert c.registry.vote(pid, False).status is ProposalStatus.REJECTED
    assert not a.registry.is_active(newcomer.address)
    with pytest.raises(ConflictError):
        c.registry.vote(pid, True)
    with pytest.raises(NotFoundError):
        c.registry.vote(999, True)


def test_update_by_vote_changes_endpoint(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    pid = a.registry.propose(
        ProposalKind.UPDATE, b.account.address, "hosp-1", "https://moved", b"\x07" * 32
    )
    b.registry.vote(pid, True)
    member = a.registry.member(b.account.address)
    assert member.endpoint == "https://moved" and member.tls_fingerprint == "07" * 32


def test_proposal_expires_after_voting_period(env: ChainEnv) -> None:
    a, b, _c = hospitals(env, voting_period=600)
    newcomer = env.new_account()
    pid = a.registry.propose(ProposalKind.ADD, newcomer.address, "hosp-new", "https://new")
    env.advance(601)
    with pytest.raises(ExpiredError):
        b.registry.vote(pid, True)


def test_duplicate_member_and_hospital_id_are_refused(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    with pytest.raises(ConflictError):
        a.registry.propose(ProposalKind.ADD, b.account.address, "hosp-9", "https://b")
    with pytest.raises(ConflictError) as err:
        a.registry.propose(ProposalKind.ADD, env.new_account().address, "hosp-1", "https://dup")
    assert err.value.error_name == "ConsortiumRegistryHospitalIdTaken"
    with pytest.raises(NotFoundError) as missing:
        a.registry.propose(ProposalKind.REMOVE, env.new_account().address)
    assert missing.value.error_name == "ConsortiumRegistryUnknownMember"


def test_removed_member_can_no_longer_write_anywhere(env: ChainEnv) -> None:
    a, b, c = hospitals(env)
    patient = env.new_account(fund=False)
    remove_member([a, b], c)
    assert a.registry.member(c.account.address).status is MemberStatus.REMOVED

    with pytest.raises(PermissionDeniedError):
        c.registry.propose(ProposalKind.ADD, env.new_account().address, "hosp-z", "https://z")
    with pytest.raises(PermissionDeniedError):
        c.registry.vote(1, True)
    with pytest.raises(PermissionDeniedError):
        c.anchors.anchor(1, b"\x01" * 32)
    with pytest.raises(PermissionDeniedError):
        c.anchors.record_access(a.account.address, patient.address, STUDY, Purpose.TREATMENT)
    with pytest.raises(PermissionDeniedError):
        c.consent.record_break_glass(patient.address, STUDY, 1)
    signed = c.consent.sign(
        patient, c.consent.request(patient.address, a.account.address, Purpose.TREATMENT)
    )
    with pytest.raises(PermissionDeniedError) as err:
        c.consent.relay(signed)
    assert err.value.error_name == "ConsentRegistryNotMember"


def test_last_member_cannot_be_removed(env: ChainEnv) -> None:
    (a,) = hospitals(env, n=1)
    with pytest.raises(ConflictError) as err:
        a.registry.propose(ProposalKind.REMOVE, a.account.address)
    assert err.value.error_name == "ConsortiumRegistryLastMember"


# -- consent registry ---------------------------------------------------------------------------


def test_patient_grants_and_revokes_from_own_account(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account()
    own = ConsentClient(env.chain_for(patient), env.deployment)  # type: ignore[arg-type]
    own.grant_direct(b.account.address, Purpose.TREATMENT, STUDY)
    assert a.consent.is_permitted(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
    own.revoke_direct(b.account.address, Purpose.TREATMENT, STUDY)
    assert not a.consent.is_permitted(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
    with pytest.raises(NotFoundError):
        own.revoke_direct(b.account.address, Purpose.TREATMENT, STUDY)


def test_scope_grantee_and_purpose_are_each_enforced(env: ChainEnv) -> None:
    a, b, c = hospitals(env)
    patient = env.new_account(fund=False)
    a.consent.relay(
        a.consent.sign(
            patient, a.consent.request(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
        )
    )
    check = a.consent.is_permitted
    assert check(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
    assert not check(patient.address, b.account.address, Purpose.TREATMENT, OTHER_STUDY)
    assert not check(patient.address, c.account.address, Purpose.TREATMENT, STUDY)
    assert not check(patient.address, b.account.address, Purpose.RESEARCH, STUDY)

    # Every member, every study, for AI training.
    a.consent.relay(
        a.consent.sign(
            patient,
            a.consent.request(patient.address, ALL_MEMBERS, Purpose.AI_TRAINING, ALL_STUDIES),
        )
    )
    for h in (a, b, c):
        assert check(patient.address, h.account.address, Purpose.AI_TRAINING, OTHER_STUDY)
    # A removed member loses what "all members" granted.
    remove_member([a, b], c)
    assert not check(patient.address, c.account.address, Purpose.AI_TRAINING, OTHER_STUDY)


def test_grant_window_valid_from_and_expiry(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    now = a.chain.block_timestamp()
    a.consent.relay(
        a.consent.sign(
            patient,
            a.consent.request(
                patient.address,
                b.account.address,
                Purpose.RESEARCH,
                valid_from=now + 100,
                expires_at=now + 1000,
            ),
        )
    )
    assert not a.consent.is_permitted(patient.address, b.account.address, Purpose.RESEARCH, STUDY)
    env.advance(200)
    assert a.consent.is_permitted(patient.address, b.account.address, Purpose.RESEARCH, STUDY)
    env.advance(1000)
    assert not a.consent.is_permitted(patient.address, b.account.address, Purpose.RESEARCH, STUDY)


def test_bad_grants_are_refused(env: ChainEnv) -> None:
    a, _b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    outsider = env.new_account(fund=False)
    with pytest.raises(NotFoundError) as err:
        a.consent.relay(
            a.consent.sign(
                patient, a.consent.request(patient.address, outsider.address, Purpose.TREATMENT)
            )
        )
    assert err.value.error_name == "ConsentRegistryUnknownGrantee"
    now = a.chain.block_timestamp()
    with pytest.raises(InvalidRequestError):
        a.consent.relay(
            a.consent.sign(
                patient,
                a.consent.request(
                    patient.address,
                    ALL_MEMBERS,
                    Purpose.TREATMENT,
                    valid_from=now + 50,
                    expires_at=now + 10,
                ),
            )
        )


def test_break_glass_is_an_event_the_patient_can_find(env: ChainEnv) -> None:
    a, _b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    a.consent.record_break_glass(patient.address, STUDY, 7)
    event = a.consent.contract.events.BreakGlass()
    logs = a.chain.get_logs(
        a.consent.deployment.consent_registry,
        0,
        topics=[event.topic, "0x" + "00" * 12 + patient.address[2:].lower()],
    )
    assert len(logs) == 1
    args = event.process_log(logs[0])["args"]
    assert args["member"] == a.account.address and args["reasonCode"] == 7
    assert bytes(args["studyHash"]) == STUDY


# -- audit anchor -------------------------------------------------------------------------------


def test_anchors_must_grow_and_are_kept_per_member(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    assert a.anchors.latest(a.account.address) is None
    r1 = a.anchors.anchor(3, b"\x01" * 32)
    a.anchors.anchor(5, b"\x02" * 32)
    with pytest.raises(ConflictError) as err:
        a.anchors.anchor(5, b"\x03" * 32)
    assert err.value.error_args == {"previousSize": 5, "treeSize": 5}
    with pytest.raises(InvalidRequestError):
        a.anchors.anchor(9, b"\x00" * 32)
    b.anchors.anchor(1, b"\x09" * 32)  # B's log is independent of A's
    assert a.anchors.latest(a.account.address) == (5, b"\x02" * 32)
    history = a.anchors.history(a.account.address)
    assert [(s, r) for s, r, _ in history] == [(3, b"\x01" * 32), (5, b"\x02" * 32)]
    assert history[0][2] == r1.block_number


def test_cross_hospital_access_records_whether_consent_was_in_force(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    b.anchors.record_access(a.account.address, patient.address, STUDY, Purpose.TREATMENT)
    a.consent.relay(
        a.consent.sign(
            patient, a.consent.request(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
        )
    )
    ref = consent_ref(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
    b.anchors.record_access(a.account.address, patient.address, STUDY, Purpose.TREATMENT, ref)
    records = a.anchors.accesses(patient=patient.address)
    assert records[-1].consent_ref == ref and records[-1].study_hash == STUDY
    assert [r.permitted for r in records] == [False, True]
    assert all(
        r.requester == b.account.address and r.provider == a.account.address for r in records
    )
    with pytest.raises(InvalidRequestError):
        b.anchors.record_access(b.account.address, patient.address, STUDY, Purpose.TREATMENT)
    with pytest.raises(NotFoundError):
        b.anchors.record_access(patient.address, patient.address, STUDY, Purpose.TREATMENT)


def test_malformed_requests_are_refused_by_the_contracts(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account()
    with pytest.raises(InvalidRequestError) as err:
        a.anchors.record_access(b.account.address, patient.address, STUDY, 5)
    assert err.value.error_name == "AuditAnchorUnknownPurpose"

    own = ConsentClient(env.chain_for(patient), env.deployment)  # type: ignore[arg-type]
    raw_grant = own.contract.functions.grant(b.account.address, 9, STUDY, 0, 0)
    with pytest.raises(InvalidRequestError) as err:
        own.chain.transact(raw_grant)
    assert err.value.error_name == "ConsentRegistryUnknownPurpose"

    signed = a.consent.sign(
        patient, a.consent.request(patient.address, b.account.address, Purpose.TREATMENT)
    )
    with pytest.raises(InvalidSignatureError) as sig_err:
        a.consent.relay(replace(signed, v=29))
    assert sig_err.value.error_name == "ConsentRegistryInvalidSignature"

    with pytest.raises(InvalidRequestError) as err:
        a.registry.propose(ProposalKind.ADD, env.new_account().address, "", "https://x")
    assert err.value.error_name == "ConsortiumRegistryInvalidMember"

    artifact = load_artifact("ConsortiumRegistry")
    with pytest.raises(InvalidRequestError) as err:
        env.deployer.deploy(artifact["abi"], artifact["bytecode"], [], 3600)
    assert err.value.error_name == "ConsortiumRegistryNoFounders"
