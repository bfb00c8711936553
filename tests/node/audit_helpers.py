"""Helpers for the audit tests: reading /fhir/AuditEvent and checking each event's proof."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from ledger import merkle
from node.fhir.audit_events import PROOF_URL
from tests.node.fhir_helpers import validate


def audit_search(url: str, query: str = "", **kwargs: Any) -> list[dict[str, Any]]:
    """The AuditEvent resources a search returns (one page of up to 500), each validated."""
    r = httpx.get(f"{url}/fhir/AuditEvent?_count=500&{query}", timeout=60, **kwargs)
    assert r.status_code == 200, r.text
    body = validate(r.json())
    return [e["resource"] for e in body.get("entry", [])]


def proof(resource: dict[str, Any]) -> dict[str, list[Any]]:
    """The audit-log-proof extension as {sub-extension url: [values]}."""
    (ext,) = [e for e in resource["extension"] if e["url"] == PROOF_URL]
    out: dict[str, list[Any]] = {}
    for part in ext["extension"]:
        value = next(v for k, v in part.items() if k.startswith("value"))
        out.setdefault(part["url"], []).append(value)
    return out


def leaf_event(resource: dict[str, Any]) -> dict[str, Any]:
    """The canonical event the resource was made from (the leaf bytes in its proof)."""
    leaf = base64.b64decode(proof(resource)["leaf"][0])
    event: dict[str, Any] = json.loads(leaf)
    return event


def verify_proof(resource: dict[str, Any]) -> bytes:
    """Check the resource's inclusion proof as an auditor would; returns the root it proves."""
    p = proof(resource)
    leaf = base64.b64decode(p["leaf"][0])
    index, size = p["leafIndex"][0], p["treeSize"][0]
    root = base64.b64decode(p["root"][0])
    path = [base64.b64decode(h) for h in p.get("path", [])]
    assert str(index) == resource["id"]
    assert merkle.verify_inclusion(index, size, merkle.leaf_hash(leaf), path, root), resource["id"]
    return root
