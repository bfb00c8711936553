"""The anchoring worker over the real AuditLog: batching, chain outage, and reorgs."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from eth_account import Account

from ledger import merkle
from ledger.anchor import AnchorWorker, AuditAnchorClient
from ledger.audit_events import AuditEvent, uid_hash
from ledger.audit_log import AuditLog
from ledger.chain import connect
from ledger.deploy import MemberInfo, deploy_suite
from ledger.errors import ChainUnavailableError
from tests.ledger.conftest import Anvil, ChainEnv, free_port, rpc

T0 = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)


def event(i: int) -> AuditEvent:
    """A study read by a clinician at another hospital, distinct for every i."""
    return AuditEvent(
        event_type="instances-accessed",
        action="R",
        outcome=0,
        recorded=T0 + timedelta(milliseconds=i),
        agents=[
            {"who": f"user:clinician-{i % 5}@hospital-b", "role": "clinician", "requestor": True}
        ],
        entities=[
            {"kind": "patient", "ref": "0x" + f"{i:040x}"},
            {"kind": "study", "ref": uid_hash(f"1.2.826.0.1.3680043.9.{i}")},
        ],
        source={"node": "hospital-a"},
        purpose="treatment",
    )


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog.open(tmp_path / "audit.sqlite")
    yield log
    log.close()


def assert_auditable(log: AuditLog, client: AuditAnchorClient, member: str) -> None:
    """What an auditor checks: every chain anchor matches the log and extends the previous."""
    history = client.history(member)
    assert history, "nothing anchored"
    assert history[-1][0] == log.size(), "the last anchor must cover every event"
    for size, root, _block in history:
        assert log.root(size) == root
    for (s1, r1, _), (s2, r2, _) in itertools.pairwise(history):
        assert merkle.verify_consistency(s1, s2, r1, r2, log.consistency_proof(s1, s2))
    assert log.verify([(s, r) for s, r, _ in history]) == []


def test_worker_batches_by_count_and_by_time(env: ChainEnv, audit_log: AuditLog) -> None:
    node = env.new_account()
    env.deploy([("hosp-a", node)])
    assert env.deployment is not None
    client = AuditAnchorClient(env.chain_for(node), env.deployment)
    worker = AnchorWorker(audit_log, client, every_events=5, every_seconds=3600)

    audit_log.append_many([event(i) for i in range(4)])
    assert worker.run_once() is None  # 4 < 5 and the time bound is far off
    audit_log.append(event(4))
    first = worker.run_once()
    assert first is not None
    assert client.latest(node.address) == (5, audit_log.root(5))
    assert [a.size for a in audit_log.anchors()] == [5]

    audit_log.append_many([event(i) for i in range(5, 7)])
    assert worker.run_once() is None
    worker.every_seconds = 0.2
    time.sleep(0.25)
    assert worker.run_once() is not None  # the time bound anchors a partial batch
    assert client.latest(node.address) == (7, audit_log.root(7))
    assert worker.run_once() is None  # nothing new, nothing sent
    assert_auditable(audit_log, client, node.address)


def test_background_worker_anchors_everything_by_stop(env: ChainEnv, audit_log: AuditLog) -> None:
    node = env.new_account()
    env.deploy([("hosp-a", node)])
    assert env.deployment is not None
    client = AuditAnchorClient(env.chain_for(node), env.deployment)
    worker = AnchorWorker(audit_log, client, every_events=20, every_seconds=60, poll_interval=0.05)
    worker.start()

    def anchored_sizes() -> list[int]:
        return [size for size, _root, _block in client.history(node.address)]

    try:
        # Each batch of 20 crosses the event threshold: the running worker anchors it without
        # being asked (waited for, so the test does not depend on thread scheduling).
        for batch in range(2):
            for i in range(20):
                audit_log.append(event(batch * 20 + i))
            deadline = time.monotonic() + 30
            while (not anchored_sizes() or anchored_sizes()[-1] < 20 * (batch + 1)) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.05)
            assert anchored_sizes()[-1] >= 20 * (batch + 1), "worker did not anchor a full batch"
        for i in range(40, 53):
            audit_log.append(event(i))
    finally:
        worker.stop()
    # stop() anchors what is left below the threshold: nothing stays unanchored.
    assert anchored_sizes()[-1] == 53
    assert len(anchored_sizes()) >= 3
    assert_auditable(audit_log, client, node.address)


@pytest.mark.integration
@pytest.mark.slow
def test_chain_outage_loses_nothing(tmp_path: Path, audit_log: AuditLog) -> None:
    port = free_port()
    state = tmp_path / "anvil-state.json"
    anvil = Anvil(port=port, state_file=state).start()
    try:
        node = Account.create()
        anvil.fund(node.address)
        chain = connect(tmp_path, anvil.url, account=node, timeout=2.0)
        deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
        client = AuditAnchorClient(chain, deployment)
        worker = AnchorWorker(
            audit_log, client, every_events=10, every_seconds=0.2, poll_interval=0.02
        )
        worker.start()
        for i in range(60):
            audit_log.append(event(i))
            time.sleep(0.005)
        anvil.stop()  # the chain goes away mid-stream
        for i in range(60, 120):
            audit_log.append(event(i))  # events keep being recorded durably
            time.sleep(0.005)
        time.sleep(0.3)
        assert isinstance(worker.last_error, ChainUnavailableError)
        anchored_during_outage = max(a.size for a in audit_log.anchors())
        assert anchored_during_outage < 120
        anvil = Anvil(port=port, state_file=state).start()  # back, with its state
        for i in range(120, 150):
            audit_log.append(event(i))
            time.sleep(0.005)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            latest = client.latest(node.address)
            if latest is not None and latest[0] == 150:
                break
            time.sleep(0.1)
        worker.stop()
        assert client.latest(node.address) == (150, audit_log.root(150))
        assert_auditable(audit_log, client, node.address)
    finally:
        anvil.stop()


@pytest.mark.integration
def test_reorged_anchors_are_resubmitted(anvil: Anvil, tmp_path: Path, audit_log: AuditLog) -> None:
    node = Account.create()
    anvil.fund(node.address)
    chain = connect(tmp_path, anvil.url, account=node)
    deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
    client = AuditAnchorClient(chain, deployment)
    worker = AnchorWorker(audit_log, client, every_events=3, every_seconds=3600)

    audit_log.append_many([event(i) for i in range(3)])
    kept = worker.run_once()
    rpc(anvil.url, "evm_mine")
    audit_log.append_many([event(i) for i in range(3, 6)])
    lost = worker.run_once()
    assert kept is not None and lost is not None
    assert client.latest(node.address) == (6, audit_log.root(6))

    # Drop the last block (the second anchor) from the canonical chain.
    rpc(anvil.url, "anvil_reorg", [1, []])
    assert not chain.is_canonical(lost.tx_hash)
    assert client.latest(node.address) == (3, audit_log.root(3))

    worker.every_events = 1000  # neither bound is due: only the reorg triggers this anchor
    resubmitted = worker.run_once()
    assert resubmitted is not None and resubmitted.tx_hash != lost.tx_hash
    assert [a.tx_hash for a in audit_log.anchors()] == [kept.tx_hash, resubmitted.tx_hash]
    assert client.latest(node.address) == (6, audit_log.root(6))
    assert_auditable(audit_log, client, node.address)


@pytest.mark.integration
def test_a_reorg_after_anchors_were_checked_is_still_caught(
    anvil: Anvil, tmp_path: Path, audit_log: AuditLog
) -> None:
    # Once checked, anchors are watched through one block hash: a reorg under the newest
    # anchor's block, or deeper, must still bring them back to the chain.
    node = Account.create()
    anvil.fund(node.address)
    chain = connect(tmp_path, anvil.url, account=node)
    deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
    client = AuditAnchorClient(chain, deployment)
    worker = AnchorWorker(audit_log, client, every_events=3, every_seconds=3600)

    audit_log.append_many([event(i) for i in range(3)])
    first = worker.run_once()
    audit_log.append_many([event(i) for i in range(3, 6)])
    second = worker.run_once()
    assert first is not None and second is not None
    for _ in range(3):  # nothing is due: each run only re-checks what was anchored
        assert worker.run_once() is None
    assert [a.tx_hash for a in audit_log.anchors()] == [first.tx_hash, second.tx_hash]

    # Replace the last two blocks: both anchors leave the canonical chain.
    rpc(anvil.url, "anvil_reorg", [2, []])
    assert not chain.is_canonical(first.tx_hash) and not chain.is_canonical(second.tx_hash)

    again = worker.run_once()
    assert again is not None
    assert [a.tx_hash for a in audit_log.anchors()] == [again.tx_hash]
    assert client.latest(node.address) == (6, audit_log.root(6))
    assert_auditable(audit_log, client, node.address)
