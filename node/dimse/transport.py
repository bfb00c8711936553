"""The DIMSE listener's sockets: acknowledge at once, so that senders using Nagle don't stall.

Many SCUs (Debian's DCMTK among them, unless TCP_NODELAY=1 is set in their environment) keep
Nagle's algorithm on, so each small PDU (a C-STORE command set before its data set) waits until
the previous segment is acknowledged; Linux delays ACKs by up to 40 ms, which made every small
C-STORE cost ~50 ms of idle waiting. Asking for quick ACKs on every read removes that stall on
the receiving side; TCP_NODELAY does the same for what the node sends.

The DICOM TLS listener uses `TlsAssociationServer`: the same socket options, and each TLS
handshake done in its association's thread instead of the accepting one.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from node.dimse.tls import RefusalHook, handshake

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class QuickAckSocket(socket.socket):
    """A connected socket that re-arms TCP_QUICKACK before each read (the kernel clears it)."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if _QUICKACK is not None:
            self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return super().recv(bufsize, flags)


class LowLatencyAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, handing its associations QuickAckSockets."""

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        if self.ssl_context is not None or client.family not in (socket.AF_INET, socket.AF_INET6):
            return client, address
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timeout = client.gettimeout()
        quick = QuickAckSocket(client.family, client.type, client.proto, fileno=client.detach())
        quick.settimeout(timeout)
        return quick, address


class TlsAssociationServer(LowLatencyAssociationServer):
    """The DICOM TLS listener: handshakes run in each association's thread, refusals reported.

    pynetdicom wraps accepted sockets with the handshake done at once, in the thread that
    accepts every connection: a client that connects and sends nothing would stall the
    listener for everyone. Here accepting only wraps; the handshake runs (bounded by the ACSE
    timeout) in the thread the association gets anyway, and `refused(peer, reason, probe)` is
    told of each one that fails, before the connection is closed.
    """

    def __init__(self, *args: Any, refused: RefusalHook | None = None, **kwargs: Any) -> None:
        self.refused = refused
        self._handshaking: set[ssl.SSLSocket] = set()
        self._handshaking_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        if client.family in (socket.AF_INET, socket.AF_INET6):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wrapped = self.ssl_context.wrap_socket(
            client, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            with self._handshaking_lock:
                self._handshaking.add(request)
            try:
                done = handshake(request, client_address, self.ae.acse_timeout, self.refused)
            finally:
                with self._handshaking_lock:
                    self._handshaking.discard(request)
            if not done:
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def server_close(self) -> None:
        # Closing joins the connection threads (ThreadingMixIn): end the handshakes still
        # waiting on a silent client, or stopping the node would wait for their timeout.
        with self._handshaking_lock:
            pending = list(self._handshaking)
        for sock in pending:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        super().server_close()
