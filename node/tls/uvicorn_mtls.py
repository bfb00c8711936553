"""Expose the TLS client certificate to the app under uvicorn.

uvicorn (0.54 here) verifies client certificates when given a context that asks for them, but
does not put the certificate into the ASGI scope. We subclass its HTTP protocols: after the
handshake (asyncio calls `connection_made` only once TLS is established) we read the peer's
DER certificate from the transport's `ssl_object` and add it to every request scope of that
connection in the form of the ASGI TLS extension (`scope["extensions"]["tls"]`, asgiref "TLS
Extension": `client_cert_chain` as PEM strings), so app code does not change when a server
provides the extension natively.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def peer_certificate_der(scope: Mapping[str, Any]) -> bytes | None:
    """The DER certificate the TLS client presented for this request, if any."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return ssl.PEM_cert_to_DER_cert(chain[0])


class _TlsScopeApp:
    """Wraps the app for one connection, adding that connection's TLS facts to each scope."""

    def __init__(self, app: Any, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        extensions: dict[str, Any] = dict(scope.get("extensions") or {})
        extensions["tls"] = self.tls
        scope["extensions"] = extensions
        await self.app(scope, receive, send)


def _tls_facts(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }


class MtlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the ASGI TLS extension in each scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        facts = _tls_facts(transport)
        if facts is not None:
            self.app = _TlsScopeApp(self.app, facts)


class MtlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the ASGI TLS extension in each scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        facts = _tls_facts(transport)
        if facts is not None:
            self.app = _TlsScopeApp(self.app, facts)
