"""Signing in: the OAuth 2.0 token endpoint (password grant) and the node's public keys.

`POST /auth/token` takes `grant_type=password&username=…&password=…[&scope=…]` as
application/x-www-form-urlencoded (RFC 6749 §4.3.2) and answers the token JSON of §5.1; errors
follow §5.2. A wrong user name and a wrong password get the same answer. Live even while
`auth_enabled` is off, so operators can try sign-in before the node enforces it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from node.api.audit_http import note_login
from node.auth.deps import NodeTokensDep
from node.auth.errors import REALM
from node.auth.policy import parse_scopes
from node.auth.throttle import LoginThrottle
from node.auth.users import authenticate
from node.errors import InvalidRequestError
from node.settings import NodeSettings

MAX_FORM_BYTES = 4096
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1


def _oauth_error(status: int, error: str, description: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={**_NO_STORE, **headers},
    )


def _throttle(request: Request) -> LoginThrottle:
    state = request.app.state
    throttle: LoginThrottle | None = getattr(state, "login_throttle", None)
    if throttle is None:
        settings: NodeSettings = state.settings
        throttle = LoginThrottle(settings.login_max_failures, settings.login_window_seconds)
        state.login_throttle = throttle
    return throttle


async def _form(request: Request) -> dict[str, str] | JSONResponse:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        return _oauth_error(
            400, "invalid_request", "send the form as application/x-www-form-urlencoded"
        )
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return _oauth_error(400, "invalid_request", "form too large")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return _oauth_error(400, "invalid_request", "form is not UTF-8")
    # RFC 6749 §3.2: parameters must not be repeated.
    if any(len(v) > 1 for v in fields.values()):
        return _oauth_error(400, "invalid_request", "a parameter is repeated")
    return {k: v[0] for k, v in fields.items()}


def build_router() -> APIRouter:
    """The /auth routes."""
    router = APIRouter(prefix="/auth", tags=["auth"])

    @router.post("/token")
    async def token(request: Request, tokens: NodeTokensDep) -> JSONResponse:
        form = await _form(request)
        if isinstance(form, JSONResponse):
            return form
        if form.get("grant_type") != "password":
            return _oauth_error(400, "unsupported_grant_type", "only grant_type=password")
        username, password = form.get("username", ""), form.get("password", "")
        if not username or not password:
            return _oauth_error(400, "invalid_request", "username and password are required")
        note_login(request, username, None)  # the audit event names whom the attempt was for
        throttle = _throttle(request)
        client = request.client.host if request.client else "unknown"
        keys = [f"user:{username.lower()}", f"addr:{client}"]
        wait = throttle.retry_after(keys)
        if wait:
            return _oauth_error(
                429,
                "invalid_grant",
                "too many failed sign-ins; try later",
                **{"Retry-After": str(wait)},
            )
        engine = request.app.state.archive.engine
        account = await run_in_threadpool(authenticate, engine, username, password)
        if account is None:
            throttle.failed(keys)
            return _oauth_error(
                401,
                "invalid_grant",
                "invalid username or password",
                **{"WWW-Authenticate": f'Bearer realm="{REALM}"'},
            )
        throttle.succeeded(keys[0])
        note_login(request, account.username, account.role)
        requested = form.get("scope")
        scopes = parse_scopes(requested) if requested else None
        if requested is not None and not scopes:
            return _oauth_error(400, "invalid_scope", "no SMART scope in the request")
        settings: NodeSettings = request.app.state.settings
        try:
            issued = tokens.issue(
                subject=account.username,
                role=account.role,
                scopes=scopes,
                patient=account.patient,
                ttl_seconds=settings.token_ttl_seconds,
            )
        except InvalidRequestError as exc:
            return _oauth_error(400, "invalid_scope", exc.message)
        # No `patient` launch context here: it would be an MRN, and the token already binds it.
        reply: dict[str, Any] = {
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": issued.scope,
        }
        return JSONResponse(reply, headers=_NO_STORE)

    @router.get("/jwks.json")
    def jwks(tokens: NodeTokensDep) -> JSONResponse:
        """The node's token-verification keys (RFC 7517), for peers and resource servers."""
        return JSONResponse(tokens.jwks(), headers={"Cache-Control": "max-age=300"})

    return router
