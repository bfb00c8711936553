"""The consent cache: local answers that track the chain, with bounded, reported staleness."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from eth_account import Account

from ledger.chain import Chain, connect
from ledger.consent import (
    ALL_MEMBERS,
    ALL_STUDIES,
    ConsentCache,
    ConsentCacheStaleError,
    ConsentClient,
    Purpose,
    consent_ref,
    study_hash,
)
from ledger.consortium import ProposalKind
from ledger.deploy import MemberInfo, deploy_suite
from tests.ledger.conftest import Anvil, ChainEnv, rpc
from tests.ledger.test_contract_rules import hospitals

STUDY = study_hash("1.2.826.0.1.3680043.8.498.5")


def test_cache_agrees_with_the_contract_after_each_change(env: ChainEnv) -> None:
    a, b, c = hospitals(env)
    patient = env.new_account(fund=False)
    cache = ConsentCache(a.chain, env.deployment)
    cache.sync()

    def agree(grantee: str, purpose: Purpose) -> bool:
        on_chain = a.consent.is_permitted(patient.address, grantee, purpose, STUDY)
        local = cache.check(patient.address, grantee, purpose, STUDY).permitted
        assert local == on_chain
        return local

    assert not agree(b.account.address, Purpose.TREATMENT)
    a.consent.relay(
        a.consent.sign(
            patient, a.consent.request(patient.address, ALL_MEMBERS, Purpose.TREATMENT, STUDY)
        )
    )
    cache.sync()
    assert agree(b.account.address, Purpose.TREATMENT) and agree(
        c.account.address, Purpose.TREATMENT
    )
    assert not agree(b.account.address, Purpose.RESEARCH)

    pid = a.registry.propose(ProposalKind.REMOVE, c.account.address)
    b.registry.vote(pid, True)
    cache.sync()
    assert not agree(c.account.address, Purpose.TREATMENT)  # removed members lose access

    a.consent.relay(
        a.consent.sign(
            patient,
            a.consent.request(patient.address, ALL_MEMBERS, Purpose.TREATMENT, STUDY, revoke=True),
        )
    )
    decision = cache.check(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
    assert decision.permitted  # not synced yet: the answer says which block it reflects
    synced = cache.sync()
    assert decision.synced_block < synced
    assert not agree(b.account.address, Purpose.TREATMENT)
    assert cache.grants_of(patient.address) == []


def test_sync_to_head_counts_the_block_just_mined(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    request = a.consent.request
    a.consent.relay(
        a.consent.sign(patient, request(patient.address, b.account.address, Purpose.TREATMENT))
    )
    cache = ConsentCache(a.chain, env.deployment)  # no background sync: only what we ask
    granted_at = cache.sync_to_head()
    assert cache.check(patient.address, b.account.address, Purpose.TREATMENT).permitted
    assert cache.sync_to_head() == granted_at  # no block since: nothing to catch up with

    revoke = request(patient.address, b.account.address, Purpose.TREATMENT, revoke=True)
    a.consent.relay(a.consent.sign(patient, revoke))
    assert cache.check(patient.address, b.account.address, Purpose.TREATMENT).permitted

    head = cache.sync_to_head()

    assert head == a.chain.block_number() > granted_at
    decision = cache.check(patient.address, b.account.address, Purpose.TREATMENT)
    assert not decision.permitted and decision.synced_block == head


def test_expiry_is_judged_locally_without_a_new_event(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    expires = a.chain.block_timestamp() + 500
    a.consent.relay(
        a.consent.sign(
            patient,
            a.consent.request(
                patient.address, b.account.address, Purpose.RESEARCH, expires_at=expires
            ),
        )
    )
    cache = ConsentCache(a.chain, env.deployment)
    cache.sync()
    check = cache.check
    assert check(patient.address, b.account.address, Purpose.RESEARCH, STUDY).permitted
    later = check(patient.address, b.account.address, Purpose.RESEARCH, STUDY, now=expires)
    assert not later.permitted


def test_confirmation_depth_holds_back_recent_blocks(anvil: Anvil, tmp_path: Path) -> None:
    node, patient = Account.create(), Account.create()
    anvil.fund(node.address)
    chain = connect(tmp_path, anvil.url, account=node)
    deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
    consent = ConsentClient(chain, deployment)
    consent.relay(
        consent.sign(patient, consent.request(patient.address, node.address, Purpose.TREATMENT))
    )
    cautious = Chain(chain.w3, node, confirmations=2, rpc_url=anvil.url)
    cache = ConsentCache(cautious, deployment)
    cache.sync()
    assert not cache.check(patient.address, node.address, Purpose.TREATMENT).permitted
    rpc(anvil.url, "evm_mine")
    rpc(anvil.url, "evm_mine")
    cache.sync()
    assert cache.check(patient.address, node.address, Purpose.TREATMENT).permitted


@pytest.mark.integration
def test_checks_survive_an_outage_until_the_staleness_bound(tmp_path: Path) -> None:
    anvil = Anvil().start()
    try:
        node, patient = Account.create(), Account.create()
        anvil.fund(node.address)
        chain = connect(tmp_path, anvil.url, account=node, timeout=1.0)
        deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
        consent = ConsentClient(chain, deployment)
        consent.relay(
            consent.sign(patient, consent.request(patient.address, node.address, Purpose.TREATMENT))
        )
        cache = ConsentCache(chain, deployment, max_age_seconds=3.0)
        cache.start(interval=0.1)
        time.sleep(0.5)
        anvil.stop()
        # No RPC per check: the answer comes from memory while the chain is down.
        assert cache.check(patient.address, node.address, Purpose.TREATMENT).permitted
        time.sleep(3.5)
        with pytest.raises(ConsentCacheStaleError, match="last synced"):
            cache.check(patient.address, node.address, Purpose.TREATMENT)
        cache.stop()
    finally:
        anvil.stop()


@pytest.mark.integration
def test_cache_drops_a_grant_that_a_reorg_removed(anvil: Anvil, tmp_path: Path) -> None:
    node, patient = Account.create(), Account.create()
    anvil.fund(node.address)
    chain = connect(tmp_path, anvil.url, account=node)
    deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
    consent = ConsentClient(chain, deployment)
    cache = ConsentCache(chain, deployment)
    consent.relay(
        consent.sign(patient, consent.request(patient.address, node.address, Purpose.TREATMENT))
    )
    cache.sync()
    assert cache.check(patient.address, node.address, Purpose.TREATMENT).permitted
    rpc(anvil.url, "anvil_reorg", [1, []])  # the block holding the grant is replaced
    assert not consent.is_permitted(patient.address, node.address, Purpose.TREATMENT)
    cache.sync()
    assert cache.rebuilds == 1
    assert not cache.check(patient.address, node.address, Purpose.TREATMENT).permitted


def test_check_names_the_most_specific_grant_and_revocations_stay_visible() -> None:
    patient, member = Account.create().address, Account.create().address
    cache = ConsentCache(None, None)
    cache.apply_member(member, True)
    cache.apply_grant(patient, ALL_MEMBERS, int(Purpose.RESEARCH), ALL_STUDIES, 0, 0)
    cache.apply_grant(patient, member, int(Purpose.RESEARCH), STUDY, 0, 0)
    cache.mark_synced(7)

    decision = cache.check(patient, member, Purpose.RESEARCH, STUDY)
    assert decision.permitted
    assert decision.consent_ref == consent_ref(patient, member, Purpose.RESEARCH, STUDY)

    cache.apply_revoke(patient, member, int(Purpose.RESEARCH), STUDY)
    decision = cache.check(patient, member, Purpose.RESEARCH, STUDY)
    # The grant to every member still permits, and is now the one named.
    assert decision.consent_ref == consent_ref(patient, ALL_MEMBERS, Purpose.RESEARCH, ALL_STUDIES)
    states = {(s.grant.grantee.lower(), s.revoked) for s in cache.states_of(patient)}
    assert states == {(ALL_MEMBERS, False), (member.lower(), True)}

    # Granting the same key again replaces the revocation.
    cache.apply_grant(patient, member, int(Purpose.RESEARCH), STUDY, 0, 0)
    assert all(not s.revoked for s in cache.states_of(patient))
    assert not cache.check(patient, member, Purpose.TREATMENT, STUDY).permitted
