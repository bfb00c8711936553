"""One audit event per inbound HL7 message, recorded before its ACK is sent.

ADT messages are PS3.15 A.5.3.10 "Patient Record" events, orders A.5.3.9 "Order Record"; the
action follows the trigger (A01/A04 register: Create, A08/A40: Update; ORC-1 NW: Create, XO:
Update, CA/DC: Delete); the outcome follows MSA-1 (AA success, AR/AE minor failure, AE 207
"application internal error" serious failure). The sending application and facility (MSH-3/4)
are the requesting agent; the patient (PID-3, and MRG-1 for a merge) and the orders (accession
numbers) are the entities, pseudonymised.
"""

from __future__ import annotations

from ledger.audit_events import Action, EntityKind, EventType, Outcome, ParticipantRole, uid_hash
from node.hl7.message import HL7SyntaxError, Message, parse
from node.services.audit import Actor, NodeAudit, token_or_hash

_ORDER_ACTIONS = {
    "NW": Action.CREATE,
    "XO": Action.UPDATE,
    "CA": Action.DELETE,
    "DC": Action.DELETE,
}
_ADT_ACTIONS = {"A01": Action.CREATE, "A04": Action.CREATE}


def audit_hl7(audit: NodeAudit, text: str, ack: str) -> int:
    """Record the message ``text`` answered by ``ack`` (blocking until durable)."""
    try:
        msg: Message | None = parse(text)
    except HL7SyntaxError:
        msg = None
    event_type, action, entities = EventType.APPLICATION_ACTIVITY, Action.EXECUTE, []
    who = "hl7:unknown"
    if msg is not None:
        msh = msg.msh
        sender = f"{msh.value(3)}@{msh.value(4)}"
        who = f"hl7:{token_or_hash(sender)}"
        kind, trigger = msh.value(9, 1).upper(), msh.value(9, 2).upper()
        entities = _entities(audit, msg)
        if kind == "ADT":
            event_type = EventType.PATIENT_RECORD
            action = _ADT_ACTIONS.get(trigger, Action.UPDATE)
        elif kind in ("ORM", "OMI"):
            event_type = EventType.ORDER_RECORD
            orc = msg.first("ORC")
            action = _ORDER_ACTIONS.get(orc.value(1).upper() if orc else "", Action.UPDATE)
    actor = Actor(who, ParticipantRole.SOURCE)
    event = audit.event(event_type, action, _outcome(ack), actor, entities)
    return audit.record(event)


def _entities(audit: NodeAudit, msg: Message) -> list[tuple[EntityKind, str]]:
    entities: list[tuple[EntityKind, str]] = []
    pid = msg.first("PID")
    if pid is not None:
        for rep in range(len(pid.repetitions(3))):
            mrn = pid.value(3, 1, rep=rep)
            if mrn:
                entities.append(
                    (EntityKind.PATIENT, audit.patient_ref(mrn, pid.value(3, 4, rep=rep)))
                )
    for mrg in msg.all("MRG"):
        if mrg.value(1):
            entities.append((EntityKind.PATIENT, audit.patient_ref(mrg.value(1), mrg.value(1, 4))))
    for ipc in msg.all("IPC"):
        if ipc.value(1):
            entities.append((EntityKind.ORDER, uid_hash(ipc.value(1))))
    for obr in msg.all("OBR"):
        if obr.value(18):
            entities.append((EntityKind.ORDER, uid_hash(obr.value(18))))
    return entities


def _outcome(ack: str) -> Outcome:
    try:
        reply = parse(ack)
    except HL7SyntaxError:
        return Outcome.SERIOUS_FAILURE
    msa = reply.first("MSA")
    code = msa.value(1).upper() if msa is not None else ""
    if code in ("AA", "CA"):
        return Outcome.SUCCESS
    err = reply.first("ERR")
    if err is not None and err.value(3, 1) == "207":
        return Outcome.SERIOUS_FAILURE  # the node failed, not the message
    return Outcome.MINOR_FAILURE
