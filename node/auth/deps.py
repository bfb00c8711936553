"""FastAPI dependencies for routes: the calling principal and the scopes a route requires.

    @router.get("/studies", dependencies=[require_scope("user/ImagingStudy.read")])
    def search(principal: CurrentPrincipal) -> ...

`CurrentPrincipal` takes the principal the middleware already verified, or verifies the
`Authorization: Bearer` header itself (RFC 6750 §2.1) where no middleware runs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from node.auth.errors import AuthenticationError, InsufficientScopeError, MissingTokenError
from node.auth.policy import Principal, Scope
from node.auth.tokens import NodeTokens, tokens_for


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer` header value (the scheme is case-insensitive)."""
    if not authorization:
        raise MissingTokenError()
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthenticationError("Authorization header is not a bearer token")
    return token


def get_node_tokens(request: Request) -> NodeTokens:
    """The node's token issuer and verifier (built on first use from the app's settings)."""
    state = request.app.state
    cached = getattr(state, "node_tokens", None)
    if isinstance(cached, NodeTokens):
        return cached
    return tokens_for(state.settings, state)


NodeTokensDep = Annotated[NodeTokens, Depends(get_node_tokens)]


def current_principal(request: Request, tokens: NodeTokensDep) -> Principal:
    """Who the request acts as; 401 when it carries no valid token."""
    principal = getattr(request.state, "principal", None)
    if isinstance(principal, Principal):
        return principal
    principal = tokens.verify(bearer_token(request.headers.get("authorization")))
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_scope(*any_of: str) -> Any:
    """A dependency admitting principals that hold at least one of the given scopes.

    `user/X.read` is met by user or system scopes; list `patient/X.read` as well only on routes
    that restrict what they return to the patient's compartment (`check_patient_access`).
    """
    for text in any_of:
        if Scope.parse(text) is None:
            raise ValueError(f"not a SMART scope: {text!r}")
    if not any_of:
        raise ValueError("require_scope needs at least one scope")

    def check(principal: CurrentPrincipal) -> Principal:
        if any(principal.satisfies(s) for s in any_of):
            return principal
        raise InsufficientScopeError(" ".join(any_of))

    return Depends(check)


def request_principal(request: Request) -> Principal | None:
    """The principal the middleware verified, or None on a node running with auth off.

    For routes whose answer depends on who asks (a patient's compartment); with auth on, the
    middleware has already refused every request without a valid token.
    """
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else None


RequestPrincipal = Annotated[Principal | None, Depends(request_principal)]
