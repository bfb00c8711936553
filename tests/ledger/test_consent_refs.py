"""`consent_ref` builds the contract's key without eth-abi; it must equal the ABI encoding."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.crypto import keccak

from ledger.consent import ALL_MEMBERS, ALL_STUDIES, Purpose, consent_ref, study_hash
from ledger.deploy import checksum


@pytest.mark.parametrize("purpose", list(Purpose))
@pytest.mark.parametrize("to_all", [False, True])
@pytest.mark.parametrize("one_study", [False, True])
@pytest.mark.parametrize("lower", [False, True])
def test_consent_ref_equals_the_abi_encoded_key(
    purpose: Purpose, to_all: bool, one_study: bool, lower: bool
) -> None:
    patient, member = Account.create().address, Account.create().address
    grantee = ALL_MEMBERS if to_all else member
    study = study_hash("1.2.826.0.1.3680043.8.498.1") if one_study else ALL_STUDIES
    expected = keccak(
        abi_encode(
            ["address", "address", "uint8", "bytes32"],
            [checksum(patient), checksum(grantee), int(purpose), study],
        )
    )
    if lower:  # the decision path passes lower-case keys
        patient, grantee = patient.lower(), grantee.lower()
    assert consent_ref(patient, grantee, purpose, study) == expected
