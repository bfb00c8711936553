"""Refused HTTPS handshakes into the audit trail.

A client whose certificate the consortium CA did not issue (or, on a peer-only port, one with
no certificate, or someone speaking plain HTTP to the TLS port) is refused inside the TLS
handshake, before any HTTP request exists, so the per-request audit never sees it. asyncio gives
the application no hook there either: its SSL protocol drops the error unless the loop runs in
debug mode. The hook is the ssl context's ``sslobject_class``: asyncio drives every server-side
handshake through ``SSLObject.do_handshake``, so a subclass sees each failure with OpenSSL's
reason, which becomes one Security Alert event (PS3.15 A.5.3.11, "Node Authentication" failed),
the same event the DICOM TLS listener records (``node.services.audit.audit_tls_refusal``).

What it cannot know: the peer's address (an SSLObject sees only bytes), so the event names the
listener and the reason, not who. A client that closes before any TLS error (a port check) is
not an attempt and is not recorded.

One serving node per process: `node serve` installs the context, the app's lifespan sets where
refusals go (`REFUSALS.sink`) once its audit log is open and clears it before closing it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Final

from node.tls.contexts import refusal_reason

log = logging.getLogger("pacsmesh.tls")


class HandshakeRefusals:
    """Where refused handshakes are reported; nothing is recorded while no sink is set."""

    def __init__(self) -> None:
        self.sink: Callable[[str], None] | None = None

    def refused(self, reason: str) -> None:
        log.warning("HTTPS connection refused during the TLS handshake: %s", reason)
        sink = self.sink
        if sink is None:
            return
        try:
            sink(reason)
        except Exception:  # the refusal stands whether or not it could be recorded
            log.exception("recording a refused HTTPS handshake failed")


REFUSALS: Final = HandshakeRefusals()
_IN_PROGRESS = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
_NOT_AN_ATTEMPT = (ssl.SSLEOFError, ssl.SSLZeroReturnError)


class AuditedSSLObject(ssl.SSLObject):
    """An SSLObject that reports the reason of a failed server-side handshake."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except _IN_PROGRESS:
            raise  # asyncio feeds more bytes and calls again
        except _NOT_AN_ATTEMPT:
            raise
        except ssl.SSLError as exc:
            REFUSALS.refused(refusal_reason(exc))
            raise


def audit_refusals(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """The server context, its handshake failures reported to REFUSALS."""
    ctx.sslobject_class = AuditedSSLObject
    return ctx
