"""Roles, SMART-on-FHIR-style scopes and the principal a request acts as: default deny.

A scope is `context/ResourceType.action` (SMART App Launch v1, §"Scopes for requesting clinical
data"): context `user` (what the signed-in user may see), `patient` (only the bound patient's
compartment) or `system` (a backend service); action `read`, `write` or `*`; resource `*` for
every type. A principal holds the scopes its token carries, capped by what its role may ever
hold, so a token cannot lift a role above its ceiling. Unknown roles and malformed scopes grant
nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ledger.audit_events import Purpose
from node.errors import ForbiddenError

Role = Literal["clinician", "radiologist", "patient", "auditor", "admin"]
ROLES: tuple[Role, ...] = ("clinician", "radiologist", "patient", "auditor", "admin")
# Service roles: token-only accounts an administrator makes for a machine, never a person's
# sign-in (no password, not mapped from an OIDC provider). The role fixes the purpose of use.
TRAINER = "trainer"
SERVICE_ROLES: tuple[str, ...] = (TRAINER,)
# The purpose a purpose-bound role acts for (ledger Purpose / FHIR purposeOfEvent spelling):
# a trainer sees only what patients consented to for AI training, de-identified.
ROLE_PURPOSES: dict[str, str] = {TRAINER: Purpose.AI_TRAINING}
ACTIONS = ("read", "write")
CONTEXTS = ("user", "patient", "system")

_SCOPE_RE = re.compile(r"^(user|patient|system)/(\*|[A-Z][A-Za-z]{0,63})\.(read|write|\*)$")

# What clinical staff read: the patient record around imaging, not the audit trail.
_CLINICAL_READ = (
    "Patient",
    "ImagingStudy",
    "ServiceRequest",
    "DiagnosticReport",
    "Observation",
    "Consent",
    "Organization",
    "Endpoint",
)


def _scopes(context: str, resources: Iterable[str], action: str) -> tuple[str, ...]:
    return tuple(f"{context}/{r}.{action}" for r in resources)


# Each role's scopes: the defaults a login gets and the ceiling any token of the role is capped
# to. Clinicians store captures and place orders; radiologists also report; patients read their
# own compartment and sign consents; auditors read the audit trail and consents only; admins
# run the node (DELETE, import, users) and issue service credentials (system scopes).
ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    "clinician": (
        *_scopes("user", _CLINICAL_READ, "read"),
        "user/ImagingStudy.write",
        "user/ServiceRequest.write",
    ),
    "radiologist": (
        *_scopes("user", _CLINICAL_READ, "read"),
        "user/ImagingStudy.write",
        "user/DiagnosticReport.write",
        "user/Observation.write",
    ),
    "patient": ("patient/*.read", "patient/Consent.write"),
    "auditor": (
        "user/AuditEvent.read",
        "user/Consent.read",
        "user/Organization.read",
        "user/Endpoint.read",
    ),
    "admin": ("user/*.*", "system/*.*"),
    # A backend reading images for federated training: DICOMweb reads only, and the route
    # table narrows it further to QIDO-RS and WADO-RS instances and metadata
    # (node.auth.middleware.PURPOSE_ROUTES).
    TRAINER: ("system/ImagingStudy.read",),
}


@dataclass(frozen=True)
class Scope:
    """One parsed scope."""

    context: str
    resource: str
    action: str

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        """The scope `text` names, or None when it is not a SMART clinical scope."""
        m = _SCOPE_RE.match(text)
        return cls(m.group(1), m.group(2), m.group(3)) if m else None

    def covers(self, other: Scope) -> bool:
        """True when holding self grants everything `other` grants."""
        return (
            self.context == other.context
            and self.resource in ("*", other.resource)
            and self.action in ("*", other.action)
        )

    def meet(self, other: Scope) -> Scope | None:
        """What both grant (`user/*.read` and `user/Patient.*` meet in `user/Patient.read`)."""
        if self.context != other.context:
            return None
        resource = _meet(self.resource, other.resource)
        action = _meet(self.action, other.action)
        return Scope(self.context, resource, action) if resource and action else None

    def __str__(self) -> str:
        return f"{self.context}/{self.resource}.{self.action}"


def _meet(a: str, b: str) -> str | None:
    if a == "*":
        return b
    if b in ("*", a):
        return a
    return None


def parse_scopes(text: str | Iterable[str]) -> tuple[Scope, ...]:
    """The SMART scopes in a space-separated string (or list); other words are ignored."""
    words = text.split() if isinstance(text, str) else list(text)
    found = (Scope.parse(w) for w in words)
    return tuple(s for s in found if s is not None)


def role_scopes(role: str) -> tuple[Scope, ...]:
    """The scopes a role may hold; none for an unknown role."""
    return parse_scopes(ROLE_SCOPES.get(role, ()))


def cap_scopes(role: str, requested: Iterable[Scope]) -> tuple[Scope, ...]:
    """The intersection of the requested scopes with the role's ceiling, without duplicates.

    A request within the ceiling is kept as is; a broader one (`user/*.read` for an auditor)
    is narrowed to the part the role may hold (`user/AuditEvent.read`, ...).
    """
    ceiling = role_scopes(role)
    kept: list[Scope] = []
    for scope in requested:
        if any(c.covers(scope) for c in ceiling):
            parts = [scope]
        else:
            parts = [m for c in ceiling if (m := scope.meet(c)) is not None]
        kept.extend(p for p in parts if p not in kept)
    return tuple(kept)


@dataclass(frozen=True)
class PatientBinding:
    """The patient a patient principal is: MRN and its issuer (later also a ledger address)."""

    mrn: str
    issuer: str = ""
    address: str | None = None


@dataclass(frozen=True)
class Principal:
    """Who a request acts as, once its token has been verified."""

    subject: str
    role: str
    scopes: tuple[Scope, ...]
    issuer: str
    token_id: str
    patient: PatientBinding | None = None

    @property
    def scope_text(self) -> str:
        """The scopes as a space-separated string (OAuth 2.0 form)."""
        return " ".join(str(s) for s in self.scopes)

    def allows(self, resource_type: str, action: str, contexts: Iterable[str] = CONTEXTS) -> bool:
        """True when some scope in one of `contexts` grants `action` on `resource_type`.

        A grant through a `patient/` scope covers only the bound patient's compartment: the
        caller must also call `check_patient_access` for the data it returns.
        """
        if self.role not in ROLE_SCOPES or action not in ACTIONS:
            return False
        allowed = set(contexts)
        for scope in self.scopes:
            if scope.context not in allowed:
                continue
            if scope.context == "patient" and self.patient is None:
                continue  # patient scopes mean nothing without a patient
            if scope.covers(Scope(scope.context, resource_type, action)):
                return True
        return False

    def satisfies(self, required: str) -> bool:
        """True when the principal holds the route requirement `required` (a scope).

        A `user/` requirement is also met by a `system/` scope (a backend service acting
        for the node); `patient/` and `system/` requirements only by their own context.
        """
        need = Scope.parse(required)
        if need is None:
            return False
        contexts = ("user", "system") if need.context == "user" else (need.context,)
        return self.allows(need.resource, need.action, contexts)

    @property
    def purpose(self) -> str | None:
        """The purpose of use this principal is bound to (None: decided per request)."""
        return ROLE_PURPOSES.get(self.role)

    @property
    def compartment_restricted(self) -> bool:
        """True for a patient principal: it sees only its own Patient compartment."""
        return self.role == "patient"


def make_principal(
    *,
    subject: str,
    role: str,
    scopes: Iterable[Scope],
    issuer: str,
    token_id: str,
    patient: PatientBinding | None = None,
) -> Principal:
    """A principal whose scopes are capped by its role; patient scopes need a patient role."""
    capped = cap_scopes(role, scopes)
    if role != "patient" or patient is None:
        # A patient without a binding, or staff holding patient scopes, get no patient access.
        capped = tuple(s for s in capped if s.context != "patient")
    return Principal(
        subject, role, capped, issuer, token_id, patient if role == "patient" else None
    )


def check_patient_access(principal: Principal, patient_mrn: str, issuer: str = "") -> None:
    """Refuse a patient principal access to any Patient compartment but its own.

    Staff principals pass (their scopes decide); what they may see of a patient from another
    hospital is the consent check's business, not this one.
    """
    if not principal.compartment_restricted:
        return
    bound = principal.patient
    if bound is None or bound.mrn != patient_mrn or bound.issuer != issuer:
        # Say nothing about whether the other patient exists.
        raise ForbiddenError("a patient may access only their own records")
