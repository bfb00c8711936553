"""Audit log entries as FHIR R4 AuditEvent resources, each with its Merkle inclusion proof.

The mapping follows the FHIR R4 AuditEvent ↔ DICOM PS3.15 A.5 correspondence: ``type`` is the
DICOM CID 400 code, ``subtype`` the FHIR restful-interaction, ``action`` and ``outcome`` as
recorded, one ``agent`` per ActiveParticipant (who as an identifier, role, network address),
``source`` the observing node, one ``entity`` per ParticipantObject (its pseudonymous reference
as an identifier whose system names the kind).

Every resource carries the extension ``PROOF_URL`` (docs/security-audit.md) so an auditor can
verify it without trusting the node: the leaf's canonical bytes (what was hashed), its index,
the tree size and root the proof is against, the RFC 6962 audit path, and — when an anchor on
chain covers the entry — the anchored size, root, transaction and block with the audit path to
that anchored root.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Final

from ledger.audit_events import EventType
from ledger.audit_log import AnchorRecord, AuditLog
from ledger.audit_wire import PROOF_URL
from node.fhir.audit_search import DCM, Hit, subtype_of

__all__ = ["PROOF_URL", "TreeHead", "audit_event_resource", "proof_extension"]
ENTITY_SYSTEM: Final = "https://pacsmesh.org/fhir/audit-entity/"
AGENT_SYSTEM: Final = "https://pacsmesh.org/fhir/audit-agent"
ROLE_SYSTEM: Final = "https://pacsmesh.org/fhir/CodeSystem/user-role"
PURPOSE_SYSTEM: Final = "https://pacsmesh.org/fhir/CodeSystem/purpose"
_RESTFUL: Final = "http://hl7.org/fhir/restful-interaction"
_ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
# PS3.15 A.5.2 ParticipantObjectTypeCodeRole for each entity kind: (type, role, role display).
_ENTITY_ROLES: Final = {
    "patient": ("1", "1", "Patient"),
    "study": ("2", "3", "Report"),
    "series": ("2", "3", "Report"),
    "instance": ("2", "3", "Report"),
    "query": ("2", "24", "Query"),
    "order": ("2", "20", "Job"),
    "report": ("2", "3", "Report"),
    "consent": ("2", "13", "Security Resource"),
}


@dataclass(frozen=True)
class TreeHead:
    """The tree an answer's proofs are against, fixed once per request."""

    size: int
    root: bytes
    anchors: list[AnchorRecord]

    @classmethod
    def of(cls, log: AuditLog, size: int | None = None) -> TreeHead:
        """The log's head now (or at ``size``), with the anchors it recorded."""
        size = log.size() if size is None else size
        return cls(size, log.root(size), log.anchors())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def proof_extension(log: AuditLog, hit: Hit, head: TreeHead) -> dict[str, Any]:
    """The pacsmesh audit-log-proof extension of one entry."""
    parts: list[dict[str, Any]] = [
        {"url": "leaf", "valueBase64Binary": _b64(hit.body)},
        {"url": "leafIndex", "valueUnsignedInt": hit.leaf_index},
        {"url": "treeSize", "valueUnsignedInt": head.size},
        {"url": "root", "valueBase64Binary": _b64(head.root)},
    ]
    if hit.leaf_index < head.size:
        parts += [
            {"url": "path", "valueBase64Binary": _b64(h)}
            for h in log.inclusion_proof(hit.leaf_index, head.size)
        ]
    covering = [a for a in head.anchors if a.size > hit.leaf_index and a.size <= head.size]
    if covering:
        anchor = covering[-1]
        parts += [
            {"url": "anchoredSize", "valueUnsignedInt": anchor.size},
            {"url": "anchoredRoot", "valueBase64Binary": _b64(anchor.root)},
            {"url": "anchorTransaction", "valueString": anchor.tx_hash},
            {"url": "anchorBlock", "valueUnsignedInt": anchor.block_number},
        ]
        parts += [
            {"url": "anchoredPath", "valueBase64Binary": _b64(h)}
            for h in log.inclusion_proof(hit.leaf_index, anchor.size)
        ]
    return {"url": PROOF_URL, "extension": parts}


def audit_event_resource(log: AuditLog, hit: Hit, head: TreeHead) -> dict[str, Any]:
    """One log entry as a FHIR R4 AuditEvent, with its proof extension."""
    event = json.loads(hit.body)
    event_type = EventType(event["event_type"])
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(hit.leaf_index),
        "extension": [proof_extension(log, hit, head)],
        "type": {"system": DCM, "code": event_type.value, "display": event_type.display},
        "subtype": [{"system": _RESTFUL, "code": subtype_of(event_type.value, event["action"])}],
        "action": event["action"],
        "recorded": event["recorded"],
        "outcome": str(event["outcome"]),
        "agent": [_agent(a) for a in event["agents"]],
        "source": _source(event["source"]),
    }
    if event.get("purpose"):
        resource["purposeOfEvent"] = [
            {"coding": [{"system": PURPOSE_SYSTEM, "code": event["purpose"]}]}
        ]
    if event.get("entities"):
        resource["entity"] = [_entity(e) for e in event["entities"]]
    return resource


def _agent(agent: dict[str, Any]) -> dict[str, Any]:
    role = str(agent["role"])
    coding = (
        {"system": DCM, "code": role} if role.isdigit() else {"system": ROLE_SYSTEM, "code": role}
    )
    out: dict[str, Any] = {
        "type": {"coding": [coding]},
        "who": {"identifier": {"system": AGENT_SYSTEM, "value": agent["who"]}},
        "requestor": bool(agent["requestor"]),
    }
    if agent.get("network_address"):
        # R4 network-type 2: an IP address (names are type 1).
        address = agent["network_address"]
        kind = "2" if any(c.isdigit() for c in address.split(".")[-1]) or ":" in address else "1"
        out["network"] = {"address": address, "type": kind}
    return out


def _source(source: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "observer": {"identifier": {"system": AGENT_SYSTEM, "value": source["node"]}},
        "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    if source.get("site"):
        out["site"] = source["site"]
    return out


def _entity(entity: dict[str, Any]) -> dict[str, Any]:
    kind = entity["kind"]
    type_code, role_code, role_display = _ENTITY_ROLES.get(kind, ("2", "4", "Domain Resource"))
    return {
        "what": {"identifier": {"system": ENTITY_SYSTEM + kind, "value": entity["ref"]}},
        "type": {"system": _ENTITY_TYPE, "code": type_code},
        "role": {"system": _OBJECT_ROLE, "code": role_code, "display": role_display},
    }
