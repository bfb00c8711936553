"""Consent at the node: a posted grant end to end, and a decision from the cache.

`POST /fhir/Consent` over a real socket on the embedded chain: parse, verify the EIP-712
signature, check deadline and nonce, relay, sync the cache, answer the Consent. Then
`ConsentDecisions.decide` for a permitted cross-hospital access (cache lookup plus the
permitting consentRef), the call the network API makes per study.

Run from the repository root:
    PYTHONPATH=$PWD python benchmarks/consent_node.py [--posts 20] [--decides 20000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from eth_account import Account

from ledger.consent import Purpose
from node.services.consent_decisions import ConsentDecisions
from node.services.patient_links import sign_link
from tests.node.consent_helpers import (
    HOSPITAL_A,
    consent_post,
    make_consortium,
    serve_consent_node,
    signed_grant,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--decides", type=int, default=20_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="consent-bench-"))
    consortium = make_consortium(tmp / "node" / "ledger")
    with serve_consent_node(tmp / "node", consortium) as node:
        patient_id = node.add_patient(mrn="BENCH-1", issuer="BENCH")
        patient = Account.create()
        linked = node.post(
            f"Patient/{patient_id}/$link",
            sign_link(patient, HOSPITAL_A, "BENCH-1", "BENCH").to_parameters(),
        )
        assert linked.status_code == 200, linked.text
        link, member_b = node.ledger, consortium.member_b.address
        posts = []
        for i in range(args.posts):
            signed = signed_grant(link.consent, patient, member_b, Purpose.TREATMENT, f"1.2.3.{i}")
            body = consent_post(node, signed, patient_id)
            start = time.perf_counter()
            reply = node.post("Consent", body)
            posts.append(time.perf_counter() - start)
            assert reply.status_code == 201, reply.text
        decisions = ConsentDecisions(link)
        start = time.perf_counter()
        for _ in range(args.decides):
            decision = decisions.decide(member_b, patient.address, Purpose.TREATMENT, "1.2.3.0")
        per_decide = (time.perf_counter() - start) / args.decides
        assert decision.permitted and decision.consent_ref
    print(
        json.dumps(
            {
                "post_consent_ms_median": round(statistics.median(posts) * 1000, 1),
                "posts": args.posts,
                "decide_us_mean": round(per_decide * 1e6, 1),
                "decides": args.decides,
            }
        )
    )


if __name__ == "__main__":
    main()
