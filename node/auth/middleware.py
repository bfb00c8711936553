"""Default deny for the whole app: an ASGI middleware in front of every route.

Every HTTP request must carry a valid bearer token, except for the explicit public allow-list.
The token's principal must then hold a scope the route table names for the path and method; a
path the table does not name is refused to everyone (403). Routes may check finer rules with
`node.auth.deps` dependencies; the principal is left in `request.state.principal` for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

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
        "/openapi.json",
    }
)

READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class RouteRule:
    """Who may call a path prefix with some methods: any one of `any_of` scopes, and if
    `roles` is set, only those roles."""

    prefix: str
    methods: frozenset[str]
    any_of: tuple[str, ...]
    roles: frozenset[str] | None = None


# First match wins. Patients have no DICOMweb access until the routes filter by compartment.
# Deleting a study destroys its key (crypto-shredding): administrators only.
ROUTE_RULES: tuple[RouteRule, ...] = (
    RouteRule("/dicom-web/", READ_METHODS, ("user/ImagingStudy.read",)),
    RouteRule("/dicom-web/", frozenset({"POST"}), ("user/ImagingStudy.write",)),
    RouteRule(
        "/dicom-web/", frozenset({"DELETE"}), ("user/ImagingStudy.write",), frozenset({"admin"})
    ),
)


def rule_for(
    path: str, method: str, rules: tuple[RouteRule, ...] = ROUTE_RULES
) -> RouteRule | None:
    """The first rule that covers this path and method, or None (denied)."""
    for rule in rules:
        if path.startswith(rule.prefix) and method in rule.methods:
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
        try:
            token = bearer_token(_header(scope, b"authorization"))
            # Off the event loop: verifying an OIDC token may fetch the provider's keys.
            principal = await run_in_threadpool(lambda: self.tokens().verify(token))
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
        except NodeError as exc:
            await _reject(exc, send)
            return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _reject(exc: NodeError, send: Send) -> None:
    body = json.dumps({"error": exc.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    for name, value in getattr(exc, "headers", {}).items():
        headers.append((name.lower().encode(), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
