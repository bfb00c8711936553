"""EIP-712 relayed consent: every signature edge case, on both chains."""

from __future__ import annotations

import pytest
from eth_account.messages import encode_typed_data

from ledger.consent import (
    SECP256K1_HALF_N,
    ConsentClient,
    Purpose,
    SignedConsent,
    recover_signer,
    sign_consent,
    study_hash,
    verify_consent,
)
from ledger.errors import ExpiredError, InvalidSignatureError, PermissionDeniedError, ReplayError
from tests.ledger.conftest import ChainEnv
from tests.ledger.test_contract_rules import hospitals, remove_member

STUDY = study_hash("1.2.826.0.1.3680043.8.498.1")
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_valid_signature_is_relayed_and_verifies_off_chain(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    signed = a.consent.sign(
        patient, a.consent.request(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
    )
    assert verify_consent(signed, a.chain.chain_id, a.consent.deployment.consent_registry)
    a.consent.relay(signed)
    assert a.consent.is_permitted(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
    assert a.consent.nonce(patient.address) == 1


def test_wrong_signer_is_rejected(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient, impostor = env.new_account(fund=False), env.new_account(fund=False)
    request = a.consent.request(patient.address, b.account.address, Purpose.TREATMENT)
    # The impostor signs the very request that names the patient.
    typed = request.typed_data(a.chain.chain_id, a.consent.deployment.consent_registry)
    sig = impostor.sign_message(encode_typed_data(full_message=typed))
    forged = SignedConsent(request, sig.v, sig.r.to_bytes(32, "big"), sig.s.to_bytes(32, "big"))
    assert not verify_consent(forged, a.chain.chain_id, a.consent.deployment.consent_registry)
    with pytest.raises(InvalidSignatureError) as err:
        a.consent.relay(forged)
    assert err.value.error_name == "ConsentRegistryWrongSigner"
    assert err.value.error_args["recovered"] == impostor.address
    assert not a.consent.is_permitted(patient.address, b.account.address, Purpose.TREATMENT, STUDY)


def test_replay_is_rejected(env: ChainEnv) -> None:
    a, b, c = hospitals(env)
    patient = env.new_account(fund=False)
    signed = a.consent.sign(
        patient, a.consent.request(patient.address, b.account.address, Purpose.RESEARCH)
    )
    a.consent.relay(signed)
    with pytest.raises(ReplayError) as err:
        c.consent.relay(signed)  # another member relaying the same signature
    assert err.value.error_args == {"expected": 1, "given": 0}


def test_revoked_grant_cannot_be_revived_by_replaying_its_signature(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    grant = a.consent.sign(
        patient, a.consent.request(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
    )
    a.consent.relay(grant)
    revoke = a.consent.sign(
        patient,
        a.consent.request(
            patient.address, b.account.address, Purpose.TREATMENT, STUDY, revoke=True
        ),
    )
    a.consent.relay(revoke)
    assert not a.consent.is_permitted(patient.address, b.account.address, Purpose.TREATMENT, STUDY)
    with pytest.raises(ReplayError):
        a.consent.relay(grant)
    assert not a.consent.is_permitted(patient.address, b.account.address, Purpose.TREATMENT, STUDY)


def test_direct_action_invalidates_outstanding_signatures(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account()
    pending = a.consent.sign(
        patient, a.consent.request(patient.address, b.account.address, Purpose.TREATMENT)
    )
    own = ConsentClient(env.chain_for(patient), env.deployment)  # type: ignore[arg-type]
    own.grant_direct(b.account.address, Purpose.RESEARCH)
    with pytest.raises(ReplayError):
        a.consent.relay(pending)


def test_expired_deadline_is_rejected(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    request = a.consent.request(
        patient.address, b.account.address, Purpose.TREATMENT, deadline_seconds=60
    )
    signed = a.consent.sign(patient, request)
    env.advance(120)
    with pytest.raises(ExpiredError) as err:
        a.consent.relay(signed)
    assert err.value.error_args["deadline"] == request.deadline


def test_signature_for_another_chain_id_is_rejected(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    request = a.consent.request(patient.address, b.account.address, Purpose.TREATMENT)
    other_chain = sign_consent(
        patient, request, a.chain.chain_id + 1, a.consent.deployment.consent_registry
    )
    assert not verify_consent(other_chain, a.chain.chain_id, a.consent.deployment.consent_registry)
    with pytest.raises(InvalidSignatureError) as err:
        a.consent.relay(other_chain)
    assert err.value.error_name == "ConsentRegistryWrongSigner"


def test_high_s_signature_is_rejected(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    signed = a.consent.sign(
        patient, a.consent.request(patient.address, b.account.address, Purpose.TREATMENT)
    )
    # The malleable twin (n - s, flipped v) recovers the same signer but is refused (EIP-2).
    s = int.from_bytes(signed.s, "big")
    twin = SignedConsent(
        signed.request, 55 - signed.v, signed.r, (SECP256K1_N - s).to_bytes(32, "big")
    )
    assert int.from_bytes(twin.s, "big") > SECP256K1_HALF_N
    assert recover_signer(twin, a.chain.chain_id, a.consent.deployment.consent_registry) is None
    with pytest.raises(InvalidSignatureError) as err:
        a.consent.relay(twin)
    assert err.value.error_name == "ConsentRegistryHighS"


def test_non_member_relayer_is_rejected(env: ChainEnv) -> None:
    a, b, _c = hospitals(env)
    patient = env.new_account(fund=False)
    outsider = ConsentClient(env.chain_for(env.new_account()), env.deployment)  # type: ignore[arg-type]
    signed = a.consent.sign(
        patient, a.consent.request(patient.address, b.account.address, Purpose.TREATMENT)
    )
    with pytest.raises(PermissionDeniedError):
        outsider.relay(signed)
    a.consent.relay(signed)  # the same signature is still good through a member


def test_removed_member_cannot_relay_and_loses_its_grants(env: ChainEnv) -> None:
    a, b, c = hospitals(env)
    patient = env.new_account(fund=False)
    a.consent.relay(
        a.consent.sign(
            patient, a.consent.request(patient.address, c.account.address, Purpose.TREATMENT)
        )
    )
    assert a.consent.is_permitted(patient.address, c.account.address, Purpose.TREATMENT, STUDY)
    remove_member([a, b], c)
    assert not a.consent.is_permitted(patient.address, c.account.address, Purpose.TREATMENT, STUDY)
    signed = a.consent.sign(
        patient, a.consent.request(patient.address, b.account.address, Purpose.TREATMENT)
    )
    with pytest.raises(PermissionDeniedError):
        c.consent.relay(signed)
