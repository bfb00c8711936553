"""Reading a node's whole audit log over HTTPS, as an auditor: ``/fhir/AuditEvent`` by leaf index.

The node's search answers newest first and grows while it is read (every read is itself an
"Audit Log Used" event), so offsets would shift under the reader. Instead the reader fixes the
snapshot first — the tree size the node states in its newest event's proof — and then asks
for the leaf indices ``0 … size-1`` explicitly, in chunks (``_id=a,b,c…``). An index the node
does not return is missing from what it serves (deleted from its log, or hidden from its
search index); the verifier reports it as such.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from ledger.audit_wire import AuditWireError, ServedEntry, claimed_member, parse_served_entry

# Ids per request: at most 7 digits each, the query stays well under common line limits.
CHUNK: Final = 250


class NodeUnreadableError(Exception):
    """A node whose audit log could not be read (unreachable, refused, or malformed answers)."""


def normalize_url(url: str) -> str:
    """A node's base URL in one spelling: scheme and host lower case, no default port or '/'."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = (
        host
        if port is None or (scheme, port) in (("http", 80), ("https", 443))
        else (f"{host}:{port}")
    )
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class NodeSnapshot:
    """What one node served: the entries it returned for the indices below ``size``."""

    size: int
    entries: dict[int, ServedEntry]


class NodeReader:
    """An auditor's HTTP client for one node (bearer token; ``tls``: the CA context, or True for
    the system's CAs)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        tls: ssl.SSLContext | bool = True,
        timeout: float = 30.0,
    ) -> None:
        self.url = normalize_url(url)
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(base_url=self.url, headers=headers, verify=tls, timeout=timeout)

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()

    def __enter__(self) -> NodeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            # The exception text names the URL and the cause (refused, TLS, timeout): no data.
            raise NodeUnreadableError(
                f"cannot reach {self.url}: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code != 200:
            raise NodeUnreadableError(
                f"{self.url}{path} answered {response.status_code}: {_reason(response)}"
            )
        try:
            return response.json()
        except ValueError:
            raise NodeUnreadableError(f"{self.url}{path} did not answer JSON") from None

    def member_claim(self) -> str | None:
        """The member account the node's CapabilityStatement names, if any."""
        try:
            return claimed_member(self._get("/fhir/metadata"))
        except AuditWireError as exc:
            raise NodeUnreadableError(f"{self.url}/fhir/metadata: {exc}") from None

    def head_size(self) -> int:
        """The tree size the node states now (from its newest event's proof; 0 when empty)."""
        bundle = self._get("/fhir/AuditEvent", {"_count": "1"})
        entries = list(self._resources(bundle))
        return entries[0].tree_size if entries else 0

    def entries(self, indices: Iterable[int]) -> dict[int, ServedEntry]:
        """The entries the node returns for these leaf indices (absent ones are left out)."""
        wanted = sorted(set(indices))
        out: dict[int, ServedEntry] = {}
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start : start + CHUNK]
            params = {"_id": ",".join(map(str, chunk)), "_count": str(len(chunk))}
            asked = set(chunk)
            for entry in self._resources(self._get("/fhir/AuditEvent", params)):
                if entry.index not in asked:
                    raise NodeUnreadableError(
                        f"{self.url} answered entry {entry.index}, which was not asked for"
                    )
                out[entry.index] = entry
        return out

    def set_token(self, token: str | None) -> None:
        """Send this bearer token from now on (None: none)."""
        self._client.headers.pop("Authorization", None)
        if token:
            self._client.headers["Authorization"] = f"Bearer {token}"

    def snapshot(self, at_least: int = 0) -> NodeSnapshot:
        """Every entry below the node's current size (or ``at_least``, if the chain says more)."""
        size = max(self.head_size(), at_least)
        return NodeSnapshot(size, self.entries(range(size)))

    def _resources(self, bundle: Any) -> Iterable[ServedEntry]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise NodeUnreadableError(f"{self.url}/fhir/AuditEvent did not answer a Bundle")
        for item in bundle.get("entry") or []:
            try:
                yield parse_served_entry(item.get("resource") if isinstance(item, dict) else None)
            except AuditWireError as exc:
                raise NodeUnreadableError(f"{self.url}/fhir/AuditEvent: {exc}") from None


def _reason(response: httpx.Response) -> str:
    """The error a node gave (its JSON error or OperationOutcome diagnostics), one line."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "no reason given"
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            return str(body["error"])[:300]
        for issue in body.get("issue") or []:
            if isinstance(issue, dict) and isinstance(issue.get("diagnostics"), str):
                return str(issue["diagnostics"])[:300]
    return response.reason_phrase or "no reason given"
