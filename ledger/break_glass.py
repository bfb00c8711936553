"""Reading break-glass records back from the chain: by transaction hash, or by patient and member.

A requester that breaks the glass records `ConsentRegistry.recordBreakGlass` first and names
the transaction to the owner; the owner checks here that the transaction really emitted a
BreakGlass event from the consortium's ConsentRegistry, and for whom, before it honours it. An
auditor reads every BreakGlass a member recorded for a patient (ledger/audit_transfers.py).
Both decode the event in one place (``_decoded``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_checksum_address
from web3.contract.contract import ContractEvent
from web3.exceptions import MismatchedABI

from ledger.chain import Chain
from ledger.deploy import Deployment, address_topic, checksum, contract

_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class BreakGlassRecord:
    """One BreakGlass event as mined."""

    patient: str  # checksummed
    member: str  # the member that broke the glass, checksummed
    study_hash: bytes  # zero: all studies
    reason_code: int
    tx_hash: str
    block_number: int
    block_time: int  # the block's timestamp (Unix seconds)


def break_glass_record(
    chain: Chain, deployment: Deployment, tx_hash: str
) -> BreakGlassRecord | None:
    """The BreakGlass event the transaction emitted; None if it emitted none (or is unknown)."""
    if not _TX_HASH.match(tx_hash):
        return None
    receipt = chain.receipt(tx_hash)
    if receipt is None or int(receipt.get("status", 0)) != 1:
        return None
    registry = checksum(deployment.consent_registry)
    event = _event(chain, deployment)
    for log in receipt["logs"]:
        if to_checksum_address(log["address"]) != registry:
            continue
        record = _decoded(chain, event, log)
        if record is not None:  # else another event of the registry (a grant, say)
            return record
    return None


def break_glass_records(
    chain: Chain, deployment: Deployment, patient: str, member: str
) -> list[BreakGlassRecord]:
    """Every BreakGlass the member recorded for the patient, oldest first."""
    event = _event(chain, deployment)
    logs = chain.get_logs(
        deployment.consent_registry,
        deployment.block_number,
        None,
        topics=[event.topic, address_topic(patient), address_topic(member)],
    )
    ordered = sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"]))
    return [r for r in (_decoded(chain, event, lg) for lg in ordered) if r is not None]


def _event(chain: Chain, deployment: Deployment) -> ContractEvent:
    event: ContractEvent = contract(
        chain, "ConsentRegistry", deployment.consent_registry
    ).events.BreakGlass()
    return event


def _decoded(chain: Chain, event: ContractEvent, log: Any) -> BreakGlassRecord | None:
    """The record a log holds, if it is a BreakGlass event."""
    try:
        args = event.process_log(log)["args"]
    except MismatchedABI:
        return None
    block = int(log["blockNumber"])
    return BreakGlassRecord(
        patient=to_checksum_address(args["patient"]),
        member=to_checksum_address(args["member"]),
        study_hash=bytes(args["studyHash"]),
        reason_code=int(args["reasonCode"]),
        tx_hash="0x" + bytes(log["transactionHash"]).hex(),
        block_number=block,
        block_time=chain.block_timestamp(block),
    )
