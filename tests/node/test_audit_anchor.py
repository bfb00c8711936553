"""The node's audit log anchored on chain (embedded chain and anvil): the root an auditor reads
from the chain verifies the node's events and their FHIR proofs."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from ledger import merkle
from ledger.anchor import AuditAnchorClient
from ledger.audit_events import Action, EntityKind, EventType, Outcome, ParticipantRole
from node.fhir.audit_events import TreeHead, audit_event_resource
from node.fhir.audit_search import Hit
from node.services.audit import Actor, NodeAudit, start_anchoring
from tests.ledger.conftest import ChainEnv, anvil, env  # noqa: F401  (fixtures)
from tests.node.audit_helpers import proof, verify_proof
from tests.node.fhir_helpers import validate


def test_anchoring_puts_the_logs_root_on_chain(env: ChainEnv, tmp_path: Path) -> None:  # noqa: F811
    member = env.new_account()
    env.deploy([("hospital-a", member)])
    assert env.deployment is not None
    client = AuditAnchorClient(env.chain_for(member), env.deployment)
    audit = NodeAudit.open(tmp_path / "node", "hospital-a")
    worker = start_anchoring(audit.log, client, every_events=3, every_seconds=3600)
    try:
        actor = Actor("user:alice", ParticipantRole.CLINICIAN, "127.0.0.1")
        for i in range(3):
            study = [(EntityKind.STUDY, "sha256:" + f"{i:064x}")]
            audit.record(
                audit.event(EventType.QUERY, Action.EXECUTE, Outcome.SUCCESS, actor, study)
            )
        # The worker records the anchor in the log once the chain's receipt is in: wait for
        # that local record, which is what the node's proofs are built from.
        deadline = time.monotonic() + 60
        while not audit.log.anchors() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.latest(member.address) == (3, audit.log.root(3))
        # An event recorded after the anchor: proved against the head, not yet anchored.
        audit.record(audit.event(EventType.QUERY, Action.EXECUTE, Outcome.SUCCESS, actor))
        head = TreeHead.of(audit.log)
        (size, chain_root) = client.latest(member.address) or (0, b"")
        for index in range(4):
            resource = validate(
                audit_event_resource(audit.log, Hit(index, audit.log.entry(index)), head)
            )
            verify_proof(resource)
            p = proof(resource)
            if index < size:
                anchored = base64.b64decode(p["anchoredRoot"][0])
                assert anchored == chain_root and p["anchoredSize"] == [3]
                path = [base64.b64decode(h) for h in p["anchoredPath"]]
                leaf = merkle.leaf_hash(audit.log.entry(index))
                assert merkle.verify_inclusion(index, size, leaf, path, chain_root)
                assert p["anchorTransaction"][0].startswith("0x")
            else:
                assert "anchoredRoot" not in p
    finally:
        worker.stop()  # anchors what is pending on the way out
        assert client.latest(member.address) == (4, audit.log.root(4))
        audit.close()
