"""The node's audit trail: every access on every interface becomes an event in its Merkle log.

Events are the ledger's (``ledger.audit_events``: DICOM PS3.15 A.5 / FHIR R4 AuditEvent
vocabulary) and go into the node's ``AuditLog`` through an ``AuditRecorder`` (group commit), so
a caller is answered only once its event is durable: nothing the node acknowledges is missing
from the log, even after a crash.

Where the log lives: its own SQLite file, ``DATA_DIR/audit.sqlite`` — the file ``pacsmesh audit
verify|prove|anchor --data-dir`` open — whatever database holds the index. It is the node's
private, append-only store with its own tables and metadata (``AuditLog`` owns them, not the
index's Alembic migrations), it must outlive index rebuilds, and its commits (``synchronous=FULL``)
do not contend with the index's writers.

No personal data in events: patients appear only as a keyed pseudonym (HMAC-SHA-256 under the
node's audit pseudonym key, written ``sha256:<hex>``: a bare hash of an MRN could be reversed by
trying every MRN) or a ledger address; UIDs, accession numbers and queries as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from ledger.anchor import AnchorWorker, AuditAnchorClient
from ledger.audit_events import (
    Action,
    Agent,
    AuditEvent,
    Entity,
    EntityKind,
    EventType,
    Outcome,
    ParticipantRole,
    Purpose,
    Source,
    uid_hash,
)
from ledger.audit_log import AuditLog
from ledger.audit_recorder import AuditRecorder
from node.auth.policy import SERVICE_ROLES, Principal
from node.storage.crypto import KEY_BYTES, load_or_create_secret

log = logging.getLogger("pacsmesh.audit")

AUDIT_DB_FILE: Final = "audit.sqlite"  # the name ledger/audit_cli.py opens in --data-dir
PSEUDONYM_KEY_FILE: Final = "audit-pseudonym.key"
_TOKEN: Final = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,256}$")
_ADDRESS: Final = re.compile(r"^0x[0-9a-fA-F]{40}$")
ANONYMOUS: Final = "anonymous"


def token_or_hash(value: str) -> str:
    """An identifier as an event token: itself when it is one, else its SHA-256 hash."""
    return value if _TOKEN.match(value) else uid_hash(value)


def outcome_for_status(status: int | None) -> Outcome:
    """FHIR R4 audit-event-outcome for an HTTP status (None: no response was sent at all)."""
    if status is None:
        return Outcome.MAJOR_FAILURE
    if status < 400:
        return Outcome.SUCCESS
    if status < 500:
        return Outcome.MINOR_FAILURE  # "often equivalent to an HTTP 400 response"
    return Outcome.SERIOUS_FAILURE  # "often equivalent to an HTTP 500 response"


@dataclass(frozen=True)
class Actor:
    """Who asked, as the audit trail names them (PS3.15 A.5.2 ActiveParticipant)."""

    who: str
    role: ParticipantRole
    network_address: str | None = None

    def agent(self) -> Agent:
        """The requesting agent of an event."""
        address = self.network_address
        if address is not None and not re.fullmatch(r"[A-Za-z0-9.:\[\]%-]{1,255}", address):
            address = None
        return Agent(who=self.who, role=self.role, requestor=True, network_address=address)


class NodeAudit:
    """The node's audit trail: builds events, records them durably, knows its pseudonyms."""

    def __init__(self, audit_log: AuditLog, source_node: str, pseudonym_key: bytes) -> None:
        self.log = audit_log
        self.recorder = AuditRecorder(audit_log)
        self.source = Source(node=token_or_hash(source_node))
        self._key = pseudonym_key
        self._closed = threading.Event()

    @classmethod
    def open(cls, data_dir: Path, source_node: str, sync: str = "NORMAL") -> NodeAudit:
        """Open (or create) the node's log in ``data_dir`` and its pseudonym key.

        ``sync`` NORMAL (the node's default): an event is committed before the request is
        answered and survives the node process crashing; a power loss may lose the events of
        the last moments before it (SQLite WAL flushes at checkpoints). FULL closes that window
        at the cost of an fsync per request (docs/security-audit.md).
        """
        key = load_pseudonym_key(data_dir / "keys" / PSEUDONYM_KEY_FILE)
        log = AuditLog.open(data_dir / AUDIT_DB_FILE, sqlite_sync=sync)
        return cls(log, source_node, key)

    def close(self) -> None:
        """Commit every event already queued, then release the database."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.recorder.close()
        self.log.close()

    # -- pseudonyms --------------------------------------------------------------------------

    def patient_ref(self, mrn: str, issuer: str | None = "") -> str:
        """A patient's pseudonym from the MRN and its issuer (same on every interface)."""
        return self._keyed(f"mrn\x00{issuer or ''}\x00{mrn}")

    def patient_resource_ref(self, patient_id: str) -> str:
        """A patient's pseudonym from their FHIR Patient id."""
        return self._keyed(f"Patient\x00{patient_id}")

    def _keyed(self, text: str) -> str:
        return "sha256:" + hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def patient_actor(self, mrn: str, issuer: str, address: str | None, host: str | None) -> Actor:
        """A patient acting for themselves: their ledger address, else their pseudonym."""
        who = address.lower() if address and _ADDRESS.match(address) else None
        return Actor(who or self.patient_ref(mrn, issuer), ParticipantRole.PATIENT, host)

    def principal_actor(self, principal: Principal, host: str | None) -> Actor:
        """An authenticated principal as the requesting agent (PS3.15 A.5.2 ActiveParticipant).

        A patient acts as themselves (``patient_actor``) and staff in their role. A service
        credential (the trainer) is a machine, not a person: DICOM CID 402 names it by the
        Application role (110150). A role the vocabulary lacks falls back to Source (110153),
        the requesting process, as an unauthenticated caller is named.
        """
        bound = principal.patient
        if principal.role == "patient" and bound is not None:
            return self.patient_actor(bound.mrn, bound.issuer, bound.address, host)
        who = f"user:{token_or_hash(principal.subject)}"
        if principal.role in SERVICE_ROLES:
            return Actor(who, ParticipantRole.APPLICATION, host)
        try:
            return Actor(who, ParticipantRole(principal.role), host)
        except ValueError:
            return Actor(who, ParticipantRole.SOURCE, host)

    # -- recording ---------------------------------------------------------------------------

    def event(
        self,
        event_type: EventType,
        action: Action,
        outcome: Outcome,
        actor: Actor,
        entities: Iterable[tuple[EntityKind, str]] = (),
        purpose: Purpose | None = None,
    ) -> AuditEvent:
        """One event observed by this node now."""
        unique = list(dict.fromkeys(entities))
        return AuditEvent(
            event_type=event_type,
            action=action,
            outcome=outcome,
            recorded=datetime.now(UTC),
            agents=[actor.agent()],
            entities=[Entity(kind=k, ref=r) for k, r in unique[:1024]],
            source=self.source,
            purpose=purpose,
        )

    def record(self, event: AuditEvent) -> int:
        """Record an event; returns its leaf index once it is durable (blocking)."""
        return self.recorder.record(event)

    async def record_async(self, event: AuditEvent) -> int:
        """Record an event without blocking the event loop; returns once it is durable.

        A client that goes away while its event is being committed does not withdraw the event
        (``record_in_loop`` records it whether or not anyone still awaits it): the access
        happened all the same.
        """
        return await self.recorder.record_in_loop(event)


def load_pseudonym_key(path: Path) -> bytes:
    """The node's audit pseudonym key (32 random bytes, created on first use, mode 0600).

    It must never change: pseudonyms made under another key no longer link a patient's events,
    so a file of any other length (an edit, a stray newline) is refused rather than used.
    """
    return load_or_create_secret(path, "audit pseudonym key", max_bytes=KEY_BYTES)


def fhir_entities(
    audit: NodeAudit, resource_type: str, resource_id: str
) -> list[tuple[EntityKind, str]]:
    """The entities a FHIR resource reference names (``Patient/12``: the patient's pseudonym)."""
    if resource_type == "Patient":
        return [(EntityKind.PATIENT, audit.patient_resource_ref(resource_id))]
    if resource_type == "ImagingStudy":  # its id is the Study Instance UID
        return [(EntityKind.STUDY, uid_hash(resource_id))]
    if resource_type == "ServiceRequest":
        return [(EntityKind.ORDER, uid_hash(f"ServiceRequest/{resource_id}"))]
    if resource_type in ("DiagnosticReport", "Observation"):
        return [(EntityKind.REPORT, uid_hash(f"{resource_type}/{resource_id}"))]
    if resource_type == "Consent":
        return [(EntityKind.CONSENT, token_or_hash(resource_id))]
    return []


# -- DIMSE (PS3.7) ------------------------------------------------------------------------------
# Called by the node/dimse handlers once their answer is known and before it is sent, so an
# association never sees a status for an operation the log lacks.

DIMSE_SERVICES: Final[dict[str, tuple[EventType, Action]]] = {
    # PS3.15 A.5.3.3: a C-STORE received is "DICOM Instances Transferred", action Create.
    "C-STORE": (EventType.INSTANCES_TRANSFERRED, Action.CREATE),
    # PS3.15 A.5.3.12: a C-FIND (and the worklist) is a Query, action Execute.
    "C-FIND": (EventType.QUERY, Action.EXECUTE),
    "MWL": (EventType.QUERY, Action.EXECUTE),
    # PS3.15 A.5.3.3: C-MOVE/C-GET send instances out: Transferred, action Read.
    "C-MOVE": (EventType.INSTANCES_TRANSFERRED, Action.READ),
    "C-GET": (EventType.INSTANCES_TRANSFERRED, Action.READ),
    "C-ECHO": (EventType.APPLICATION_ACTIVITY, Action.EXECUTE),
}


def dimse_status_outcome(status: int) -> Outcome:
    """PS3.7 C.4 status classes: success, warning (0001, Bxxx), cancel (FE00), failure."""
    if status == 0x0000 or status == 0xFF00 or status == 0xFF01:
        return Outcome.SUCCESS
    if status == 0x0001 or (status & 0xF000) == 0xB000 or status == 0xFE00:
        return Outcome.MINOR_FAILURE
    return Outcome.SERIOUS_FAILURE


def audit_dimse(
    audit: NodeAudit,
    service: str,
    status: int,
    *,
    calling_ae: str,
    peer_host: str | None,
    study_uids: Sequence[str] = (),
    sop_instance_uids: Sequence[str] = (),
    patient_id: str | None = None,
    issuer: str | None = None,
    accession: str | None = None,
    query: str | None = None,
) -> int:
    """Record one DIMSE operation (blocking until durable); returns its leaf index.

    ``service`` is ``C-STORE``, ``C-FIND``, ``MWL``, ``C-MOVE``, ``C-GET`` or ``C-ECHO``;
    ``status`` the DIMSE status the SCP answers; ``query`` the identifier's canonical text
    (hashed here); the calling AE title is the requesting agent.
    """
    event_type, action = DIMSE_SERVICES[service]
    actor = Actor(f"ae:{token_or_hash(calling_ae.strip())}", ParticipantRole.SOURCE, peer_host)
    entities: list[tuple[EntityKind, str]] = []
    if patient_id:
        entities.append((EntityKind.PATIENT, audit.patient_ref(patient_id, issuer)))
    entities += [(EntityKind.STUDY, uid_hash(u)) for u in study_uids]
    entities += [(EntityKind.INSTANCE, uid_hash(u)) for u in sop_instance_uids]
    if accession:
        entities.append((EntityKind.ORDER, uid_hash(accession)))
    if query is not None:
        entities.append((EntityKind.QUERY, uid_hash(query)))
    event = audit.event(event_type, action, dimse_status_outcome(status), actor, entities)
    return audit.record(event)


def tls_refusal_event(
    audit: NodeAudit, peer_host: str | None, reason: str, listener: str = "dicom-tls"
) -> AuditEvent:
    """A refused TLS handshake: PS3.15 A.5.3.11 Security Alert, "Node Authentication" failed.

    The peer is known only by its address (when the listener has it); the entity names the
    listener and the reason token (``dicom-tls:not-tls``, ``https:certificate-not-trusted``).
    """
    actor = Actor(ANONYMOUS, ParticipantRole.SOURCE, peer_host)
    entities = [(EntityKind.NODE, f"{listener}:{token_or_hash(reason)}")]
    return audit.event(
        EventType.SECURITY_ALERT, Action.EXECUTE, Outcome.MINOR_FAILURE, actor, entities
    )


def audit_tls_refusal(audit: NodeAudit, peer_host: str, reason: str) -> int:
    """Record a refused DICOM TLS handshake (blocking until durable); returns its leaf index."""
    return audit.record(tls_refusal_event(audit, peer_host, reason))


def audit_https_refusal(audit: NodeAudit, reason: str) -> None:
    """Record a refused HTTPS handshake without blocking (it happens on the event loop and
    answers nobody); a failure to record is logged, not lost silently."""
    future = audit.recorder.record_async(tls_refusal_event(audit, None, reason, "https"))

    def done(f: Future[int]) -> None:
        if f.exception() is not None:
            log.error("a refused HTTPS handshake could not be audited: %s", f.exception())

    future.add_done_callback(done)


# -- anchoring ------------------------------------------------------------------------------------


def start_anchoring(
    audit_log: AuditLog,
    anchor_client: AuditAnchorClient,
    every_events: int = 1000,
    every_seconds: float = 60.0,
) -> AnchorWorker:
    """Anchor the log's root on chain every N events or T seconds, in the background.

    The caller stops it (``worker.stop()``, which anchors what is pending) before closing the
    log. Chain outages only delay anchors: the events are durable in the log already.
    """
    worker = AnchorWorker(audit_log, anchor_client, every_events, every_seconds)
    worker.start()
    return worker
