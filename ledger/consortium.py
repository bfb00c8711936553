"""Typed client for the ConsortiumRegistry: members and membership votes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from web3.logs import DISCARD

from ledger.chain import Chain
from ledger.deploy import (
    Deployment,
    checksum,
    contract,
    hospital_id_bytes,
    hospital_id_str,
)
from ledger.errors import ConfigurationError

ZERO_ADDRESS = "0x" + "00" * 20


class MemberStatus(IntEnum):
    """IConsortiumRegistry.MemberStatus."""

    NONE = 0
    ACTIVE = 1
    REMOVED = 2


class ProposalKind(IntEnum):
    """IConsortiumRegistry.ProposalKind."""

    ADD = 0
    UPDATE = 1
    REMOVE = 2


class ProposalStatus(IntEnum):
    """IConsortiumRegistry.ProposalStatus."""

    NONE = 0
    OPEN = 1
    EXECUTED = 2
    REJECTED = 3


@dataclass(frozen=True)
class Member:
    """A consortium member as registered on chain."""

    hospital_id: str
    account: str
    endpoint: str
    tls_fingerprint: str
    status: MemberStatus

    def to_json(self) -> dict[str, Any]:
        """JSON form for the CLI."""
        return {
            "hospital_id": self.hospital_id,
            "account": self.account,
            "endpoint": self.endpoint,
            "tls_fingerprint": self.tls_fingerprint,
            "status": self.status.name.lower(),
        }


@dataclass(frozen=True)
class Proposal:
    """A membership proposal."""

    proposal_id: int
    kind: ProposalKind
    status: ProposalStatus
    account: str
    hospital_id: str
    endpoint: str
    proposer: str
    deadline: int
    yes_votes: int
    no_votes: int

    def to_json(self) -> dict[str, Any]:
        """JSON form for the CLI."""
        return {
            "proposal_id": self.proposal_id,
            "kind": self.kind.name.lower(),
            "status": self.status.name.lower(),
            "account": self.account,
            "hospital_id": self.hospital_id,
            "endpoint": self.endpoint,
            "proposer": self.proposer,
            "deadline": self.deadline,
            "yes_votes": self.yes_votes,
            "no_votes": self.no_votes,
        }


class ConsortiumClient:
    """Typed access to the ConsortiumRegistry contract."""

    def __init__(self, chain: Chain, deployment: Deployment) -> None:
        self.chain = chain
        self.deployment = deployment
        self.contract = contract(chain, "ConsortiumRegistry", deployment.consortium_registry)

    def member(self, account: str) -> Member:
        """The member record of an account (status NONE when never a member)."""
        raw = self.chain.call(self.contract.functions.getMember(checksum(account)))
        return Member(
            hospital_id=hospital_id_str(raw[0]),
            account=checksum(raw[1]) if int(raw[1], 16) else checksum(account),
            endpoint=raw[2],
            tls_fingerprint=bytes(raw[3]).hex(),
            status=MemberStatus(raw[4]),
        )

    def members(self) -> list[Member]:
        """Every account that has ever been a member, with its status."""
        accounts = self.chain.call(self.contract.functions.memberAccounts())
        return [self.member(a) for a in accounts]

    def is_active(self, account: str) -> bool:
        """Whether the account is an active member now."""
        return bool(self.chain.call(self.contract.functions.isActiveMember(checksum(account))))

    def resolve(self, member: str) -> str:
        """A member's account from its address or hospital id."""
        if member.startswith("0x") and len(member) == 42:
            return checksum(member)
        account = self.chain.call(self.contract.functions.accountOf(hospital_id_bytes(member)))
        if int(account, 16) == 0:
            raise ConfigurationError(f"no active member with hospital id {member!r}")
        return checksum(account)

    def propose(
        self,
        kind: ProposalKind,
        account: str,
        hospital_id: str = "",
        endpoint: str = "",
        tls_fingerprint: bytes = b"\x00" * 32,
    ) -> int:
        """Propose a membership change (the proposer votes yes); returns the proposal id."""
        hid = hospital_id_bytes(hospital_id) if hospital_id else b"\x00" * 32
        receipt = self.chain.transact(
            self.contract.functions.propose(
                int(kind), checksum(account), hid, endpoint, tls_fingerprint
            )
        )
        events = self.contract.events.ProposalCreated().process_receipt(receipt, errors=DISCARD)
        return int(events[0]["args"]["proposalId"])

    def vote(self, proposal_id: int, support: bool) -> Proposal:
        """Vote on a proposal; returns its state after the vote."""
        self.chain.transact(self.contract.functions.vote(proposal_id, support))
        return self.proposal(proposal_id)

    def proposal(self, proposal_id: int) -> Proposal:
        """A proposal's current state."""
        raw = self.chain.call(self.contract.functions.getProposal(proposal_id))
        return Proposal(
            proposal_id=proposal_id,
            kind=ProposalKind(raw[0]),
            status=ProposalStatus(raw[1]),
            account=checksum(raw[2]),
            hospital_id=hospital_id_str(raw[3]),
            endpoint=raw[4],
            proposer=checksum(raw[6]),
            deadline=int(raw[7]),
            yes_votes=int(raw[8]),
            no_votes=int(raw[9]),
        )

    def proposals(self) -> list[Proposal]:
        """Every proposal, oldest first."""
        count = int(self.chain.call(self.contract.functions.proposalCount()))
        return [self.proposal(i) for i in range(1, count + 1)]
