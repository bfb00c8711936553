"""ssl contexts and the one TLS policy for every listener and client: HTTPS, consortium mutual
TLS, DICOM TLS (PS3.15 B.12)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Final

# TLS 1.2 suites (BCP 195 / RFC 9325 §4.2: ECDHE with AEAD only); TLS 1.3 keeps OpenSSL's
# defaults (AES-GCM, ChaCha20-Poly1305). One policy for HTTPS, peers and DICOM TLS.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1"


def harden(ctx: ssl.SSLContext) -> None:
    """TLS 1.2 or later, ECDHE+AEAD suites, no compression, no renegotiation (RFC 9325)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


# Why a handshake was refused, as a token for logs and audit events (never a certificate subject,
# which may name a person): OpenSSL's reason -> our code.
_REASONS: Final[Mapping[str, str]] = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no-client-certificate",
    "CERTIFICATE_VERIFY_FAILED": "certificate-not-trusted",  # another CA, expired, wrong use
    "TLSV1_ALERT_UNKNOWN_CA": "our-certificate-not-trusted",
    "WRONG_VERSION_NUMBER": "not-tls",  # plain DICOM on the TLS port
    "HTTP_REQUEST": "not-tls",
    "UNSUPPORTED_PROTOCOL": "tls-version-too-old",
    "NO_PROTOCOLS_AVAILABLE": "tls-version-too-old",
    "NO_SHARED_CIPHER": "no-shared-cipher",
}


def refusal_reason(exc: BaseException) -> str:
    """Why a handshake failed, as one token (`not-tls`, `no-client-certificate`, ...)."""
    if isinstance(exc, TimeoutError):
        return "handshake-timeout"
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        return _REASONS.get(str(exc.reason or ""), "handshake-failed")
    return "closed-during-handshake"


def server_context(
    cert: Path, key: Path, ca_cert: Path | None, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A server context that asks every client for a certificate issued by the consortium CA.

    With require_client_cert the handshake fails without one (a peer-only port); without it a
    client may come without a certificate (users with bearer tokens), but a certificate that is
    presented must still verify against the CA, and peer routes then demand one.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    harden(ctx)
    ctx.load_cert_chain(str(cert), str(key))
    if ca_cert is None:
        return ctx  # HTTPS for users only: no client certificates asked for
    # Only the consortium CA: a public CA's certificate must never make a peer.
    ctx.load_verify_locations(cafile=str(ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(cert: Path, key: Path, ca_cert: Path) -> ssl.SSLContext:
    """A client context presenting this node's certificate and trusting only the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    harden(ctx)
    ctx.load_verify_locations(cafile=str(ca_cert))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.check_hostname = True  # the peer's SAN must match the endpoint registered on chain
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
