"""Cross-node checks: both sides logged every transfer, and every access had consent on chain.

The vocabulary (agreed for every node, docs/security-audit.md "Transfers"): a transfer is one
study moving from its owner to a requester, named by a transfer id (UUID4 hex) both log.

- The **owner** logs ``INSTANCES_TRANSFERRED`` (110104), action R: agents the requester's member
  account (DESTINATION 110152, requestor) and its own (SOURCE 110153).
- The **requester** logs ``IMPORT`` (110107), action C: agents the user, the owner's account
  (SOURCE) and its own (DESTINATION).
- Both name the entities patient (ledger address), study (hash), transfer (the id) and consent
  (the grant's consentRef, ``0x`` + 64 hex, or ``break-glass:`` + the recordBreakGlass
  transaction), and the purpose. An owner's refusal names no consent (it found none in force);
  the requester's event of the same transfer still names the basis it relied on.

What each side's outcome says (the exchange writes them so; docs/security-audit.md):

- the owner: 0 it sent the whole study; 4 it refused; 8 it began sending and stopped;
- the requester: 0 it received and stored the whole study; 4 the owner refused; 8 the owner
  answered with the study and the transfer did not complete (a broken stream, a failure to
  store); 12 no transfer began: the owner could not be reached, did not answer in time, or
  answered with an error — the owner may never have seen the request.

Checks:

- **Pairing**: a side the other node must also have logged is every owner side (the requester
  logs every attempt it makes) and a requester side with outcome 0 or 8 (the owner answered
  with the study, so it logged it before the closing boundary or when the stream stopped). Such
  a side must find the other side's event, with the same id, on the other node, when that node
  is among those verified (``transfer-unpaired`` otherwise). A requester side with outcome 4 or
  12 asks nothing of the owner: the owner may have refused it before it was a transfer (an
  unknown peer) or never received it. Both sides, when both logged, must agree on owner,
  requester, patient, study, consent, purpose and outcome (``transfer-mismatch``): the outcomes
  must be one of the pairs in ``_CONSISTENT``. Each side must be logged by the node it names as
  its own side (a refusal without a consent is held to the other facts only). A transfer whose
  other node was not given (or could not be read) is *unverifiable*: listed, a finding only
  with ``--strict``.
- **Consent**: a transfer that released data (either side's outcome is 0 or 8: the owner began
  sending) must have a ``CrossHospitalAccess`` record on chain by the requester for that owner,
  patient and purpose, whose consentRef is the one the events name — the grant key, or the
  break-glass transaction hash (``access-not-recorded`` otherwise); the contract fixed
  ``permitted`` at that record's block. When it is false, a ``BreakGlass`` record by the
  requester for that patient, and that study or all studies, at or before that block must
  exist — the one the events cite, when they cite one (``access-without-consent`` otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

from ledger.anchor import AccessRecord, AuditAnchorClient
from ledger.audit_events import (
    Action,
    Agent,
    AuditEvent,
    Entity,
    EntityKind,
    EventType,
    Outcome,
    ParticipantRole,
    Source,
    uid_hash,
)
from ledger.audit_events import Purpose as AuditPurpose
from ledger.audit_findings import Finding, FindingKind
from ledger.break_glass import BreakGlassRecord, break_glass_records
from ledger.chain import Chain
from ledger.consent import Purpose
from ledger.deploy import Deployment

Side = Literal["owner", "requester"]
BREAK_GLASS_PREFIX = "break-glass:"
_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")
_HASH32 = re.compile(r"^0x[0-9a-f]{64}$")
_ZERO32 = bytes(32)
_FACTS = ("owner", "requester", "patient", "study", "consent", "purpose")
# (owner, requester) outcomes that describe one transfer (the module docstring says what each
# side's outcome means); any other pair is a transfer-mismatch.
_CONSISTENT: Final = frozenset(
    {
        (Outcome.SUCCESS, Outcome.SUCCESS),
        (Outcome.SUCCESS, Outcome.SERIOUS_FAILURE),  # all sent; the requester could not store it
        (Outcome.SERIOUS_FAILURE, Outcome.SERIOUS_FAILURE),
        (Outcome.SERIOUS_FAILURE, Outcome.MAJOR_FAILURE),  # it gave up before the answer came
        (Outcome.MINOR_FAILURE, Outcome.MINOR_FAILURE),
        (Outcome.MINOR_FAILURE, Outcome.MAJOR_FAILURE),  # the refusal came too late to be read
    }
)
# Outcomes of a transfer that began: the owner answered with the study and sent some or all.
_BEGAN: Final = frozenset({Outcome.SUCCESS, Outcome.SERIOUS_FAILURE})


@dataclass(frozen=True)
class TransferSide:
    """One side's event of one transfer, as a node logged it."""

    transfer_id: str
    side: Side
    node: str
    index: int
    owner: str | None
    requester: str | None
    patient: str | None
    study: str | None
    consent: str | None
    purpose: str | None
    outcome: Outcome

    @property
    def released(self) -> bool:
        """Whether this side says the transfer began: the owner sent some or all of the study."""
        return self.outcome in _BEGAN

    @property
    def binds_other_side(self) -> bool:
        """Whether the other side's node must have logged this transfer too.

        The requester logs every attempt, so every owner side binds it; the owner logged a
        transfer it answered with the study, and may never have seen one the requester
        records as unanswered (12) or refused (4, possibly before the request was a transfer).
        """
        return self.side == "owner" or self.released

    def facts(self) -> tuple[str | None, ...]:
        """What both sides must agree on."""
        return (self.owner, self.requester, self.patient, self.study, self.consent, self.purpose)


def disagreements(owner: TransferSide, requester: TransferSide) -> list[str]:
    """What the owner's and the requester's events of one transfer differ on.

    A side that names no consent (a refusal: the owner found none in force) is not held to the
    consent the other side relied on; outcomes must form one of the ``_CONSISTENT`` pairs.
    """
    differ = [
        name
        for name, mine, theirs in zip(_FACTS, owner.facts(), requester.facts(), strict=True)
        if mine != theirs and not (name == "consent" and (mine is None or theirs is None))
    ]
    if (owner.outcome, requester.outcome) not in _CONSISTENT:
        differ.append(
            f"outcome (the owner recorded {int(owner.outcome)}, "
            f"the requester {int(requester.outcome)})"
        )
    return differ


class LedgerRecords(Protocol):
    """The chain records the consent check reads."""

    def accesses(self, requester: str) -> list[AccessRecord]: ...
    def break_glass(self, patient: str, member: str) -> list[BreakGlassRecord]: ...


class ChainRecords:
    """CrossHospitalAccess and BreakGlass records read from the chain (memoised per key)."""

    def __init__(self, chain: Chain, deployment: Deployment) -> None:
        self.chain = chain
        self.deployment = deployment
        self.anchor = AuditAnchorClient(chain, deployment)
        self._accesses: dict[str, list[AccessRecord]] = {}
        self._break_glass: dict[tuple[str, str], list[BreakGlassRecord]] = {}

    def accesses(self, requester: str) -> list[AccessRecord]:
        """Every CrossHospitalAccess the requester recorded, oldest first."""
        key = requester.lower()
        if key not in self._accesses:
            self._accesses[key] = self.anchor.accesses(requester=requester)
        return self._accesses[key]

    def break_glass(self, patient: str, member: str) -> list[BreakGlassRecord]:
        """Every BreakGlass the member recorded for the patient, oldest first."""
        key = (patient.lower(), member.lower())
        if key not in self._break_glass:
            self._break_glass[key] = break_glass_records(
                self.chain, self.deployment, patient, member
            )
        return self._break_glass[key]


# -- writing the vocabulary (the nodes) and reading it (the verifier) from one place ----------

_NETWORK_ADDRESS = re.compile(r"^[A-Za-z0-9.:\[\]%-]{1,255}$")


def member_agent(
    account: str, role: ParticipantRole, *, requestor: bool, host: str | None = None
) -> Agent:
    """A member node as an audit agent: its account in lower case."""
    if host is not None and not _NETWORK_ADDRESS.match(host):
        host = None
    return Agent(who=account.lower(), role=role, requestor=requestor, network_address=host)


def _transfer_event(
    event_type: EventType,
    action: Action,
    agents: list[Agent],
    *,
    source: Source,
    patient: str,
    study_uid: str,
    transfer_id: str,
    consent: str | None,
    purpose: AuditPurpose,
    outcome: Outcome,
) -> AuditEvent:
    entities = [
        Entity(kind=EntityKind.PATIENT, ref=patient.lower()),
        Entity(kind=EntityKind.STUDY, ref=uid_hash(study_uid)),
        Entity(kind=EntityKind.TRANSFER, ref=transfer_id),
    ]
    if consent:  # an owner's refusal names none: no consent was in force
        entities.append(Entity(kind=EntityKind.CONSENT, ref=consent))
    return AuditEvent(
        event_type=event_type,
        action=action,
        outcome=outcome,
        recorded=datetime.now(UTC),
        agents=agents,
        entities=entities,
        source=source,
        purpose=purpose,
    )


def owner_event(
    *,
    source: Source,
    owner: str,
    requester: str,
    requester_host: str | None,
    patient: str,
    study_uid: str,
    transfer_id: str,
    consent: str | None,
    purpose: AuditPurpose,
    outcome: Outcome,
) -> AuditEvent:
    """The owner's event of a transfer (110104, R): it streamed the study out, or refused."""
    agents = [
        member_agent(requester, ParticipantRole.DESTINATION, requestor=True, host=requester_host),
        member_agent(owner, ParticipantRole.SOURCE, requestor=False),
    ]
    return _transfer_event(
        EventType.INSTANCES_TRANSFERRED, Action.READ, agents, source=source, patient=patient,
        study_uid=study_uid, transfer_id=transfer_id, consent=consent, purpose=purpose,
        outcome=outcome,
    )  # fmt: skip


def requester_event(
    *,
    source: Source,
    user: Agent,
    owner: str,
    requester: str,
    patient: str,
    study_uid: str,
    transfer_id: str,
    consent: str | None,
    purpose: AuditPurpose,
    outcome: Outcome,
) -> AuditEvent:
    """The requester's event of a transfer (110107, C): its user had it received and stored."""
    agents = [
        user,
        member_agent(owner, ParticipantRole.SOURCE, requestor=False),
        member_agent(requester, ParticipantRole.DESTINATION, requestor=False),
    ]
    return _transfer_event(
        EventType.IMPORT, Action.CREATE, agents, source=source, patient=patient,
        study_uid=study_uid, transfer_id=transfer_id, consent=consent, purpose=purpose,
        outcome=outcome,
    )  # fmt: skip


def transfer_side(event: AuditEvent, node: str, index: int) -> TransferSide | None:
    """The transfer side an event records, or None when it is no transfer event."""
    transfer_ids = [e.ref for e in event.entities if e.kind is EntityKind.TRANSFER]
    if not transfer_ids:
        return None
    if event.event_type is EventType.INSTANCES_TRANSFERRED:
        side: Side = "owner"
    elif event.event_type is EventType.IMPORT:
        side = "requester"
    else:
        return None

    def member(role: ParticipantRole) -> str | None:
        found = [a.who for a in event.agents if a.role is role and _ADDRESS.match(a.who)]
        return found[0] if len(found) == 1 else None

    def entity(kind: EntityKind) -> str | None:
        refs = [e.ref for e in event.entities if e.kind is kind]
        return refs[0] if len(refs) == 1 else None

    return TransferSide(
        transfer_id=transfer_ids[0],
        side=side,
        node=node,
        index=index,
        owner=member(ParticipantRole.SOURCE),
        requester=member(ParticipantRole.DESTINATION),
        patient=entity(EntityKind.PATIENT),
        study=entity(EntityKind.STUDY),
        consent=entity(EntityKind.CONSENT),
        purpose=event.purpose.value if event.purpose is not None else None,
        outcome=event.outcome,
    )


@dataclass(frozen=True)
class Unverifiable:
    """A transfer whose other side could not be checked (that node was not given, or unread)."""

    node: str
    transfer_id: str
    entry: int
    side: str
    other_member: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "node": self.node,
            "transfer_id": self.transfer_id,
            "entry": self.entry,
            "side": self.side,
            "other_member": self.other_member,
            "reason": self.reason,
        }


@dataclass
class AccessCounts:
    """How the cross-hospital accesses of the transfers were justified."""

    checked: int = 0
    consented: int = 0
    break_glass: int = 0
    not_released: int = 0  # no side says the transfer began: nothing left the owner

    def to_json(self) -> dict[str, int]:
        """JSON form."""
        return {
            "checked": self.checked,
            "consented": self.consented,
            "break_glass": self.break_glass,
            "not_released": self.not_released,
        }


@dataclass
class TransferCheck:
    """Findings and counts of the cross-node checks."""

    findings: list[Finding] = field(default_factory=list)
    unverifiable: list[Unverifiable] = field(default_factory=list)
    accesses: AccessCounts = field(default_factory=AccessCounts)


def check_transfers(
    sides: Iterable[TransferSide],
    members: Mapping[str, str],
    unreadable: Mapping[str, str],
    records: LedgerRecords,
    *,
    strict: bool = False,
) -> TransferCheck:
    """Pair the sides logged on the nodes read, then check each transfer's consent on chain.

    ``members`` maps each readable node's URL to its member account; ``unreadable`` maps the
    member account of a node that could not be read to its URL (when it is known).
    """
    result = TransferCheck()
    node_of = {account: url for url, account in members.items()}
    by_id: dict[str, dict[Side, list[TransferSide]]] = {}
    for s in sides:
        by_id.setdefault(s.transfer_id, {}).setdefault(s.side, []).append(s)
    for transfer_id in sorted(by_id):
        logged = by_id[transfer_id]
        owner_sides = logged.get("owner", [])
        requester_sides = logged.get("requester", [])
        for s in owner_sides + requester_sides:
            _check_own_side(s, members, result)
        _pair(owner_sides, requester_sides, node_of, unreadable, strict, result)
        _check_consent(owner_sides + requester_sides, records, result)
    return result


def _finding(kind: FindingKind, s: TransferSide, detail: str) -> Finding:
    """A finding about one side's event of a transfer."""
    return Finding(kind, (s.index,), detail, node=s.node, transfer_id=s.transfer_id)


def _check_own_side(s: TransferSide, members: Mapping[str, str], result: TransferCheck) -> None:
    own = s.owner if s.side == "owner" else s.requester
    missing = [
        name
        for name, value in (
            ("owner account", s.owner),
            ("requester account", s.requester),
            ("patient", s.patient),
            ("study", s.study),
            # A refusal names no consent (none was in force): only a side of a transfer that
            # began must say on which basis.
            ("consent", s.consent if s.released else ""),
            ("purpose", s.purpose),
        )
        if value is None
    ]
    if missing:
        result.findings.append(
            _finding(
                "transfer-incomplete",
                s,
                f"the {s.side} side's event does not name exactly one {', '.join(missing)}",
            )
        )
    elif own != members.get(s.node):
        result.findings.append(
            _finding(
                "transfer-mismatch",
                s,
                f"logged as the {s.side} side, but it names {own} as the {s.side}, "
                f"not this node's member {members.get(s.node)}",
            )
        )


def _pair(
    owner_sides: Sequence[TransferSide],
    requester_sides: Sequence[TransferSide],
    node_of: Mapping[str, str],
    unreadable: Mapping[str, str],
    strict: bool,
    result: TransferCheck,
) -> None:
    for mine, theirs, other_side in (
        (owner_sides, requester_sides, "requester"),
        (requester_sides, owner_sides, "owner"),
    ):
        for s in mine:
            other = s.requester if other_side == "requester" else s.owner
            if other is None or not s.binds_other_side:
                continue  # reported as incomplete; or nothing to find on the other side
            other_node = node_of.get(other)
            if other_node is None:
                reason = (
                    f"could not be read ({unreadable[other]})"
                    if other in unreadable
                    else "is not among the nodes verified"
                )
                result.unverifiable.append(
                    Unverifiable(s.node, s.transfer_id, s.index, s.side, other, reason)
                )
                if strict:
                    result.findings.append(
                        _finding(
                            "transfer-unverifiable",
                            s,
                            f"the {other_side} {other} {reason}",
                        )
                    )
                continue
            counterpart = [t for t in theirs if t.node == other_node]
            if not counterpart:
                event = "IMPORT" if other_side == "requester" else "INSTANCES_TRANSFERRED"
                result.findings.append(
                    _finding(
                        "transfer-unpaired",
                        s,
                        f"logged by the {s.side} only: the {other_side} {other_node} has no "
                        f"{event} event with this transfer id",
                    )
                )
            elif other_side == "requester" and all(disagreements(s, t) for t in counterpart):
                t = counterpart[0]
                differ = disagreements(s, t)
                result.findings.append(
                    _finding(
                        "transfer-mismatch",
                        s,
                        f"the owner's and the requester's events ({t.node} entry {t.index}) "
                        f"disagree on the {', '.join(differ)}",
                    )
                )


def _check_consent(
    logged: Sequence[TransferSide], records: LedgerRecords, result: TransferCheck
) -> None:
    # The requester's event states what it relied on; the owner's stands in when it is alone.
    ordered = sorted(logged, key=lambda s: s.side != "requester")
    facts = ordered[0]
    if not any(s.released for s in logged):
        result.accesses.not_released += 1
        return
    owner, requester, patient = facts.owner, facts.requester, facts.patient
    consent, purpose_label = facts.consent, facts.purpose
    if owner is None or requester is None or patient is None or consent is None:
        return  # transfer-incomplete already says why it cannot be checked
    if purpose_label is None or not _ADDRESS.match(patient):
        return
    result.accesses.checked += 1

    purpose = int(Purpose.parse(purpose_label))
    cited_tx = (
        consent.removeprefix(BREAK_GLASS_PREFIX) if consent.startswith(BREAK_GLASS_PREFIX) else None
    )
    ref = cited_tx if cited_tx is not None else consent
    ref_bytes = bytes.fromhex(ref[2:]) if _HASH32.match(ref) else None
    candidates = [
        r
        for r in records.accesses(requester)
        if r.provider.lower() == owner and r.patient.lower() == patient and r.purpose == purpose
    ]
    pool = [r for r in candidates if ref_bytes is not None and r.consent_ref == ref_bytes]
    if not pool:
        others = (
            f" ({len(candidates)} record(s) for this patient carry other consent references)"
            if candidates
            else ""
        )
        result.findings.append(
            _finding(
                "access-not-recorded",
                facts,
                f"no CrossHospitalAccess on chain by the requester {requester} for the "
                f"owner {owner}, this patient and purpose {purpose_label} with the consent "
                f"reference the events name{others}",
            )
        )
        return
    if any(r.permitted for r in pool):
        result.accesses.consented += 1
        return
    last_block = max(r.block_number for r in pool)
    studies = {r.study_hash for r in pool} | {_ZERO32}
    valid = [
        b
        for b in records.break_glass(patient, requester)
        if b.block_number <= last_block and b.study_hash in studies
    ]
    if cited_tx is not None:
        valid = [b for b in valid if b.tx_hash.lower() == cited_tx.lower()]
    if valid:
        result.accesses.break_glass += 1
        return
    blocks = ", ".join(str(r.block_number) for r in pool)
    cited = (
        f"; the cited break-glass transaction {cited_tx} is no BreakGlass by the requester for "
        "this patient and study before the access"
        if cited_tx is not None
        else ""
    )
    result.findings.append(
        _finding(
            "access-without-consent",
            facts,
            f"the access recorded on chain in block(s) {blocks} had no consent in force "
            f"(permitted=false) and no break-glass by the requester {requester} for this "
            f"patient and study precedes it{cited}",
        )
    )
