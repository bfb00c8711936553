"""A node linked to a ledger anchors its own audit log on chain, from the app's lifespan."""

from __future__ import annotations

import time
from pathlib import Path

from ledger.anchor import AuditAnchorClient
from tests.node.consent_helpers import make_consortium, serve_consent_node


def test_linked_node_anchors_its_audit_root(tmp_path: Path) -> None:
    consortium = make_consortium(tmp_path / "ledger")
    with serve_consent_node(
        tmp_path / "node", consortium, audit_anchor_every_events=3, audit_anchor_every_seconds=0.5
    ) as node:
        for _ in range(4):
            node.request("GET", "Patient")  # each request is an audit event
        link = node.ledger
        anchors = AuditAnchorClient(link.chain, link.deployment)
        deadline = time.monotonic() + 30
        latest = anchors.latest(link.account)
        while (latest is None or latest[0] < 4) and time.monotonic() < deadline:
            time.sleep(0.2)
            latest = anchors.latest(link.account)
        assert latest is not None and latest[0] >= 4, "the audit root never reached the chain"
        size, root = latest
        audit_log = node.app.state.audit.log  # type: ignore[union-attr]
        # The anchored root is the root of the node's own log at that size.
        assert audit_log.root(size) == root
