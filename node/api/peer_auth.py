"""FastAPI dependency for peer (node-to-node) routes: the caller must be an accepted peer.

Ready to install on the /network routes: `def route(peer: PeerDep)`. It needs
`app.state.peer_directory` (a node.tls.peers.PeerDirectory) and a server that puts the client
certificate into the scope (node.tls.uvicorn_mtls protocols).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ledger.consortium import Member
from node.api.audit_http import note_peer
from node.tls.peers import PeerDirectory, PeerRefusedError, verify_peer
from node.tls.uvicorn_mtls import peer_certificate_der


def get_peer(request: Request) -> Member:
    """The consortium member calling, or 403 (sync: the membership check may call the chain)."""
    directory: PeerDirectory | None = getattr(request.app.state, "peer_directory", None)
    if directory is None:
        raise PeerRefusedError(
            "this node accepts no peers: it needs its ledger link and the consortium CA "
            "(tls_ca_cert)"
        )
    member = verify_peer(peer_certificate_der(request.scope), directory)
    note_peer(request, member.account)  # the request's audit event names the member
    return member


PeerDep = Annotated[Member, Depends(get_peer)]
