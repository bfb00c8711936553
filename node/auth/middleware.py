"""Default deny for the whole app: an ASGI middleware in front of every route.

Every HTTP request must carry a valid bearer token, except for the explicit public allow-list.
The token's principal must then hold a scope the route table names for the path and method; a
path the table does not name is refused to everyone (403). Routes check finer rules (a
patient's compartment) with the principal the middleware leaves in `request.state.principal`.
tests/node/test_auth_matrix.py holds every route of the app against this table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from ledger.audit_events import Purpose
from node.auth.deps import bearer_token
from node.auth.errors import InsufficientScopeError
from node.auth.tokens import NodeTokens
from node.errors import ForbiddenError, NodeError

# Reachable without a token: liveness, signing in, the node's public keys, the FHIR
# CapabilityStatement (FHIR R4 §3.1.0.1.7 lets clients discover it before authenticating) and
# the API description.
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/auth/token",
        "/auth/jwks.json",
        "/fhir/metadata",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)

# Node-to-node routes: authenticated by the caller's consortium client certificate instead of a
# token (node.api.peer_auth; every route under this prefix depends on it, and the access matrix
# test holds each one to "403 without a member certificate, whatever the token").
PEER_PREFIX = "/network/peer/"

READ_METHODS = frozenset({"GET", "HEAD"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class RouteRule:
    """Who may call a path with some methods: any one of `any_of` scopes, and if `roles` is
    set, only those roles.

    `prefix` ending in "/" covers every path below it; otherwise it covers the path itself and
    the paths below it (`/fhir/Patient` covers `/fhir/Patient/7`, not `/fhir/PatientX`).
    """

    prefix: str
    methods: frozenset[str]
    any_of: tuple[str, ...]
    roles: frozenset[str] | None = None

    def covers(self, path: str, method: str) -> bool:
        """True when this rule decides a request for `method path`."""
        if method not in self.methods:
            return False
        if self.prefix.endswith("/"):
            return path.startswith(self.prefix)
        return path == self.prefix or path.startswith(self.prefix + "/")


# Clinical FHIR types: staff read them (`user/`), a patient reads them only inside their own
# compartment (`patient/`; the read and search interactions filter, node.fhir.compartment).
_FHIR_CLINICAL = ("Patient", "ServiceRequest", "ImagingStudy", "DiagnosticReport", "Observation")
_ADMIN = frozenset({"admin"})
_TREATING = frozenset({"clinician", "radiologist"})

# First match wins; a request no rule covers is refused to everyone (default deny).
# - DICOMweb: no patient access until the routes filter by compartment. Deleting a study
#   destroys its key (crypto-shredding), and /admin runs the node: both need the admin role
#   with its unnarrowed scopes (`user/*.write` / `user/*.read`), so a service credential cut
#   from an admin account (`system/ImagingStudy.write` for a capture device) cannot reach them.
# - Capture gateway: a capture stores an imaging instance (clinicians, radiologists, admins,
#   or a device's `system/ImagingStudy.write` service credential).
# - FHIR: radiologists (and admins) write reports; the CapabilityStatement is public.
#   AuditEvent: auditors, admins, and a patient for their own events; Consent: staff and
#   auditors read, a patient (or an admin) submits one the patient signed.
# - Network: the staff who treat search the consortium and copy a study from its owner (a
#   cross-hospital access under the patient's consent, or break-glass); they, auditors and
#   admins read the provenance of the copies held here. Peer routes take no token (above).
ROUTE_RULES: tuple[RouteRule, ...] = (
    RouteRule("/dicom-web/", READ_METHODS, ("user/ImagingStudy.read",)),
    RouteRule("/dicom-web/", frozenset({"POST"}), ("user/ImagingStudy.write",)),
    RouteRule("/dicom-web/", frozenset({"DELETE"}), ("user/*.write",), _ADMIN),
    RouteRule("/gateway/captures", frozenset({"POST"}), ("user/ImagingStudy.write",)),
    *(
        RouteRule(f"/fhir/{t}", READ_METHODS, (f"user/{t}.read", f"patient/{t}.read"))
        for t in _FHIR_CLINICAL
    ),
    RouteRule(
        "/fhir/DiagnosticReport", frozenset({"POST", "PUT"}), ("user/DiagnosticReport.write",)
    ),
    # Patient/{id}/$link (a patient-signed link to their ledger address): administrators.
    RouteRule("/fhir/Patient", frozenset({"POST"}), ("user/Patient.write",)),
    RouteRule("/fhir/Endpoint", READ_METHODS, ("user/Endpoint.read",)),
    RouteRule(
        "/fhir/AuditEvent", READ_METHODS, ("user/AuditEvent.read", "patient/AuditEvent.read")
    ),
    # Patients join the Consent reads once that search filters to their own consents.
    RouteRule("/fhir/Consent", READ_METHODS, ("user/Consent.read",)),
    RouteRule(
        "/fhir/Consent", frozenset({"POST"}), ("user/Consent.write", "patient/Consent.write")
    ),
    RouteRule("/network/studies", READ_METHODS, ("user/ImagingStudy.read",), _TREATING),
    RouteRule("/network/studies", frozenset({"POST"}), ("user/ImagingStudy.write",), _TREATING),
    RouteRule(
        "/network/transfers",
        READ_METHODS,
        ("user/Consent.read",),
        frozenset({"clinician", "radiologist", "auditor", "admin"}),
    ),
    RouteRule("/admin/", READ_METHODS, ("user/*.read",), _ADMIN),
    RouteRule("/admin/", WRITE_METHODS, ("user/*.write",), _ADMIN),
)


_UID = r"[^/]+"  # the route validates the UID itself (a clear 400, not a 403)
_STUDY = rf"/dicom-web/studies/{_UID}"
_SERIES = rf"{_STUDY}/series/{_UID}"
_INSTANCE = rf"{_SERIES}/instances/{_UID}"

# What a purpose-bound principal may call, on top of its scopes: the training credential
# (purpose ai-training) searches (QIDO-RS at every level) and retrieves instances and their
# metadata (WADO-RS), which the node de-identifies on the way out (node.services.training).
# Frames, bulk data, rendered images and thumbnails are not de-identified responses, and
# every other route (FHIR, STOW-RS, DELETE, network, admin) is refused.
PURPOSE_ROUTES: dict[str, tuple[re.Pattern[str], ...]] = {
    Purpose.AI_TRAINING: tuple(
        re.compile(p)
        for p in (
            r"/dicom-web/(studies|series|instances)",
            rf"{_STUDY}/(series|instances)",
            rf"{_SERIES}/instances",
            rf"({_STUDY}|{_SERIES}|{_INSTANCE})(/metadata)?",
        )
    )
}


def purpose_admits(purpose: str, path: str, method: str) -> bool:
    """True when a principal bound to `purpose` may call `method path` (reads only)."""
    if method not in READ_METHODS:
        return False
    return any(p.fullmatch(path) for p in PURPOSE_ROUTES.get(purpose, ()))


def rule_for(
    path: str, method: str, rules: tuple[RouteRule, ...] = ROUTE_RULES
) -> RouteRule | None:
    """The first rule that covers this path and method, or None (denied)."""
    for rule in rules:
        if rule.covers(path, method):
            return rule
    return None


class BearerAuthMiddleware:
    """Authenticates every request outside the allow-list and applies the route table."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: Callable[[], NodeTokens],
        public_paths: frozenset[str] = PUBLIC_PATHS,
        rules: tuple[RouteRule, ...] = ROUTE_RULES,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.public_paths = public_paths
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # No route speaks WebSocket yet: refuse them all (RFC 6455 §7.4.1, policy violation).
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(PEER_PREFIX):
            await self.app(scope, receive, send)  # the peer dependency authenticates these
            return
        try:
            token = bearer_token(_header(scope, b"authorization"))
            # The account behind a token of this node is looked up in the index, and an OIDC
            # token's verification may fetch its provider's keys: off the event loop, unless
            # the token's signature was verified before and the lookup is in-process (SQLite).
            tokens = self.tokens()
            if tokens.answers_at_once(token):
                principal = tokens.verify(token)
            else:
                principal = await run_in_threadpool(tokens.verify, token)
            # Kept before the route check, so that a refusal is audited under who was refused.
            scope.setdefault("state", {})["principal"] = principal
            method = scope.get("method", "GET")
            rule = rule_for(scope["path"], method, self.rules)
            if rule is None:
                raise ForbiddenError("no access rule admits this route")
            if not any(principal.satisfies(s) for s in rule.any_of):
                raise InsufficientScopeError(" ".join(rule.any_of))
            if rule.roles is not None and principal.role not in rule.roles:
                raise ForbiddenError("this route is reserved to other roles")
            purpose = principal.purpose
            if purpose is not None and not purpose_admits(purpose, scope["path"], method):
                raise ForbiddenError(
                    f"this {purpose} credential may only search DICOMweb and retrieve instances "
                    "and their metadata"
                )
        except NodeError as exc:
            await _reject(exc, send, fhir=scope["path"].startswith("/fhir/"))
            return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _reject(exc: NodeError, send: Send, *, fhir: bool = False) -> None:
    content_type = b"application/json"
    payload: dict[str, object] = {"error": exc.message}
    if fhir:
        # FHIR clients read errors as an OperationOutcome (R4 §3.1.0.4.1).
        content_type = b"application/fhir+json"
        issue = {"severity": "error", "code": exc.fhir_code, "diagnostics": exc.message}
        payload = {"resourceType": "OperationOutcome", "issue": [issue]}
    body = json.dumps(payload).encode()
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    for name, value in getattr(exc, "headers", {}).items():
        headers.append((name.lower().encode(), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
