"""The peer acceptance rule: a certificate from the consortium CA whose SHA-256 fingerprint is
registered, now, to an active member of the ConsortiumRegistry.

Membership is read from the chain and cached per block: every check asks the chain for its head
block number (one cheap call) and reloads the member list only when the head moved, so a member
removed by a vote is refused from the first check after the block that removed it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ledger.consortium import ConsortiumClient, Member, MemberStatus
from node.errors import NodeError


class PeerRefusedError(NodeError):
    """The TLS client is not an accepted consortium peer (says why, names no person)."""

    http_status = 403
    fhir_code = "forbidden"


class MemberSource(Protocol):
    """Where membership comes from: the chain's head and the registry's members."""

    def head(self) -> int: ...

    def members(self) -> list[Member]: ...


class RegistryMembers:
    """MemberSource over the ledger client's ConsortiumRegistry."""

    def __init__(self, client: ConsortiumClient) -> None:
        self.client = client

    def head(self) -> int:
        return self.client.chain.block_number()

    def members(self) -> list[Member]:
        return self.client.members()


class PeerDirectory:
    """Active members by certificate fingerprint, refreshed whenever the chain head moves.

    min_interval bounds how often the head is polled under load (0: every check). Keep it below
    the chain's block time so that "cut off within one block" holds.
    """

    def __init__(
        self,
        source: MemberSource,
        ca_cert: x509.Certificate,
        min_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.ca_cert = ca_cert
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._block = -1
        self._polled_at = float("-inf")
        self._by_fingerprint: dict[bytes, Member] = {}
        self._active: list[Member] = []

    @property
    def block(self) -> int:
        """The block the cached membership was read at."""
        return self._block

    def active_member(self, fp: bytes) -> Member | None:
        """The active member whose registered fingerprint is fp, as of the chain head now."""
        with self._lock:
            self._refresh()
            return self._by_fingerprint.get(fp)

    def active_members(self) -> list[Member]:
        """Every active member, as of the chain head now (re-read only when the head moved)."""
        with self._lock:
            self._refresh()
            return list(self._active)

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._polled_at < self.min_interval:
            return
        self._polled_at = now
        head = self.source.head()
        if head == self._block:
            return
        self._active = [m for m in self.source.members() if m.status is MemberStatus.ACTIVE]
        self._by_fingerprint = {
            bytes.fromhex(m.tls_fingerprint): m
            for m in self._active
            if int(m.tls_fingerprint, 16) != 0
        }
        self._block = head


def verify_peer(cert_der: bytes | None, directory: PeerDirectory) -> Member:
    """The member a TLS client certificate belongs to, or PeerRefusedError.

    The handshake already checked the chain; we check again here so the rule holds wherever the
    certificate came from (RFC 5280 path validation, client EKU, validity now).
    """
    if not cert_der:
        raise PeerRefusedError("peer requests need a client certificate from the consortium CA")
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        raise PeerRefusedError("the client certificate cannot be parsed") from None
    verifier = (
        PolicyBuilder()
        .store(Store([directory.ca_cert]))
        .time(dt.datetime.now(dt.UTC))
        .build_client_verifier()
    )
    try:
        verifier.verify(cert, [])
    except VerificationError:
        raise PeerRefusedError(
            "the client certificate was not issued by the consortium CA"
        ) from None
    fp = cert.fingerprint(hashes.SHA256())
    member = directory.active_member(fp)
    if member is None:
        raise PeerRefusedError(
            f"certificate sha256 {fp.hex()[:16]}… is not registered to an active member"
        )
    return member
