"""What a node publishes to auditors about its audit log, and how an auditor reads it.

Two things cross the wire (docs/security-audit.md):

- every ``/fhir/AuditEvent`` resource carries the extension ``PROOF_URL``: the leaf's canonical
  bytes, its index, the tree head (size, root) and audit path the node proves it against, and,
  when one of the node's anchors covers it, that anchor (size, root, transaction, block) with
  the audit path to the anchored root (for a client checking one entry; the auditor rebuilds
  the tree from the leaves instead, and does not read that path);
- the node's CapabilityStatement (``/fhir/metadata``, public) names the consortium member
  account the node anchors its log under, as ``implementation.custodian.identifier`` with the
  system ``MEMBER_ACCOUNT_SYSTEM``. An auditor never takes that claim alone: it must match the
  member whose endpoint the consortium registry holds for the URL (``ledger.audit_network``).

The node renders these (node/fhir/audit_events.py, node/api/fhir/metadata.py); the auditor's
side parses them here. Parsing never trusts a value: anything malformed raises
``AuditWireError`` naming what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Final

from ledger import merkle

PROOF_URL: Final = "https://pacsmesh.org/fhir/StructureDefinition/audit-log-proof"
MEMBER_ACCOUNT_SYSTEM: Final = "https://pacsmesh.org/fhir/member-account"
_ADDRESS: Final = re.compile(r"^0x[0-9a-fA-F]{40}$")
_TX_HASH: Final = re.compile(r"^0x[0-9a-fA-F]{64}$")


class AuditWireError(ValueError):
    """A node's answer that does not have the published shape."""


@dataclass(frozen=True)
class ServedAnchor:
    """An anchor a node says covers an entry."""

    size: int
    root: bytes
    tx_hash: str
    block_number: int


@dataclass(frozen=True)
class ServedEntry:
    """One audit log entry as a node serves it, with the proofs it gives for it."""

    index: int
    leaf: bytes
    tree_size: int
    root: bytes
    path: tuple[bytes, ...]
    anchor: ServedAnchor | None = None

    @property
    def leaf_hash(self) -> bytes:
        """RFC 6962 leaf hash of the served bytes."""
        return merkle.leaf_hash(self.leaf)

    def proves(self, leaf_hash: bytes) -> bool:
        """Whether ``leaf_hash`` at this index verifies against the node's own tree head."""
        return merkle.verify_inclusion(self.index, self.tree_size, leaf_hash, self.path, self.root)


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise AuditWireError(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AuditWireError(f"{what} is not valid base64") from None


def _hash(value: Any, what: str) -> bytes:
    data = _b64(value, what)
    if len(data) != merkle.HASH_SIZE:
        raise AuditWireError(f"{what} is not a 32-byte hash")
    return data


def _uint(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AuditWireError(f"{what} is not an unsigned integer")
    return value


def _parts(resource: dict[str, Any]) -> dict[str, list[Any]]:
    extensions = resource.get("extension")
    if not isinstance(extensions, list):
        raise AuditWireError("the AuditEvent has no extensions (no proof)")
    found = [e for e in extensions if isinstance(e, dict) and e.get("url") == PROOF_URL]
    if len(found) != 1 or not isinstance(found[0].get("extension"), list):
        raise AuditWireError("the AuditEvent does not carry exactly one audit-log-proof extension")
    parts: dict[str, list[Any]] = {}
    for part in found[0]["extension"]:
        if not isinstance(part, dict) or not isinstance(part.get("url"), str):
            raise AuditWireError("a proof sub-extension has no url")
        values = [v for k, v in part.items() if k.startswith("value")]
        if len(values) != 1:
            raise AuditWireError(f"proof part {part['url']!r} does not hold exactly one value")
        parts.setdefault(part["url"], []).append(values[0])
    return parts


def _one(parts: dict[str, list[Any]], name: str) -> Any:
    values = parts.get(name, [])
    if len(values) != 1:
        raise AuditWireError(f"the proof must hold exactly one {name!r}")
    return values[0]


def parse_served_entry(resource: Any) -> ServedEntry:
    """An AuditEvent resource's proof extension as a ``ServedEntry``."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "AuditEvent":
        raise AuditWireError("expected an AuditEvent resource")
    parts = _parts(resource)
    index = _uint(_one(parts, "leafIndex"), "leafIndex")
    if str(resource.get("id")) != str(index):
        raise AuditWireError(f"AuditEvent id {resource.get('id')!r} is not its leafIndex {index}")
    tree_size = _uint(_one(parts, "treeSize"), "treeSize")
    anchor = None
    if "anchoredSize" in parts:
        tx = _one(parts, "anchorTransaction")
        if not isinstance(tx, str) or not _TX_HASH.match(tx):
            raise AuditWireError("anchorTransaction is not a transaction hash")
        anchor = ServedAnchor(
            size=_uint(_one(parts, "anchoredSize"), "anchoredSize"),
            root=_hash(_one(parts, "anchoredRoot"), "anchoredRoot"),
            tx_hash=tx.lower(),
            block_number=_uint(_one(parts, "anchorBlock"), "anchorBlock"),
        )
    return ServedEntry(
        index=index,
        leaf=_b64(_one(parts, "leaf"), "leaf"),
        tree_size=tree_size,
        root=_hash(_one(parts, "root"), "root"),
        path=tuple(_hash(h, "path") for h in parts.get("path", [])),
        anchor=anchor,
    )


def claimed_member(capability_statement: Any) -> str | None:
    """The member account a node's CapabilityStatement names (lower case), or None."""
    if not isinstance(capability_statement, dict):
        raise AuditWireError("/fhir/metadata did not return a CapabilityStatement")
    custodian = (capability_statement.get("implementation") or {}).get("custodian")
    if not isinstance(custodian, dict):
        return None
    identifier = custodian.get("identifier")
    if not isinstance(identifier, dict) or identifier.get("system") != MEMBER_ACCOUNT_SYSTEM:
        return None
    value = identifier.get("value")
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise AuditWireError("the CapabilityStatement's member account is not an address")
    return value.lower()


def custodian(member_account: str, hospital_id: str | None = None) -> dict[str, Any]:
    """The ``implementation.custodian`` a node publishes: its member account."""
    reference: dict[str, Any] = {
        "type": "Organization",
        "identifier": {"system": MEMBER_ACCOUNT_SYSTEM, "value": member_account.lower()},
    }
    if hospital_id:
        reference["display"] = hospital_id
    return reference
