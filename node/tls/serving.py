"""How `pacsmesh node serve` listens: HTTP (development only), HTTPS, or HTTPS with consortium
mutual TLS, where each peer's client certificate reaches the app in the request scope.

The ssl context is built here, before the archive opens, so that a missing or unreadable
certificate or key stops the node with a message naming the setting, not a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import TlsConfigurationError
from node.settings import NodeSettings
from node.tls.contexts import server_context
from node.tls.handshake_audit import audit_refusals
from node.tls.uvicorn_mtls import MtlsH11Protocol, MtlsHttpToolsProtocol


@dataclass(frozen=True)
class Listening:
    """What the node serves: `mode` is "http", "https" or "mtls"; `uvicorn` the Config keywords."""

    mode: str
    uvicorn: dict[str, Any]


def listening(settings: NodeSettings) -> Listening:
    """The uvicorn options for these settings, or TlsConfigurationError saying what to set."""
    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_ca_cert
    if cert is None or key is None:
        if settings.environment == "production":
            # Tokens, patient data and consent signatures would cross the network in clear.
            raise TlsConfigurationError(
                "production nodes serve HTTPS only: set tls_cert and tls_key (--tls-cert/"
                "--tls-key or NODE_TLS_CERT/NODE_TLS_KEY), and tls_ca_cert (--tls-ca-cert or "
                "NODE_TLS_CA_CERT) to accept consortium peers"
            )
        return Listening("http", {})
    if ca is None:
        files = {"tls_cert": cert, "tls_key": key}
        plain = audit_refusals(_context(files, lambda: server_context(cert, key, None)))
        return Listening("https", {"ssl_context_factory": lambda _config, _default: plain})
    required = settings.tls_client_cert == "required"
    files = {"tls_cert": cert, "tls_key": key, "tls_ca_cert": ca}
    mutual = audit_refusals(_context(files, lambda: server_context(cert, key, ca, required)))
    # uvicorn verifies client certificates but keeps them from the app: these protocols add
    # the peer's certificate to each request scope (node.tls.uvicorn_mtls).
    protocol = MtlsHttpToolsProtocol if importlib.util.find_spec("httptools") else MtlsH11Protocol
    return Listening(
        "mtls", {"ssl_context_factory": lambda _config, _default: mutual, "http": protocol}
    )


def _context(files: dict[str, Path], build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    for name, path in files.items():
        if not path.is_file() or not os.access(path, os.R_OK):
            raise TlsConfigurationError(f"{name}: cannot read {path}")
    try:
        return build()
    except (ssl.SSLError, OSError, ValueError):
        # Not echoed: the ssl module's text is about PEM internals, never what to do.
        raise TlsConfigurationError(
            f"{'/'.join(files)}: cannot load them: each must be PEM, and the key must be the "
            "certificate's"
        ) from None
