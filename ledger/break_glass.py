"""Reading a break-glass record back from the chain, given its transaction hash.

A requester that breaks the glass records `ConsentRegistry.recordBreakGlass` first and names
the transaction to the owner; the owner checks here that the transaction really emitted a
BreakGlass event from the consortium's ConsentRegistry, and for whom, before it honours it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from eth_utils.address import to_checksum_address
from web3.exceptions import MismatchedABI

from ledger.chain import Chain
from ledger.deploy import Deployment, checksum, contract

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
    event = contract(chain, "ConsentRegistry", registry).events.BreakGlass()
    for log in receipt["logs"]:
        if to_checksum_address(log["address"]) != registry:
            continue
        try:
            args = event.process_log(log)["args"]
        except MismatchedABI:
            continue  # another event of the registry (a grant, say)
        block = int(receipt["blockNumber"])
        return BreakGlassRecord(
            patient=to_checksum_address(args["patient"]),
            member=to_checksum_address(args["member"]),
            study_hash=bytes(args["studyHash"]),
            reason_code=int(args["reasonCode"]),
            tx_hash=tx_hash.lower(),
            block_number=block,
            block_time=chain.block_timestamp(block),
        )
    return None
