"""The decision path's consentRef must be the contract's key, for every kind of grant."""

from __future__ import annotations

import pytest
from eth_account import Account

from ledger.consent import ALL_MEMBERS, ALL_STUDIES, Purpose, consent_ref, study_hash
from node.services.consent_index import fast_consent_ref


@pytest.mark.parametrize("purpose", list(Purpose))
@pytest.mark.parametrize("to_all", [False, True])
@pytest.mark.parametrize("one_study", [False, True])
def test_fast_consent_ref_equals_the_abi_encoded_key(
    purpose: Purpose, to_all: bool, one_study: bool
) -> None:
    patient, member = Account.create().address, Account.create().address
    grantee = ALL_MEMBERS if to_all else member
    study = study_hash("1.2.826.0.1.3680043.8.498.1") if one_study else ALL_STUDIES
    expected = consent_ref(patient, grantee, purpose, study)
    assert fast_consent_ref(patient.lower(), grantee.lower(), int(purpose), study) == expected
