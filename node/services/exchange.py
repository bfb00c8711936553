"""Cross-hospital exchange, shared by both sides: headers, input rules, errors, audit events.

The vocabulary is the consortium's (docs/exchange.md): the requester chooses a transfer id
(uuid4 hex) and names it to the owner in `X-Pacsmesh-Transfer-Id`; the owner records one
"DICOM Instances Transferred" event (action R) and the requester one "Import" event (action C),
each naming the patient's address, the study's hash, the transfer id and the consent basis
(the grant's consentRef, or "break-glass:" and the recordBreakGlass transaction hash), so an
auditor can pair them.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Final

from ledger.audit_events import Purpose as AuditPurpose
from ledger.audit_transfers import BREAK_GLASS_PREFIX
from ledger.consent import Purpose
from node.errors import InvalidRequestError, NodeError
from node.services.query_keys import uid_is_valid

TRANSFER_ID_HEADER: Final = "X-Pacsmesh-Transfer-Id"
PATIENT_HEADER: Final = "X-Pacsmesh-Patient"
PURPOSE_HEADER: Final = "X-Pacsmesh-Purpose"
BREAK_GLASS_HEADER: Final = "X-Pacsmesh-Break-Glass-Tx"
# The owner announces how many instances the transfer carries, so that a requester whose
# stream breaks can say how many of how many arrived.
INSTANCES_HEADER: Final = "X-Pacsmesh-Instances"

PEER_STUDIES_PATH: Final = "/network/peer/studies"

_ADDRESS: Final = re.compile(r"^0x[0-9a-fA-F]{40}$")
_TX_HASH: Final = re.compile(r"^0x[0-9a-fA-F]{64}$")
_TRANSFER_ID: Final = re.compile(r"^[0-9a-f]{32}$")


class TransferRefusedError(NodeError):
    """The owner (or this node) refuses a cross-hospital access; the reason names no person."""

    http_status = 403
    fhir_code = "forbidden"


class PeerUnreachableError(NodeError):
    """The member that holds the study could not be reached, or answered with an error."""

    http_status = 502
    fhir_code = "transient"


class PeerTimeoutError(NodeError):
    """The member that holds the study did not answer in time."""

    http_status = 504
    fhir_code = "timeout"


class TransferBrokenError(NodeError):
    """The owner's stream ended early: what arrived is stored, the transfer is incomplete."""

    http_status = 502
    fhir_code = "incomplete"

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details  # the transfer as far as it went (id, instances, source)


class NetworkUnavailableError(NodeError):
    """This node cannot take part in the exchange (no ledger, no consortium TLS identity)."""

    http_status = 503
    fhir_code = "transient"


def parse_purpose(value: str | None) -> Purpose:
    """The purpose of use from its spelling (treatment, research, ai-training)."""
    if not value:
        raise InvalidRequestError("purpose is required: treatment, research or ai-training")
    try:
        return Purpose[value.strip().upper().replace("-", "_")]
    except KeyError:
        raise InvalidRequestError(
            "unknown purpose: use treatment, research or ai-training"
        ) from None


def parse_address(value: str | None, what: str) -> str:
    """An Ethereum address in lower case; the error names the field, never the value."""
    if not value or not _ADDRESS.match(value.strip()):
        raise InvalidRequestError(f"{what} must be an address (0x and 40 hex digits)")
    return value.strip().lower()


def is_address(value: str) -> bool:
    """True for 0x and 40 hex digits."""
    return bool(_ADDRESS.match(value))


def parse_study_uid(value: str) -> str:
    """A Study Instance UID (PS3.5 §9.1: digits and dots, at most 64 characters)."""
    if not value or not uid_is_valid(value):
        raise InvalidRequestError("the study UID is not a valid DICOM UID")
    return value


def parse_transfer_id(value: str | None) -> str:
    """A transfer id as the requester chose it: a version-4 UUID as 32 lower-case hex digits."""
    if not value:
        raise InvalidRequestError(f"{TRANSFER_ID_HEADER} is required (a uuid4 in hex)")
    if not _TRANSFER_ID.match(value) or uuid.UUID(hex=value).version != 4:
        raise InvalidRequestError(f"{TRANSFER_ID_HEADER} must be a uuid4 as 32 lower-case hex")
    return value


def parse_tx_hash(value: str, what: str) -> str:
    """A transaction hash (0x and 64 hex digits) in lower case."""
    if not _TX_HASH.match(value.strip()):
        raise InvalidRequestError(f"{what} must be a transaction hash (0x and 64 hex digits)")
    return value.strip().lower()


def new_transfer_id() -> str:
    """A fresh transfer id (the requester's choice)."""
    return uuid.uuid4().hex


def consent_basis(consent_ref: str | None, break_glass_tx: str | None) -> str | None:
    """What a transfer event names as its consent: the consentRef or the break-glass record."""
    if break_glass_tx:
        return BREAK_GLASS_PREFIX + break_glass_tx
    return consent_ref


def audit_purpose(purpose: Purpose) -> AuditPurpose:
    """The audit vocabulary's spelling of a consent purpose."""
    return AuditPurpose(purpose.label)
