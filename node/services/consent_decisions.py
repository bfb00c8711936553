"""Consent decisions for access to a patient's study: the one rule the network API applies.

- Own-hospital care (the requester is this node's own member account) needs no ledger
  consent: local roles decide it, and the access is audited like any other.
- Cross-hospital access needs a grant in force for (patient, requester, purpose, study) at the
  cache's synced block; the exchange decides `at_head()`, which first brings the cache to the
  chain's head, so that a revocation refuses from its block on. The answer names the
  permitting grant (its consentRef, the value the access record on chain carries) and how
  stale the cache was (`stale_by`, seconds). A cache older than its bound gives no answer
  (503), never a stale yes.
- Break-glass: a clinician may override with a reason code; the override is recorded on chain
  (ConsentRegistry.recordBreakGlass, seen by the patient and auditors) before the access, and
  the decision is flagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from ledger.consent import Purpose, study_hash
from ledger.deploy import checksum
from node.auth.policy import Principal
from node.errors import ForbiddenError, InvalidRequestError
from node.services.consent_errors import ledger_errors

if TYPE_CHECKING:
    from node.ledger_link import LedgerLink

# Who may break the glass: the staff who treat. Auditors, patients and admins may not.
BREAK_GLASS_ROLES = frozenset({"clinician", "radiologist"})


class BreakGlassReason(IntEnum):
    """The consortium's break-glass reason codes (on chain a number, never free text)."""

    EMERGENCY_TREATMENT = 1  # patient unable to consent, treatment cannot wait
    LIFE_THREATENING = 2  # immediate danger to life
    PATIENT_UNREACHABLE = 3  # urgent care, consent holder cannot be reached


@dataclass(frozen=True)
class Decision:
    """The answer for one access, with what an auditor needs to check it later."""

    permitted: bool
    consent_ref: str | None  # 0x-hex consentRef of the permitting grant
    block: int  # the cache's synced block (or the break-glass transaction's block)
    stale_by: float  # seconds since the cache last synced
    local: bool = False  # own-hospital care: no ledger consent needed
    break_glass: bool = False
    reason_code: int | None = None
    tx_hash: str | None = None


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _address(value: str) -> str:
    """An address in lower case; InvalidRequestError (naming no value) for anything else."""
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise InvalidRequestError("a member or patient is not an Ethereum address")
    return value.lower()


class ConsentDecisions:
    """Decisions from this node's consent cache and member account."""

    def __init__(self, link: LedgerLink) -> None:
        self.link = link

    def at_head(self) -> ConsentDecisions:
        """Decide at the chain's head: the cache first catches up with any block mined since
        its last background sync (a revocation a moment ago counts, so does a new grant)."""
        with ledger_errors():
            self.link.cache.sync_to_head()
        return self

    def decide(
        self,
        requester_member: str,
        patient_address: str,
        purpose: Purpose,
        study_uid: str | None,
    ) -> Decision:
        """May this member access this patient's study for this purpose now?"""
        # On the request path: a syntax check and lower-case keys, no keccak checksumming.
        requester, patient = _address(requester_member), _address(patient_address)
        if requester == self.link.account.lower():
            return Decision(True, None, self.link.cache.synced_block, 0.0, local=True)
        return self._grant(patient, requester, purpose, study_uid)

    def own_access(self, patient_address: str, purpose: Purpose, study_uid: str | None) -> Decision:
        """May this node itself access the patient's study held by another hospital?

        `decide` judges a requester from the owner's side, where this node's own account means
        own-hospital care; a requester asking about its own cross-hospital access needs the
        grant to it, so this asks the cache directly.
        """
        return self._grant(_address(patient_address), self.link.account.lower(), purpose, study_uid)

    def _grant(
        self, patient: str, grantee: str, purpose: Purpose, study_uid: str | None
    ) -> Decision:
        """The consent cache's answer for a grant, with the permitting grant's consentRef."""
        with ledger_errors():
            answer = self.link.cache.check(patient, grantee, purpose, study_hash(study_uid))
        ref = None if answer.consent_ref is None else "0x" + answer.consent_ref.hex()
        return Decision(answer.permitted, ref, answer.synced_block, answer.age_seconds)

    def break_glass(
        self,
        patient_address: str,
        study_uid: str | None,
        reason_code: int,
        principal: Principal,
    ) -> Decision:
        """Override a missing consent: recorded on chain first, then a flagged permit."""
        if principal.role not in BREAK_GLASS_ROLES:
            raise ForbiddenError("only clinicians and radiologists may break the glass")
        try:
            reason = BreakGlassReason(reason_code)
        except ValueError:
            known = ", ".join(f"{r.value} ({r.name.lower()})" for r in BreakGlassReason)
            raise InvalidRequestError(f"unknown break-glass reason code (known: {known})") from None
        patient = checksum(_address(patient_address))
        with ledger_errors():
            tx_hash = self.link.consent.record_break_glass(
                patient, study_hash(study_uid), int(reason)
            )
            # Mined before record_break_glass returned: the head is its block (or later).
            block = self.link.chain.block_number()
        return Decision(
            True, None, block, 0.0, break_glass=True, reason_code=int(reason), tx_hash=tx_hash
        )
