"""Gas used per ledger operation, measured from receipts on a real anvil process.

Run from the repository root:
    PYTHONPATH=$PWD python benchmarks/ledger_gas.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from eth_account import Account

from ledger.anchor import AuditAnchorClient
from ledger.chain import Chain, connect
from ledger.consent import ConsentClient, Purpose, study_hash
from ledger.consortium import ConsortiumClient, ProposalKind
from ledger.deploy import MemberInfo, deploy_suite, load_artifact
from tests.ledger.conftest import Anvil


def gas_of(chain: Chain, tx_hash: str) -> int:
    return int(chain.w3.eth.get_transaction_receipt(tx_hash)["gasUsed"])  # type: ignore[arg-type]


def main() -> None:
    anvil = Anvil().start()
    try:
        a, b, patient = Account.create(), Account.create(), Account.create()
        for acct in (a, b, patient):
            anvil.fund(acct.address)
        with tempfile.TemporaryDirectory() as tmp:
            chain = connect(Path(tmp) / "a", anvil.url, account=a)
            chain_b = Chain(chain.w3, b, rpc_url=anvil.url)
            as_patient = Chain(chain.w3, patient, rpc_url=anvil.url)
            gas: dict[str, int] = {}

            founders = [
                MemberInfo("hosp-a", a.address, "https://a.example", b"\x01" * 32),
                MemberInfo("hosp-b", b.address, "https://b.example", b"\x02" * 32),
            ]
            for name in ("ConsortiumRegistry", "ConsentRegistry", "AuditAnchor"):
                load_artifact(name)
            start = chain.block_number()
            deployment = deploy_suite(chain, founders)
            deploy_gas = 0
            for n in range(start + 1, chain.block_number() + 1):
                for tx in chain.w3.eth.get_block(n)["transactions"]:
                    deploy_gas += gas_of(chain, "0x" + bytes(tx).hex())  # type: ignore[arg-type]
            gas["deploy suite (3 contracts, 2 founders)"] = deploy_gas

            registry, registry_b = (
                ConsortiumClient(chain, deployment),
                ConsortiumClient(chain_b, deployment),
            )
            newcomer = Account.create()
            pid = registry.propose(
                ProposalKind.ADD, newcomer.address, "hosp-c", "https://c.example"
            )
            gas["consortium propose (add)"] = int(
                chain.w3.eth.get_block("latest")["gasUsed"]  # one tx per block on anvil
            )
            registry_b.vote(pid, True)
            gas["consortium vote (executes add)"] = int(chain.w3.eth.get_block("latest")["gasUsed"])

            consent = ConsentClient(chain, deployment)
            own = ConsentClient(as_patient, deployment)
            study = study_hash("1.2.826.0.1.3680043.8.498.1")
            gas["consent grant (patient's own tx)"] = gas_of(
                chain, own.grant_direct(b.address, Purpose.TREATMENT, study)
            )
            signed = consent.sign(
                patient, consent.request(patient.address, b.address, Purpose.RESEARCH, study)
            )
            gas["consent grant by EIP-712 signature (relayed)"] = gas_of(
                chain, consent.relay(signed)
            )
            revoke = consent.sign(
                patient,
                consent.request(patient.address, b.address, Purpose.RESEARCH, study, revoke=True),
            )
            gas["consent revoke by signature (relayed)"] = gas_of(chain, consent.relay(revoke))
            gas["consent revoke (patient's own tx)"] = gas_of(
                chain, own.revoke_direct(b.address, Purpose.TREATMENT, study)
            )
            gas["break-glass record"] = gas_of(
                chain, consent.record_break_glass(patient.address, study, 3)
            )

            anchors = AuditAnchorClient(chain, deployment)
            gas["audit anchor (first)"] = gas_of(chain, anchors.anchor(1000, b"\x11" * 32).tx_hash)
            gas["audit anchor (subsequent)"] = gas_of(
                chain, anchors.anchor(2000, b"\x22" * 32).tx_hash
            )
            access = AuditAnchorClient(chain_b, deployment).record_access(
                a.address, patient.address, study, Purpose.TREATMENT, b"\x33" * 32
            )
            gas["cross-hospital access record"] = gas_of(chain, access.tx_hash)
            chain.close()
    finally:
        anvil.stop()
    print(json.dumps(gas, indent=2))
    print("\n| operation | gas |\n|---|---:|")
    for k, v in gas.items():
        print(f"| {k} | {v:,} |")


if __name__ == "__main__":
    main()
