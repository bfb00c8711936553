"""Helpers for the auth tests: a uvicorn server in a thread, hand-made (hostile) tokens, and
tokens for accounts (the node refuses a token whose account does not stand)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from node.auth.policy import PatientBinding, Scope
from node.auth.tokens import IssuedToken, NodeTokens
from node.auth.users import add_user, get_user
from node.errors import NodeError, NotFoundError
from node.settings import NodeSettings
from node.storage.db import open_index
from tests.node.conftest import free_port


def account_token(
    settings: NodeSettings,
    subject: str,
    role: str,
    ttl_seconds: int = 600,
    *,
    scopes: tuple[Scope, ...] | None = None,
    patient: PatientBinding | None = None,
    now: float | None = None,
) -> IssuedToken:
    """A token the node signs for `subject`, whose account is created first if it has none
    (as `pacsmesh node user add` + `token` would; the account's role is `role`)."""
    engine = open_index(settings.index_url)
    try:
        try:
            get_user(engine, subject)
        except NotFoundError:
            add_user(engine, subject, role, patient=patient if role == "patient" else None)
    finally:
        engine.dispose()
    return NodeTokens.from_settings(settings).issue(
        subject=subject, role=role, ttl_seconds=ttl_seconds, scopes=scopes, patient=patient, now=now
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unsigned_token(claims: dict[str, Any]) -> str:
    """A token with `alg: none` and no signature (RFC 7519 §6)."""
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(claims)}."


def hs256_token(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token made with `secret` (the key-confusion attack uses the public key PEM)."""
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT'})}.{b64url_json(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def tamper_payload(token: str, **changes: Any) -> str:
    """The same header and signature over an edited payload."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{b64url_json(claims)}.{signature}"


def add_node_error_handler(app: FastAPI) -> None:
    """Render NodeErrors as the node does: JSON body plus their challenge header."""

    @app.exception_handler(NodeError)
    async def node_error(_request: Request, exc: NodeError) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        return JSONResponse({"error": exc.message}, status_code=exc.http_status, headers=headers)


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Serve `app` with a real uvicorn on a loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
