"""Typed ledger errors; contract reverts are decoded into them by custom-error selector.

Every error declares how it surfaces at the node (HTTP status, FHIR OperationOutcome code) so
a denied consent reaches a client as 403, never 500. Messages never carry personal data:
patients appear only as pseudonymous addresses and studies only as hashes.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "contracts" / "artifacts"


class LedgerError(Exception):
    """Root of every ledger error."""

    http_status: ClassVar[int] = 500
    fhir_code: ClassVar[str] = "exception"


class ChainUnavailableError(LedgerError):
    """The chain could not be reached (the node is down or the URL is wrong)."""

    http_status = 503
    fhir_code = "transient"


class NotDeployedError(LedgerError):
    """No deployment file in the data directory, or the contracts are not on this chain."""

    http_status = 503
    fhir_code = "not-supported"


class ConfigurationError(LedgerError):
    """Bad input from the operator: an unreadable key file, a malformed address, a bad option."""

    http_status = 400
    fhir_code = "invalid"


class KeystoreError(ConfigurationError):
    """A key file is missing, malformed, or its password is wrong."""


class TransactionFailedError(LedgerError):
    """A transaction was mined but failed, or reverted without a decodable reason."""


class ContractRevertError(LedgerError):
    """A contract call reverted with one of the suite's custom errors."""

    def __init__(self, error_name: str, args: dict[str, Any]) -> None:
        self.error_name = error_name
        self.error_args = args
        shown = ", ".join(f"{k}={_show(v)}" for k, v in args.items())
        super().__init__(f"{error_name}({shown})")


class PermissionDeniedError(ContractRevertError):
    """The sender may not do this (not an active member, or a removed one)."""

    http_status = 403
    fhir_code = "forbidden"


class InvalidSignatureError(ContractRevertError):
    """A relayed signature is wrong: another signer, high s, malformed, or another chain."""

    http_status = 403
    fhir_code = "security"


class ReplayError(ContractRevertError):
    """A relayed signature carries a nonce already used (a replay or a stale signature)."""

    http_status = 409
    fhir_code = "conflict"


class ExpiredError(ContractRevertError):
    """A deadline or voting period has passed."""

    http_status = 410
    fhir_code = "expired"


class NotFoundError(ContractRevertError):
    """The grant, member or proposal does not exist."""

    http_status = 404
    fhir_code = "not-found"


class ConflictError(ContractRevertError):
    """The request conflicts with chain state (already a member, anchor not growing, ...)."""

    http_status = 409
    fhir_code = "conflict"


class InvalidRequestError(ContractRevertError):
    """The request is malformed (unknown purpose, empty root, bad validity window)."""

    http_status = 400
    fhir_code = "invalid"


class ConsentDeniedError(LedgerError):
    """No consent is in force for this access."""

    http_status = 403
    fhir_code = "forbidden"


# Each custom error in the contracts maps to exactly one Python class.
ERROR_CLASSES: dict[str, type[ContractRevertError]] = {
    "ConsortiumRegistryNotMember": PermissionDeniedError,
    "ConsortiumRegistryAlreadyMember": ConflictError,
    "ConsortiumRegistryUnknownMember": NotFoundError,
    "ConsortiumRegistryHospitalIdTaken": ConflictError,
    "ConsortiumRegistryInvalidMember": InvalidRequestError,
    "ConsortiumRegistryNoFounders": InvalidRequestError,
    "ConsortiumRegistryUnknownProposal": NotFoundError,
    "ConsortiumRegistryProposalClosed": ConflictError,
    "ConsortiumRegistryProposalExpired": ExpiredError,
    "ConsortiumRegistryAlreadyVoted": ConflictError,
    "ConsortiumRegistryLastMember": ConflictError,
    "ConsentRegistryNotMember": PermissionDeniedError,
    "ConsentRegistryUnknownGrantee": NotFoundError,
    "ConsentRegistryUnknownPurpose": InvalidRequestError,
    "ConsentRegistryInvalidWindow": InvalidRequestError,
    "ConsentRegistryNoGrant": NotFoundError,
    "ConsentRegistryExpired": ExpiredError,
    "ConsentRegistryInvalidNonce": ReplayError,
    "ConsentRegistryHighS": InvalidSignatureError,
    "ConsentRegistryInvalidSignature": InvalidSignatureError,
    "ConsentRegistryWrongSigner": InvalidSignatureError,
    "AuditAnchorNotMember": PermissionDeniedError,
    "AuditAnchorNotGrowing": ConflictError,
    "AuditAnchorEmptyRoot": InvalidRequestError,
    "AuditAnchorUnknownProvider": NotFoundError,
    "AuditAnchorSameMember": InvalidRequestError,
    "AuditAnchorUnknownPurpose": InvalidRequestError,
}


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def _abi_type(item: dict[str, Any]) -> str:
    return str(item["type"])


@cache
def error_table() -> dict[bytes, tuple[str, list[str], list[str]]]:
    """Selector → (error name, argument names, argument types) for every suite custom error."""
    # Imported here so `pacsmesh --help` does not pay for the Ethereum libraries.
    from eth_utils.crypto import keccak

    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for path in sorted(ARTIFACTS_DIR.glob("*.json")):
        for item in json.loads(path.read_text())["abi"]:
            if item["type"] != "error":
                continue
            types = [_abi_type(i) for i in item["inputs"]]
            selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
            table[selector] = (item["name"], [i["name"] for i in item["inputs"]], types)
    return table


def decode_revert(data: bytes | str | None) -> LedgerError:
    """Turn revert data into the matching typed error (TransactionFailedError when unknown)."""
    from eth_abi.abi import decode as abi_decode
    from eth_utils.address import to_checksum_address

    if isinstance(data, str):
        text = data[2:] if data.startswith("0x") else data
        try:
            data = bytes.fromhex(text)
        except ValueError:
            return TransactionFailedError(f"transaction reverted: {data!r}")
    if not data or len(data) < 4:
        return TransactionFailedError("transaction reverted without a reason")
    entry = error_table().get(bytes(data[:4]))
    if entry is None:
        return TransactionFailedError(f"transaction reverted with unknown error 0x{data[:4].hex()}")
    name, arg_names, types = entry
    values = [
        to_checksum_address(v) if t == "address" else v
        for t, v in zip(types, abi_decode(types, bytes(data[4:])), strict=True)
    ]
    cls = ERROR_CLASSES.get(name, ContractRevertError)
    return cls(name, dict(zip(arg_names, values, strict=True)))
