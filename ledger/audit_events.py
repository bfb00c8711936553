"""Audit events in the DICOM PS3.15 A.5 / FHIR R4 AuditEvent vocabulary, canonically encoded.

An event says what happened (``event_type`` from DICOM CID 400, ``action`` C/R/U/D/E, ``outcome``
0/4/8/12 as in FHIR R4 ``audit-event-outcome``), when it was recorded, who took part (agents,
as PS3.15 A.5.2 ActiveParticipant), what it touched (entities, as ParticipantObjectIdentification)
and which node observed it (source, as AuditSourceIdentification).

The leaf bytes of the audit log are the event's canonical JSON (RFC 8785 for the value types this
model allows: objects, arrays, strings, booleans and safe integers): keys sorted, no whitespace,
UTF-8, optional fields omitted rather than null. Any party can re-encode a decoded event and get
the same bytes, hence the same leaf hash.

No plaintext personal data: patients appear only as pseudonymous references (a ledger address or
a hash), studies and queries only as hashes. The model rejects anything else in those places and
refuses unknown fields, so free text cannot smuggle identifiers into the tamper-evident log.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

SCHEMA_VERSION: Final = 1
_MAX_SAFE_INT = 2**53 - 1  # RFC 8785 §3.2.2.3: numbers are IEEE 754 doubles


class AuditEventError(ValueError):
    """An audit event that cannot be accepted (malformed, or carrying personal data)."""


class EventType(StrEnum):
    """DICOM CID 400 "Audit Event ID" (PS3.16), as PS3.15 A.5.3 uses them."""

    APPLICATION_ACTIVITY = "110100"
    AUDIT_LOG_USED = "110101"
    BEGIN_TRANSFERRING_INSTANCES = "110102"
    INSTANCES_ACCESSED = "110103"
    INSTANCES_TRANSFERRED = "110104"
    STUDY_DELETED = "110105"
    EXPORT = "110106"
    IMPORT = "110107"
    NETWORK_ENTRY = "110108"
    ORDER_RECORD = "110109"
    PATIENT_RECORD = "110110"
    PROCEDURE_RECORD = "110111"
    QUERY = "110112"
    SECURITY_ALERT = "110113"
    USER_AUTHENTICATION = "110114"

    @property
    def display(self) -> str:
        """The code's display name, e.g. "Query"."""
        return _EVENT_DISPLAY[self]


_EVENT_DISPLAY = {
    EventType.APPLICATION_ACTIVITY: "Application Activity",
    EventType.AUDIT_LOG_USED: "Audit Log Used",
    EventType.BEGIN_TRANSFERRING_INSTANCES: "Begin Transferring DICOM Instances",
    EventType.INSTANCES_ACCESSED: "DICOM Instances Accessed",
    EventType.INSTANCES_TRANSFERRED: "DICOM Instances Transferred",
    EventType.STUDY_DELETED: "DICOM Study Deleted",
    EventType.EXPORT: "Export",
    EventType.IMPORT: "Import",
    EventType.NETWORK_ENTRY: "Network Entry",
    EventType.ORDER_RECORD: "Order Record",
    EventType.PATIENT_RECORD: "Patient Record",
    EventType.PROCEDURE_RECORD: "Procedure Record",
    EventType.QUERY: "Query",
    EventType.SECURITY_ALERT: "Security Alert",
    EventType.USER_AUTHENTICATION: "User Authentication",
}
# Input may name an event type ("query", "instances-accessed") instead of giving its code.
_EVENT_ALIASES = {e.name.lower().replace("_", "-"): e for e in EventType}


class Action(StrEnum):
    """PS3.15 A.5.1 EventActionCode / FHIR ``audit-event-action``."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(IntEnum):
    """PS3.15 A.5.1 EventOutcomeIndicator / FHIR R4 ``audit-event-outcome``."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class ParticipantRole(StrEnum):
    """DICOM CID 402 "Audit Active Participant Role ID" plus the pacsmesh user roles."""

    APPLICATION = "110150"
    APPLICATION_LAUNCHER = "110151"
    DESTINATION = "110152"
    SOURCE = "110153"
    DESTINATION_MEDIA = "110154"
    SOURCE_MEDIA = "110155"
    CLINICIAN = "clinician"
    RADIOLOGIST = "radiologist"
    PATIENT = "patient"
    AUDITOR = "auditor"
    ADMIN = "admin"
    NODE = "node"


class EntityKind(StrEnum):
    """What a participant object is (PS3.15 A.5.2 ParticipantObjectIDTypeCode, simplified)."""

    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"
    QUERY = "query"
    CONSENT = "consent"
    REPORT = "report"
    ORDER = "order"
    MODEL = "model"
    NODE = "node"
    # One cross-hospital transfer: both sides log its id (a UUID4 hex) so an auditor pairs them.
    TRANSFER = "transfer"


class Purpose(StrEnum):
    """Purpose of use (FHIR ``purposeOfEvent``), the same three the consent registry knows."""

    TREATMENT = "treatment"
    RESEARCH = "research"
    AI_TRAINING = "ai-training"


_HASH_REF = re.compile(r"^(sha256:[0-9a-f]{64}|0x[0-9a-f]{64})$")
_ADDRESS_REF = re.compile(r"^0x[0-9a-f]{40}$")
_TOKEN = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,256}$")
_NETWORK_ADDRESS = re.compile(r"^[A-Za-z0-9.:\[\]%-]{1,255}$")
# Kinds whose reference could identify a person: only a pseudonym or a hash may stand there.
_PSEUDONYMOUS_KINDS = {
    EntityKind.PATIENT: "a patient's ledger address (0x + 40 hex) or a hash (sha256:…)",
    EntityKind.STUDY: "a hash of the Study Instance UID (sha256:… or 0x + 64 hex)",
    EntityKind.SERIES: "a hash of the Series Instance UID",
    EntityKind.INSTANCE: "a hash of the SOP Instance UID",
    EntityKind.QUERY: "a hash of the query (sha256:…)",
    EntityKind.REPORT: "a hash of the report's identifier",
    EntityKind.ORDER: "a hash of the order's accession number",
}

Token = Annotated[str, Field(pattern=_TOKEN.pattern)]


def uid_hash(value: str) -> str:
    """A pseudonymous reference to a UID, accession number or query: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()


def patient_ref(address: str) -> str:
    """A patient's reference: their ledger address, lower-cased (a pseudonym, never a name)."""
    ref = address.lower()
    if not _ADDRESS_REF.match(ref):
        raise AuditEventError("a patient reference must be a ledger address (0x + 40 hex digits)")
    return ref


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Agent(_Strict):
    """An active participant (PS3.15 A.5.2 ActiveParticipant / FHIR ``AuditEvent.agent``)."""

    who: Annotated[str, Field(max_length=256)]
    role: ParticipantRole
    requestor: bool
    network_address: Annotated[str, Field(pattern=_NETWORK_ADDRESS.pattern)] | None = None

    @model_validator(mode="after")
    def _patient_pseudonym(self) -> Self:
        # A patient acting for themselves is known to the network only by their ledger address;
        # a node's own patient without one yet, by the node's pseudonymous hash of them.
        if self.role is ParticipantRole.PATIENT and not (
            _ADDRESS_REF.match(self.who) or _HASH_REF.match(self.who)
        ):
            raise ValueError(
                "a patient agent's who must be their ledger address (0x + 40 hex) "
                "or a pseudonymous hash (sha256:…)"
            )
        if not _TOKEN.match(self.who):
            raise ValueError("an agent's who must be one identifier token, no spaces")
        return self


class Entity(_Strict):
    """A participant object (PS3.15 A.5.2 ParticipantObject / FHIR ``AuditEvent.entity``)."""

    kind: EntityKind
    ref: Annotated[str, Field(max_length=256)]

    @model_validator(mode="after")
    def _pseudonymous(self) -> Self:
        if self.kind in _PSEUDONYMOUS_KINDS:
            ok = bool(_HASH_REF.match(self.ref))
            if self.kind is EntityKind.PATIENT:
                ok = ok or bool(_ADDRESS_REF.match(self.ref))
            if not ok:
                raise ValueError(
                    f"a {self.kind.value} entity's ref must be "
                    f"{_PSEUDONYMOUS_KINDS[self.kind]}; plaintext identifiers are refused"
                )
        elif not _TOKEN.match(self.ref):
            raise ValueError(f"a {self.kind.value} entity's ref must be one token, no spaces")
        return self


class Source(_Strict):
    """The observing node (PS3.15 A.5.2 AuditSourceIdentification / ``AuditEvent.source``)."""

    node: Token
    site: Token | None = None


class AuditEvent(_Strict):
    """One audit event; its canonical JSON is a leaf of the audit log."""

    v: Literal[1] = SCHEMA_VERSION
    event_type: EventType
    action: Action
    outcome: Outcome
    recorded: datetime
    agents: Annotated[list[Agent], Field(min_length=1, max_length=64)]
    entities: Annotated[list[Entity], Field(max_length=1024)] = []
    source: Source
    purpose: Purpose | None = None

    @field_validator("event_type", mode="before")
    @classmethod
    def _event_alias(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in _EVENT_ALIASES:
            return _EVENT_ALIASES[value.lower()]
        return value

    @field_validator("outcome", mode="before")
    @classmethod
    def _outcome_alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.upper().replace("-", "_")
            if key in Outcome.__members__:
                return Outcome[key]
            if value.isdigit():
                return int(value)
        return value

    @field_validator("recorded")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("recorded must carry a time zone (e.g. 2026-01-31T12:00:00Z)")
        return value.astimezone(UTC)

    @field_serializer("recorded")
    def _iso(self, value: datetime) -> str:
        # One fixed form (microseconds, "Z") so that equal instants encode to equal bytes.
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @field_serializer("outcome")
    def _outcome_int(self, value: Outcome) -> int:
        return int(value)

    def canonical(self) -> bytes:
        """The event's canonical JSON bytes: the audit log leaf."""
        # The model admits only ASCII tokens, booleans and small integers, so the per-value type
        # walk of canonical_json (a third of the cost of an append) can be skipped here.
        return _encode(self.model_dump(mode="json", exclude_none=True))

    @classmethod
    def from_canonical(cls, data: bytes) -> AuditEvent:
        """Decode leaf bytes back into an event."""
        return parse_event(json.loads(data.decode("utf-8")))

    @classmethod
    def now(cls, **fields: Any) -> AuditEvent:
        """An event recorded now (UTC)."""
        return parse_event({"recorded": datetime.now(UTC), **fields})


def parse_event(value: Any) -> AuditEvent:
    """Validate a decoded JSON object (or an ``AuditEvent``) into an ``AuditEvent``."""
    if isinstance(value, AuditEvent):
        return value
    if not isinstance(value, dict):
        raise AuditEventError("an audit event must be a JSON object")
    try:
        return AuditEvent.model_validate(value)
    except ValidationError as exc:
        # Name the fields and rules only: the rejected values may be exactly the personal data
        # that must not reach a log.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {_message(err)}"
            for err in exc.errors()
        )
        raise AuditEventError(f"invalid audit event: {problems}") from None


def _message(err: Any) -> str:
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON for objects, arrays, strings, booleans, null and safe integers.

    Python's encoder with sorted keys, no whitespace and raw UTF-8 matches RFC 8785 §3.2 for these
    types: keys here are ASCII, so code-point order equals the UTF-16 order RFC 8785 §3.2.3 asks
    for, and control characters are escaped as §3.2.2.2 specifies. Floats are refused because
    their RFC 8785 form (ECMAScript number serialisation) is not what Python prints.
    """
    _check_canonical_types(value)
    return _encode(value)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _encode(value: Any) -> bytes:
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise AuditEventError(
            "audit event text must be valid Unicode (no lone surrogates)"
        ) from None


def _check_canonical_types(value: Any) -> None:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise AuditEventError("integers in audit events must fit in 53 bits (RFC 8785)")
        return
    if isinstance(value, list):
        for item in value:
            _check_canonical_types(item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise AuditEventError("audit event keys must be ASCII strings")
            _check_canonical_types(item)
        return
    raise AuditEventError(f"audit events cannot hold {type(value).__name__} values")
