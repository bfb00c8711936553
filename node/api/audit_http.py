"""One audit event per HTTP request, durable before the response starts: an ASGI middleware.

It sits outside every other middleware (authentication included), so requests refused with
401/403 are recorded too. The event is committed when the response's status is known and before
its first byte leaves (``http.response.start`` is held until the event is durable): no client
ever receives an answer the log lacks, and if the event cannot be recorded the client gets a
500 instead of the data. A request that ends in an exception is recorded with outcome 12.

What is recorded comes from the request line only — the path (study/series/instance UIDs, FHIR
type and id) and the query (patient, accession, study) — plus what a route notes on the request
(``note_entities``: STOW's stored studies, a login's user), the principal the authentication
middleware left in ``request.state.principal`` (``anonymous`` when there is none) and the
client's address. No body is read and no database is queried on the request's path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.audit_events import (
    Action,
    EntityKind,
    EventType,
    ParticipantRole,
    Purpose,
    uid_hash,
)
from node.auth.policy import Principal
from node.services.audit import (
    ANONYMOUS,
    Actor,
    NodeAudit,
    fhir_entities,
    outcome_for_status,
    token_or_hash,
)

# Liveness, service descriptions and public keys: no data is accessed, nobody is identified.
UNAUDITED_PATHS: Final = frozenset(
    {
        "/healthz",
        "/auth/jwks.json",
        "/fhir/metadata",
        "/docs",
        "/docs/oauth2-redirect",
        "/openapi.json",
    }
)
_NOTES: Final = "audit_entities"
_LOGIN: Final = "audit_login"
_PURPOSE: Final = "audit_purpose"
_PEER: Final = "audit_peer"
_METHOD_ACTION: Final = {
    "GET": Action.READ,
    "HEAD": Action.READ,
    "POST": Action.CREATE,
    "PUT": Action.UPDATE,
    "PATCH": Action.UPDATE,
    "DELETE": Action.DELETE,
}
# FHIR resource type -> the DICOM CID 400 event its read or write is (PS3.15 A.5.3).
_FHIR_TYPES: Final = {
    "Patient": EventType.PATIENT_RECORD,
    "ServiceRequest": EventType.ORDER_RECORD,
    "ImagingStudy": EventType.INSTANCES_ACCESSED,
    "DiagnosticReport": EventType.PROCEDURE_RECORD,
    "Observation": EventType.PROCEDURE_RECORD,
    "Consent": EventType.PATIENT_RECORD,
    "AuditEvent": EventType.AUDIT_LOG_USED,
}
_DICOM_LEVELS: Final = {
    "studies": EntityKind.STUDY,
    "series": EntityKind.SERIES,
    "instances": EntityKind.INSTANCE,
}
# DICOMweb query keys (PS3.18 §8.3.4: keyword or tag) that name a patient, order or study.
_PATIENT_KEYS: Final = ("PatientID", "00100020")
_ISSUER_KEYS: Final = ("IssuerOfPatientID", "00100021")
_ACCESSION_KEYS: Final = ("AccessionNumber", "00080050")
_STUDY_KEYS: Final = ("StudyInstanceUID", "0020000D")

Entities = list[tuple[EntityKind, str]]
_PURPOSES: Final = frozenset(p.value for p in Purpose)
_ADDRESS: Final = re.compile(r"^0x[0-9a-fA-F]{40}$")


@dataclass(frozen=True)
class Classified:
    """What a request is, in the audit vocabulary."""

    event_type: EventType
    action: Action
    entities: Entities


def note_entities(request: Request, kind: EntityKind, refs: Iterable[str]) -> None:
    """Let a route add entities only it knows (e.g. the studies a STOW stored), as hashes."""
    notes: Entities = request.scope.setdefault("state", {}).setdefault(_NOTES, [])
    notes.extend((kind, r) for r in refs)


def note_studies(request: Request, study_uids: Iterable[str]) -> None:
    """Add the studies a request touched (their UIDs are hashed here)."""
    note_entities(request, EntityKind.STUDY, sorted({uid_hash(u) for u in study_uids}))


def note_purpose(request: Request, purpose: str) -> None:
    """The purpose of use a request declared (network routes), for its event."""
    request.scope.setdefault("state", {})[_PURPOSE] = purpose


def note_peer(request: Request, account: str) -> None:
    """The consortium member (its account) a peer request came from, once verified."""
    request.scope.setdefault("state", {})[_PEER] = account.lower()


def note_login(request: Request, username: str, role: str | None) -> None:
    """Name the user a sign-in was for; ``role`` only once it succeeded."""
    request.scope.setdefault("state", {})[_LOGIN] = (username, role)


class AuditMiddleware:
    """Records one event per HTTP request before the response may start."""

    def __init__(self, app: ASGIApp, audit: Callable[[], NodeAudit | None]) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUDITED_PATHS:
            await self.app(scope, receive, send)
            return
        audit = self.audit()
        if audit is None:  # only before start-up completed
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        recorded = False

        async def audited_send(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                await audit.record_async(build_event(audit, scope, state, message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except BaseException:
            if not recorded:
                recorded = True
                await audit.record_async(build_event(audit, scope, state, None))
            raise


def build_event(audit: NodeAudit, scope: Scope, state: dict[str, Any], status: int | None) -> Any:
    """The event for one request that ended with ``status`` (None: it raised)."""
    method: str = scope.get("method", "GET")
    path: str = scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    classified = classify(audit, method, path, query)
    entities = classified.entities + list(state.get(_NOTES, ()))
    client = scope.get("client")
    host = client[0] if client else None
    actor = _actor(audit, state, host)
    return audit.event(
        classified.event_type,
        classified.action,
        outcome_for_status(status),
        actor,
        entities,
        purpose=_purpose(state),
    )


def _purpose(state: dict[str, Any]) -> Purpose | None:
    """The purpose of use: what a network request declared, or what a purpose-bound principal
    (a training credential) acts for."""
    declared = state.get(_PURPOSE)
    if declared in _PURPOSES:
        return Purpose(declared)
    principal = state.get("principal")
    if isinstance(principal, Principal) and principal.purpose is not None:
        try:
            return Purpose(principal.purpose)
        except ValueError:
            return None
    return None


def _actor(audit: NodeAudit, state: dict[str, Any], host: str | None) -> Actor:
    peer = state.get(_PEER)
    if isinstance(peer, str):
        # Another member's node (mutual TLS): named by its member account.
        return Actor(peer, ParticipantRole.DESTINATION, host)
    principal = state.get("principal")
    if isinstance(principal, Principal):
        return audit.principal_actor(principal, host)
    login = state.get(_LOGIN)
    if login is not None:
        username, role_name = login
        if role_name is not None:  # signed in: the account is known
            try:
                return Actor(f"user:{token_or_hash(username)}", ParticipantRole(role_name), host)
            except ValueError:
                pass
        # A failed sign-in: the name typed may be anything (a password in the wrong field),
        # so only its hash is kept; an auditor can still match a known user name.
        return Actor(f"user:{uid_hash(username)}", ParticipantRole.SOURCE, host)
    # Unauthenticated: PS3.15 A.5.3 names the requesting process by its Source role (110153).
    return Actor(ANONYMOUS, ParticipantRole.SOURCE, host)


def classify(audit: NodeAudit, method: str, path: str, query: str) -> Classified:
    """The event type, action and entities of a request, from its method, path and query."""
    params = parse_qsl(query, keep_blank_values=False)
    action = _METHOD_ACTION.get(method, Action.EXECUTE)
    if path.startswith("/dicom-web/"):
        return _dicomweb(audit, method, path[len("/dicom-web/") :], params, query, action)
    if path.startswith("/fhir/"):
        return _fhir(audit, method, path[len("/fhir/") :], params, query, action)
    if path == "/auth/token":
        return Classified(EventType.USER_AUTHENTICATION, Action.EXECUTE, [])
    if path.startswith("/network/"):
        return _network(audit, method, path, params, query)
    if path.startswith("/gateway/"):
        # A capture becomes new DICOM instances: PS3.15 A.5.3.7 Import.
        return Classified(EventType.IMPORT, Action.CREATE, [])
    entities: Entities = []
    parts = path.strip("/").split("/")
    if path.startswith("/admin/reconciliation/") and len(parts) >= 3:
        entities.append((EntityKind.STUDY, uid_hash(parts[2])))
    return Classified(EventType.APPLICATION_ACTIVITY, action, entities)


def _query_entities(
    audit: NodeAudit, params: list[tuple[str, str]], path: str, query: str
) -> Entities:
    entities: Entities = []
    values: dict[str, list[str]] = {}
    for name, value in params:
        values.setdefault(name, []).append(value)
    issuer = next((v for k in _ISSUER_KEYS for v in values.get(k, [])), "")
    for key in _PATIENT_KEYS:
        for value in values.get(key, []):
            if "*" not in value and "?" not in value:  # a wildcard names no one patient
                entities.append((EntityKind.PATIENT, audit.patient_ref(value, issuer)))
    for key in _ACCESSION_KEYS:
        entities += [(EntityKind.ORDER, uid_hash(v)) for v in values.get(key, [])]
    for key in _STUDY_KEYS:
        for value in values.get(key, []):
            entities += [(EntityKind.STUDY, uid_hash(u)) for u in value.split(",") if u]
    for key in ("patient", "subject"):  # FHIR references to a Patient
        for value in values.get(key, []):
            for ref in value.split(","):
                if ref:
                    patient_id = ref.rstrip("/").split("/")[-1]
                    entities.append((EntityKind.PATIENT, audit.patient_resource_ref(patient_id)))
    for value in values.get("accession", []):
        entities.append((EntityKind.ORDER, uid_hash(value)))
    # PS3.15 A.5.3.12 records the query itself; the log keeps only its hash.
    entities.append((EntityKind.QUERY, uid_hash(f"{path}?{query}")))
    return entities


def _dicomweb(
    audit: NodeAudit,
    method: str,
    rest: str,
    params: list[tuple[str, str]],
    query: str,
    action: Action,
) -> Classified:
    parts = [p for p in rest.split("/") if p]
    entities: Entities = []
    i = 0
    while i < len(parts) and parts[i] in _DICOM_LEVELS:
        if i + 1 < len(parts):
            entities.append((_DICOM_LEVELS[parts[i]], uid_hash(parts[i + 1])))
        i += 2
    collection = bool(parts) and parts[-1] in _DICOM_LEVELS
    if method == "DELETE":
        # PS3.15 A.5.3.4: DICOM Study Deleted, action Delete (series and instances alike).
        return Classified(EventType.STUDY_DELETED, Action.DELETE, entities)
    if method == "POST":
        # STOW-RS receives instances: PS3.15 A.5.3.3 DICOM Instances Transferred, Create.
        return Classified(EventType.INSTANCES_TRANSFERRED, Action.CREATE, entities)
    if collection:
        # QIDO-RS: PS3.15 A.5.3.12 Query, action Execute.
        entities += _query_entities(audit, params, "/dicom-web/" + rest, query)
        return Classified(EventType.QUERY, Action.EXECUTE, entities)
    if parts and parts[-1] == "metadata":
        return Classified(EventType.INSTANCES_ACCESSED, Action.READ, entities)
    # WADO-RS instances, frames, bulk data, rendered: the instances leave the node (A.5.3.3).
    return Classified(EventType.INSTANCES_TRANSFERRED, Action.READ, entities)


def _fhir(
    audit: NodeAudit,
    method: str,
    rest: str,
    params: list[tuple[str, str]],
    query: str,
    action: Action,
) -> Classified:
    parts = [p for p in rest.split("/") if p]
    resource_type = parts[0] if parts else ""
    event_type = _FHIR_TYPES.get(resource_type, EventType.APPLICATION_ACTIVITY)
    entities: Entities = []
    if len(parts) >= 2:
        entities += fhir_entities(audit, resource_type, parts[1])
    elif method == "GET":
        # A search: a Query (A.5.3.12), except on the audit trail itself, which is "Audit Log
        # Used" (A.5.3.2) whatever the interaction.
        entities += _query_entities(audit, params, "/fhir/" + rest, query)
        if event_type is not EventType.AUDIT_LOG_USED:
            event_type = EventType.QUERY
        return Classified(event_type, Action.EXECUTE, entities)
    return Classified(event_type, action, entities)


def _network(
    audit: NodeAudit, method: str, path: str, params: list[tuple[str, str]], query: str
) -> Classified:
    """Network API requests. The transfers themselves get their own events from the exchange
    services (one per side, naming the transfer id); the request around a transfer is recorded
    here as its beginning (PS3.15 A.5.3.2 Begin Transferring DICOM Instances)."""
    parts = [p for p in path.split("/") if p]  # network, [peer,] studies, [uid, [$retrieve]]
    peer = len(parts) > 1 and parts[1] == "peer"
    rest = parts[2:] if peer else parts[1:]
    entities: Entities = []
    if rest[:1] == ["studies"] and len(rest) >= 2:
        entities.append((EntityKind.STUDY, uid_hash(rest[1])))
        action = Action.READ if peer else Action.CREATE
        return Classified(EventType.BEGIN_TRANSFERRING_INSTANCES, action, entities)
    if rest == ["studies"] and method == "GET":
        for name, value in params:
            if name != "patient" or not value:
                continue
            if _ADDRESS.match(value):
                entities.append((EntityKind.PATIENT, value.lower()))
            else:  # a local Patient id
                entities.append((EntityKind.PATIENT, audit.patient_resource_ref(value)))
        entities.append((EntityKind.QUERY, uid_hash(f"{path}?{query}")))
        return Classified(EventType.QUERY, Action.EXECUTE, entities)
    if rest == ["transfers"]:
        entities.append((EntityKind.QUERY, uid_hash(f"{path}?{query}")))
        return Classified(EventType.QUERY, Action.EXECUTE, entities)
    return Classified(
        EventType.APPLICATION_ACTIVITY, _METHOD_ACTION.get(method, Action.EXECUTE), entities
    )
