"""DICOM TLS (PS3.15 B.12, "BCP 195 RFC 8996, 9325 TLS Secure Transport Connection Profile").

The node's TLS listener and its TLS associations to remote AEs use these contexts: TLS 1.2 at
least (1.3 preferred, as the profile asks of servers), forward-secret AEAD suites only, and the
peer's certificate verified against the hospital PKI's CA (`dimse_tls_ca_cert`), which may
differ from the consortium CA used between nodes. Nothing here knows about DIMSE messages.

`handshake` completes a server-side handshake in the association's own thread (the caller,
node/dimse/transport.py `TlsAssociationServer`) and reports each refusal, with a reason token,
so that the node can audit it.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.dimse.association import normalise_title
from node.errors import TlsConfigurationError
from node.settings import NodeSettings, RemoteAE
from node.tls.contexts import harden, refusal_reason

log = logging.getLogger("pacsmesh.dimse")

# The profile's suites come from the node's one TLS policy (node.tls.contexts.harden): ECDHE
# with AEAD only, so no DHE (PS3.15 B.13: not where the DH group size cannot be set), no static
# RSA, no CBC.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class QuickAckSSLSocket(ssl.SSLSocket):
    """An SSLSocket that re-arms TCP_QUICKACK before each read (see node/dimse/transport.py)."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if _QUICKACK is not None:
            self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return super().recv(buflen, flags)


def _load_identity(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise TlsConfigurationError(f"DICOM TLS: cannot read {exc.filename}") from None
    except (ssl.SSLError, OSError):
        raise TlsConfigurationError(
            f"DICOM TLS: {cert} and {key} are not a PEM certificate and its private key"
        ) from None


def _load_ca(ctx: ssl.SSLContext, ca_cert: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca_cert))
    except FileNotFoundError:
        raise TlsConfigurationError(f"DICOM TLS: cannot read CA file {ca_cert}") from None
    except (ssl.SSLError, OSError):
        raise TlsConfigurationError(f"DICOM TLS: {ca_cert} holds no PEM CA certificate") from None


def server_context(settings: NodeSettings) -> ssl.SSLContext:
    """The TLS listener's context: this node's identity, the hospital CA for client certs."""
    identity = settings.dimse_tls_identity
    if identity is None or settings.dimse_tls_ca_cert is None:
        raise TlsConfigurationError("DICOM TLS needs a certificate, its key and a CA file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    harden(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_identity(ctx, *identity)
    _load_ca(ctx, settings.dimse_tls_ca_cert)
    # "optional": a client may come without a certificate (the AE allow-list alone then
    # decides), but one that is presented must still chain to the CA.
    required = settings.dimse_tls_client_cert == "required"
    ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    ctx.sslsocket_class = QuickAckSSLSocket
    return ctx


def client_context(settings: NodeSettings, ae: RemoteAE) -> ssl.SSLContext:
    """A context for associating with `ae` over TLS: its certificate must name it."""
    identity = settings.dimse_tls_identity
    ca_cert = ae.tls_ca_cert or settings.dimse_tls_ca_cert
    if identity is None or ca_cert is None:
        raise TlsConfigurationError("DICOM TLS to a remote AE needs our certificate and a CA")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED on
    harden(ctx)
    _load_ca(ctx, ca_cert)
    _load_identity(ctx, *identity)  # for destinations that require a client certificate
    return ctx


class OutboundTls:
    """The `tls_args` pynetdicom needs to associate with each remote AE configured with TLS.

    Contexts are built once at start-up, so a missing or broken file stops the node there.
    """

    def __init__(self, settings: NodeSettings) -> None:
        self._by_title: dict[str, tuple[ssl.SSLContext, str]] = {}
        for title, ae in settings.remote_aes.items():
            if ae.tls:
                name = ae.tls_server_name or ae.host
                self._by_title[normalise_title(title)] = (client_context(settings, ae), name)

    def tls_args(self, title: str | bytes) -> tuple[ssl.SSLContext, str] | None:
        """(context, server name) for this AE title, or None when it is reached in the clear."""
        return self._by_title.get(normalise_title(title))


def check(settings: NodeSettings) -> None:
    """Load every DICOM TLS file the settings name; raises TlsConfigurationError on a bad one."""
    if settings.dimse_tls_port:
        server_context(settings)
    OutboundTls(settings)


def is_probe(exc: BaseException) -> bool:
    """Closed during the handshake without a TLS error: a port check, not an attempt."""
    return refusal_reason(exc) == "closed-during-handshake"


RefusalHook = Callable[[str, str, bool], None]
"""Called as hook(peer address, reason, probe) for every refused handshake."""


def handshake(
    sock: ssl.SSLSocket, address: Any, timeout: float | None, refused: RefusalHook | None
) -> bool:
    """Complete the server side of the handshake on an accepted socket; False if it failed."""
    before = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        sock.do_handshake()
    except (OSError, ValueError) as exc:
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        reason = refusal_reason(exc)
        probe = is_probe(exc)
        log.log(
            logging.INFO if probe else logging.WARNING,
            "DICOM TLS connection from %s refused: %s",
            host,
            reason,
        )
        if refused is not None:
            try:
                refused(host, reason, probe)
            except Exception:
                log.exception("recording a refused DICOM TLS connection failed")
        return False
    sock.settimeout(before)
    return True
