"""Audit events recorded per second: Merkle log + batched anchoring vs one transaction per event.

Both paths run against the same real anvil process (npm @foundry-rs/anvil). The batched path
records events in the persistent AuditLog (SQLite, synchronous=FULL) from concurrent request
threads through the AuditRecorder (each thread waits until its event is committed; one writer
thread commits whatever is queued in one transaction) while the AnchorWorker anchors the root
every N events or T seconds; the clock stops once the last event is anchored on chain.
``--path append`` runs the earlier batched path instead: every thread calls AuditLog.append().
The per-transaction path sends one AuditAnchor transaction per event and waits for its receipt,
as a node would to know each event is on chain.

Run from the repository root:
    PYTHONPATH=$PWD python benchmarks/ledger_audit_throughput.py [--events 20000] [--threads 128]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from eth_account import Account

from ledger.anchor import AnchorWorker, AuditAnchorClient
from ledger.audit_events import AuditEvent, uid_hash
from ledger.audit_log import AuditLog
from ledger.audit_recorder import AuditRecorder
from ledger.chain import connect
from ledger.deploy import MemberInfo, deploy_suite
from tests.ledger.conftest import Anvil

T0 = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)


def make_event(i: int) -> AuditEvent:
    """A cross-hospital study read, distinct for every i."""
    return AuditEvent(
        event_type="instances-accessed",
        action="R",
        outcome=0,
        recorded=T0 + timedelta(microseconds=i),
        agents=[
            {"who": f"user:clinician-{i % 50}@hospital-b", "role": "clinician", "requestor": True}
        ],
        entities=[
            {"kind": "patient", "ref": "0x" + f"{i:040x}"},
            {"kind": "study", "ref": uid_hash(f"1.2.826.0.1.3680043.9.{i}")},
        ],
        source={"node": "hospital-a"},
        purpose="treatment",
    )


def batched(
    anvil: Anvil, work: Path, events: list[AuditEvent], threads: int, path: str
) -> dict[str, float | str]:
    node = Account.create()
    anvil.fund(node.address)
    chain = connect(work / "batched", anvil.url, account=node)
    deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
    client = AuditAnchorClient(chain, deployment)
    log = AuditLog.open(work / "batched" / "audit.sqlite")
    worker = AnchorWorker(log, client, every_events=1000, every_seconds=1.0, poll_interval=0.05)
    recorder = AuditRecorder(log, max_batch=1000)
    record = recorder.record if path == "recorder" else log.append
    share = [events[i::threads] for i in range(threads)]

    def request_thread(mine: list[AuditEvent]) -> None:
        for e in mine:
            record(e)  # returns once durable

    start = time.perf_counter()
    worker.start()
    pool = [threading.Thread(target=request_thread, args=(s,)) for s in share]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    appended = time.perf_counter() - start
    recorder.close()
    worker.stop()  # anchors whatever is still pending
    elapsed = time.perf_counter() - start
    latest = client.latest(node.address)
    assert latest is not None and latest[0] == len(events) == log.size()
    anchors = len(client.history(node.address))
    log.close()
    chain.close()
    result: dict[str, float | str] = {
        "path": path,
        "events": len(events),
        "threads": threads,
        "seconds": elapsed,
        "events_per_s": len(events) / elapsed,
        "append_only_events_per_s": len(events) / appended,
        "anchor_transactions": anchors,
    }
    if path == "recorder":
        result["commits"] = recorder.committed_batches
        result["mean_batch"] = len(events) / recorder.committed_batches
    return result


def per_transaction(anvil: Anvil, work: Path, events: list[AuditEvent]) -> dict[str, float]:
    node = Account.create()
    anvil.fund(node.address)
    chain = connect(work / "per-tx", anvil.url, account=node)
    deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
    client = AuditAnchorClient(chain, deployment)
    start = time.perf_counter()
    for i, e in enumerate(events, start=1):
        client.anchor(i, hashlib.sha256(e.canonical()).digest())
    elapsed = time.perf_counter() - start
    chain.close()
    return {"events": len(events), "seconds": elapsed, "events_per_s": len(events) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=128, help="concurrent request threads")
    parser.add_argument(
        "--path",
        choices=["recorder", "append"],
        default="recorder",
        help="batched path: AuditRecorder (default) or AuditLog.append() in every thread",
    )
    parser.add_argument("--per-tx-events", type=int, default=500)
    args = parser.parse_args()
    events = [make_event(i) for i in range(args.events)]
    with tempfile.TemporaryDirectory() as tmp:
        anvil = Anvil().start()
        try:
            b = batched(anvil, Path(tmp), events, args.threads, args.path)
            p = per_transaction(anvil, Path(tmp), events[: args.per_tx_events])
        finally:
            anvil.stop()
    speedup = float(b["events_per_s"]) / float(p["events_per_s"])
    result = {"batched": b, "per_transaction": p, "speedup": speedup}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
