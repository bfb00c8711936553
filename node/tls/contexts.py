"""ssl contexts for consortium mutual TLS (server and client side)."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(
    cert: Path, key: Path, ca_cert: Path, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A server context that asks every client for a certificate issued by the consortium CA.

    With require_client_cert the handshake fails without one (a peer-only port); without it a
    client may come without a certificate (users with bearer tokens), but a certificate that is
    presented must still verify against the CA, and peer routes then demand one.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    # Only the consortium CA: a public CA's certificate must never make a peer.
    ctx.load_verify_locations(cafile=str(ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(cert: Path, key: Path, ca_cert: Path) -> ssl.SSLContext:
    """A client context presenting this node's certificate and trusting only the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_cert))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.check_hostname = True  # the peer's SAN must match the endpoint registered on chain
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
