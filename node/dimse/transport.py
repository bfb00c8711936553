"""The DIMSE listener's sockets: acknowledge at once, so that senders using Nagle don't stall.

Many SCUs (Debian's DCMTK among them, unless TCP_NODELAY=1 is set in their environment) keep
Nagle's algorithm on, so each small PDU (a C-STORE command set before its data set) waits until
the previous segment is acknowledged; Linux delays ACKs by up to 40 ms, which made every small
C-STORE cost ~50 ms of idle waiting. Asking for quick ACKs on every read removes that stall on
the receiving side; TCP_NODELAY does the same for what the node sends.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

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
