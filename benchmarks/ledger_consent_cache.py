"""Consent-check latency from the local cache at 100,000 grants.

The 100,000 grants are loaded into the cache directly, through the same apply_grant/
apply_member calls its event sync makes (synthesizing 100k signed grants on a chain would take
hours on this machine and measures the chain, not the lookup). A real sync of a smaller number
of grants from anvil events runs first to show the cache built from the chain answers the same.

Run from the repository root:
    PYTHONPATH=$PWD python benchmarks/ledger_consent_cache.py [--grants 100000] [--checks 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from eth_account import Account
from eth_utils.address import to_checksum_address

from ledger.chain import connect
from ledger.consent import ALL_MEMBERS, ALL_STUDIES, ConsentCache, ConsentClient, Purpose
from ledger.deploy import MemberInfo, deploy_suite
from tests.ledger.conftest import Anvil


def real_sync(grants: int) -> dict[str, float]:
    """Grants relayed on anvil, then one cache sync from their events."""
    anvil = Anvil().start()
    try:
        node = Account.create()
        anvil.fund(node.address)
        with tempfile.TemporaryDirectory() as tmp:
            chain = connect(Path(tmp), anvil.url, account=node)
            deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
            consent = ConsentClient(chain, deployment)
            patients = [Account.create() for _ in range(grants)]
            for p in patients:
                consent.relay(
                    consent.sign(p, consent.request(p.address, node.address, Purpose.TREATMENT))
                )
            cache = ConsentCache(chain, deployment)
            start = time.perf_counter()
            cache.sync()
            sync_s = time.perf_counter() - start
            agree = all(
                cache.check(p.address, node.address, Purpose.TREATMENT).permitted
                == consent.is_permitted(p.address, node.address, Purpose.TREATMENT)
                for p in patients
            )
            chain.close()
    finally:
        anvil.stop()
    return {"grants": grants, "sync_seconds": sync_s, "cache_agrees_with_contract": agree}


def synthetic(grants: int, checks: int, seed: int = 7) -> dict[str, float]:
    """Latency of cache.check over a cache holding `grants` grants."""
    rng = random.Random(seed)
    cache = ConsentCache(None, None, max_age_seconds=3600)
    members = [to_checksum_address(os.urandom(20)) for _ in range(20)]
    for m in members:
        cache.apply_member(m, True)
    patients = [to_checksum_address(rng.randbytes(20)) for _ in range(grants)]
    now = int(time.time())
    for i, p in enumerate(patients):
        grantee = ALL_MEMBERS if i % 10 == 0 else members[i % len(members)]
        study = ALL_STUDIES if i % 3 else rng.randbytes(32)
        cache.apply_grant(p, grantee, i % 3, study, now - 60, 0 if i % 4 else now + 86_400)
    cache.mark_synced(1)
    queries = [
        (rng.choice(patients), rng.choice(members), Purpose(rng.randrange(3)), rng.randbytes(32))
        for _ in range(checks)
    ]
    latencies = []
    permitted = 0
    for patient, grantee, purpose, study in queries:
        t = time.perf_counter_ns()
        decision = cache.check(patient, grantee, purpose, study)
        latencies.append(time.perf_counter_ns() - t)
        permitted += decision.permitted
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000

    return {
        "grants": len(cache),
        "checks": checks,
        "permitted_fraction": permitted / checks,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "max_us": latencies[-1] / 1000,
        "mean_us": statistics.fmean(latencies) / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grants", type=int, default=100_000)
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--chain-grants", type=int, default=200)
    args = parser.parse_args()
    result = {
        "chain_sync": real_sync(args.chain_grants),
        "cache": synthetic(args.grants, args.checks),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
