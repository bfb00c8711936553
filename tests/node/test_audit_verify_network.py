"""`pacsmesh audit verify --node URL…` against real member nodes over HTTPS on one anvil chain.

Three hospitals: A and B exchange studies (transfer events written through their NodeAudit as
the shared vocabulary says, accesses recorded on chain with record_access); C only keeps its
own log, which the tampering test edits, deletes from and reorders in its database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger import keystore
from ledger.anchor import AuditAnchorClient
from ledger.audit_events import Action, EventType, Outcome, ParticipantRole
from ledger.audit_wire import MEMBER_ACCOUNT_SYSTEM
from ledger.chain import connect
from ledger.consent import ConsentClient, Purpose, consent_ref, study_hash
from ledger.deploy import Deployment, MemberInfo, deploy_suite, save_deployment
from node.services.audit import Actor
from tests.ledger.conftest import Anvil, free_port
from tests.node.audit_network_helpers import (
    MemberNode,
    make_tls,
    new_transfer_id,
    owner_event,
    requester_event,
    run_verify,
    serve_member_node,
    tampered,
)
from tests.node.consent_helpers import signed_grant
from tests.node.fhir_helpers import validate

pytestmark = pytest.mark.integration
HOSPITALS = ("hosp-a", "hosp-b", "hosp-c")
Report = dict[str, Any]


@dataclass
class Consortium:
    anvil: Anvil
    deployment: Deployment
    nodes: dict[str, MemberNode]
    auditor_dir: Path  # the deployment file, as an auditor keeps it
    token_dir: Path  # <hospital id>.token for each node
    ca_cert: Path

    def args(self, *hospitals: str) -> list[str]:
        out: list[str] = []
        for h in hospitals:
            out += ["--node", self.nodes[h].url]
        out += ["--token-file", str(self.token_dir), "--ca-cert", str(self.ca_cert)]
        return [*out, "--rpc", self.anvil.url, "--data-dir", str(self.auditor_dir)]

    def verify(self, *hospitals: str, extra: tuple[str, ...] = ()) -> tuple[int, Report]:
        """Exit code and JSON report of a verification of these nodes."""
        code, out = run_verify(*self.args(*hospitals), *extra, "--json")
        report: Report = json.loads(out)
        return code, report


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    root = tmp_path_factory.mktemp("audit-network")
    tls = make_tls(root / "pki")
    anvil = Anvil().start()
    try:
        ports = {h: free_port() for h in HOSPITALS}
        accounts = {h: keystore.ensure_node_account(root / h / "ledger") for h in HOSPITALS}
        deployer: LocalAccount = Account.create()
        for account in [deployer, *accounts.values()]:
            anvil.fund(account.address)
        chain = connect(root / "deployer", anvil.url, account=deployer)
        try:
            # Each member's registered endpoint is the URL its node really serves.
            members = [
                MemberInfo(h, accounts[h].address, f"https://127.0.0.1:{ports[h]}")
                for h in HOSPITALS
            ]
            deployment = deploy_suite(chain, members, 3600)
        finally:
            chain.close()
        for h in HOSPITALS:
            save_deployment(root / h / "ledger", deployment)
        save_deployment(root / "auditor", deployment)

        def serve(h: str) -> Any:
            return serve_member_node(h, root / h, root / h / "ledger", ports[h], anvil.url, tls)

        with serve("hosp-a") as a, serve("hosp-b") as b, serve("hosp-c") as c:
            token_dir = root / "tokens"
            token_dir.mkdir()
            for node in (a, b, c):
                (token_dir / f"{node.hospital_id}.token").write_text(node.auditor_token())
            nodes = {"hosp-a": a, "hosp-b": b, "hosp-c": c}
            yield Consortium(anvil, deployment, nodes, root / "auditor", token_dir, tls.ca_cert)
    finally:
        anvil.stop()


def kinds_and_entries(report: Report) -> list[tuple[str, list[int]]]:
    return [(f["kind"], f["entries"]) for f in report["findings"]]


# -- one node's log: tampering in its database ------------------------------------------------


def test_the_node_publishes_the_member_account_it_anchors_under(consortium: Consortium) -> None:
    a = consortium.nodes["hosp-a"]
    r = httpx.get(f"{a.url}/fhir/metadata", verify=str(consortium.ca_cert))
    assert r.status_code == 200
    identifier = validate(r.json())["implementation"]["custodian"]["identifier"]
    assert identifier == {"system": MEMBER_ACCOUNT_SYSTEM, "value": a.account}


def test_an_edited_a_deleted_and_a_reordered_event_are_each_found_by_index(
    consortium: Consortium,
) -> None:
    c = consortium.nodes["hosp-c"]
    actor = Actor("user:dr-quinn", ParticipantRole.CLINICIAN, "127.0.0.1")
    for _ in range(2):
        for _ in range(6):
            c.record(c.audit.event(EventType.QUERY, Action.EXECUTE, Outcome.SUCCESS, actor))
        c.anchor()

    code, report = consortium.verify("hosp-c")
    assert code == 0, report["findings"]
    (node,) = report["nodes"]
    assert (node["member"], node["hospital_id"]) == (c.account, "hosp-c")
    assert node["anchors_checked"] == 2 and node["anchored_size"] == 12
    assert node["served"] == node["entries"] >= 12
    assert node["unanchored"] == node["entries"] - 12

    edited, deleted, first, second = 3, 5, 7, 10
    event = json.loads(c.audit.log.entry(edited))
    event["outcome"] = 4  # the access now reads as refused
    forged = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    edit = ("UPDATE audit_entries SET body=? WHERE leaf_index=?", (forged, edited))
    with tampered(c.audit_db, edit):
        code, report = consortium.verify("hosp-c")
        text_code, text = run_verify(*consortium.args("hosp-c"))
    assert code == 1 == text_code
    # The entry itself, then each anchor over it, pointing at it.
    assert kinds_and_entries(report) == [
        ("edited", [edited]),
        ("anchor-mismatch", [edited]),
        ("anchor-mismatch", [edited]),
    ]
    assert f"edited: {c.url} entry {edited}: its content differs" in text
    assert "FAILED: 3 finding(s)" in text

    with tampered(c.audit_db, ("DELETE FROM audit_entries WHERE leaf_index=?", (deleted,))):
        code, report = consortium.verify("hosp-c")
    assert code == 1
    assert kinds_and_entries(report) == [
        ("missing", [deleted]),
        ("anchor-mismatch", [deleted]),
        ("anchor-mismatch", [deleted]),
    ]

    body_first, body_second = c.audit.log.entry(first), c.audit.log.entry(second)
    swap = "UPDATE audit_entries SET body=? WHERE leaf_index=?"
    with tampered(c.audit_db, (swap, (body_second, first)), (swap, (body_first, second))):
        code, report = consortium.verify("hosp-c")
    assert code == 1
    # The first anchor (6 entries) still matches: only the second covers the pair.
    assert kinds_and_entries(report) == [
        ("reordered", [first, second]),
        ("anchor-mismatch", [first, second]),
    ]
    assert report["findings"][0]["detail"] == f"entries {first} and {second} are swapped"

    # Restored: clean again, so each finding above came from its own change.
    code, report = consortium.verify("hosp-c")
    assert code == 0, report["findings"]


def test_a_node_that_cannot_be_read_is_named_while_the_others_are_checked(
    consortium: Consortium,
) -> None:
    c = consortium.nodes["hosp-c"]
    dead = f"https://127.0.0.1:{free_port()}"
    code, report = consortium.verify("hosp-c", extra=("--node", dead))
    assert code == 2
    good, bad = report["nodes"]
    assert good["readable"] and good["url"] == c.url and good["entries"] > 0
    assert not bad["readable"] and bad["url"] == dead
    code, text = run_verify(*consortium.args("hosp-c"), "--node", dead)
    assert code == 2 and f"INCOMPLETE: could not read {dead}" in text

    # The auditor pinned another member for this URL than the node names: not guessed.
    other = consortium.nodes["hosp-a"].account
    code, report = consortium.verify("hosp-c", extra=("--member", f"{c.url}={other}"))
    assert code == 2 and "not the pinned account" in report["nodes"][0]["error"]

    # A token the node did not sign is refused, and the report says so.
    (wrong := consortium.token_dir.parent / "wrong.token").write_text(
        consortium.nodes["hosp-a"].auditor_token()
    )
    code, out = run_verify(
        "--node", c.url, "--token-file", f"{c.url}={wrong}", "--ca-cert",
        str(consortium.ca_cert), "--rpc", consortium.anvil.url, "--data-dir",
        str(consortium.auditor_dir), "--json",
    )  # fmt: skip
    assert code == 2 and "answered 401" in json.loads(out)["nodes"][0]["error"]


# -- transfers and consent across A and B -------------------------------------------------------


@dataclass
class Exchange:
    """Writes cross-hospital transfers of A's studies to B, as both nodes and the chain would."""

    consortium: Consortium
    owner: MemberNode
    requester: MemberNode
    patient: LocalAccount

    @property
    def address(self) -> str:
        return self.patient.address.lower()

    def grant(self, study_uid: str) -> str:
        """The patient grants B treatment access to one study; its consentRef."""
        client = ConsentClient(self.requester.link.chain, self.consortium.deployment)
        grantee = self.requester.link.account
        client.relay(signed_grant(client, self.patient, grantee, Purpose.TREATMENT, study_uid))
        return self.ref(study_uid)

    def ref(self, study_uid: str) -> str:
        key = (self.patient.address, self.requester.link.account, Purpose.TREATMENT)
        return "0x" + consent_ref(*key, study_hash(study_uid)).hex()

    def break_glass(self, study_uid: str) -> str:
        client = ConsentClient(self.requester.link.chain, self.consortium.deployment)
        return client.record_break_glass(self.patient.address, study_hash(study_uid), 1)

    def record_access(self, study_uid: str, consent: str) -> bool:
        """B records the access on chain (as before fetching); whether consent was in force."""
        client = AuditAnchorClient(self.requester.link.chain, self.consortium.deployment)
        client.record_access(
            self.owner.link.account,
            self.patient.address,
            study_hash(study_uid),
            Purpose.TREATMENT,
            bytes.fromhex(consent.removeprefix("break-glass:")[2:]),
        )
        return client.accesses(requester=self.requester.link.account)[-1].permitted

    def transfer(
        self,
        study_uid: str,
        consent: str,
        sides: tuple[str, ...] = ("owner", "requester"),
        outcome: Outcome = Outcome.SUCCESS,
    ) -> tuple[str, dict[str, int]]:
        """Both sides' (or one side's) events of one transfer: its id and their leaf indices."""
        o, r, tid, who = self.owner, self.requester, new_transfer_id(), self.address
        at: dict[str, int] = {}
        if "owner" in sides:
            at["owner"] = o.record(owner_event(o, r, tid, who, study_uid, consent, outcome))
        if "requester" in sides:
            at["requester"] = r.record(requester_event(r, o, tid, who, study_uid, consent, outcome))
        return tid, at

    def anchor(self) -> None:
        self.owner.anchor()
        self.requester.anchor()


def test_every_transfer_must_be_logged_by_both_sides_under_consent_or_break_glass(
    consortium: Consortium,
) -> None:
    a, b = consortium.nodes["hosp-a"], consortium.nodes["hosp-b"]
    x = Exchange(consortium, a, b, Account.create())
    study = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(6)]

    # B fetches a study of A's under the patient's consent; and another by break-glass,
    # recorded on chain before the access. Both clean.
    ref0 = x.grant(study[0])
    assert x.record_access(study[0], ref0)
    t0, _ = x.transfer(study[0], ref0)
    glass = f"break-glass:{x.break_glass(study[1])}"
    assert not x.record_access(study[1], glass)
    t1, _ = x.transfer(study[1], glass)
    # The owner refused one (no consent in force: its event names none, as the exchange logs a
    # refusal) while the requester's names the grant it relied on: both sides logged it,
    # nothing left A, so there is no access to justify.
    refused = new_transfer_id()
    a.record(owner_event(a, b, refused, x.address, study[5], None, Outcome.MINOR_FAILURE))
    b.record(
        requester_event(b, a, refused, x.address, study[5], x.ref(study[5]), Outcome.MINOR_FAILURE)
    )
    x.anchor()

    code, report = consortium.verify("hosp-a", "hosp-b")
    assert code == 0, report["findings"]
    node_a, node_b = report["nodes"]
    assert node_a["transfers"] == {"owner": 3, "requester": 0}
    assert node_b["transfers"] == {"owner": 0, "requester": 3}
    assert report["accesses"] == {"checked": 2, "consented": 1, "break_glass": 1, "not_released": 1}
    assert report["unverifiable"] == []

    # B alone: A's side of both transfers cannot be checked; only --strict makes that fail.
    # (B's record of the refusal asks nothing of A: A may have refused it as an unknown peer.)
    code, report = consortium.verify("hosp-b")
    assert code == 0
    assert {u["transfer_id"] for u in report["unverifiable"]} == {t0, t1}
    code, report = consortium.verify("hosp-b", extra=("--strict",))
    assert code == 1
    assert {f["kind"] for f in report["findings"]} == {"transfer-unverifiable"}
    assert {f["transfer_id"] for f in report["findings"]} == {t0, t1}

    # An access without consent on chain: found; a break-glass recorded only after the access
    # does not justify it. An access never recorded on chain: found.
    no_grant = x.ref(study[2])
    assert not x.record_access(study[2], no_grant)
    t2, at2 = x.transfer(study[2], no_grant)
    x.break_glass(study[2])
    ref3 = x.grant(study[3])
    t3, at3 = x.transfer(study[3], ref3)
    # A transfer logged by the requester only, and one logged by the owner only.
    ref4 = x.grant(study[4])
    assert x.record_access(study[4], ref4)
    t4, at4 = x.transfer(study[4], ref4, sides=("requester",))
    assert x.record_access(study[4], ref4)
    t5, at5 = x.transfer(study[4], ref4, sides=("owner",))
    # Both sides logged one transfer, but the owner says it sent another study.
    assert x.record_access(study[4], ref4)
    t6 = new_transfer_id()
    at6 = a.record(owner_event(a, b, t6, x.address, study[3], ref4))
    b.record(requester_event(b, a, t6, x.address, study[4], ref4))
    # A was down when B asked (connection refused): B logged the attempt as never answered
    # (12), A never saw it. No finding.
    b.record(
        requester_event(b, a, new_transfer_id(), x.address, study[4], ref4, Outcome.MAJOR_FAILURE)
    )
    # A logged a refusal of a transfer B logged as received in full.
    t8 = new_transfer_id()
    at8 = a.record(owner_event(a, b, t8, x.address, study[4], None, Outcome.MINOR_FAILURE))
    b.record(requester_event(b, a, t8, x.address, study[4], ref4))
    x.anchor()

    code, report = consortium.verify("hosp-a", "hosp-b")
    assert code == 1
    found = {
        (f["kind"], f["node"], tuple(f["entries"]), f.get("transfer_id"))
        for f in report["findings"]
    }
    assert found == {
        ("transfer-unpaired", a.url, (at5["owner"],), t5),
        ("transfer-unpaired", b.url, (at4["requester"],), t4),
        ("access-without-consent", b.url, (at2["requester"],), t2),
        ("access-not-recorded", b.url, (at3["requester"],), t3),
        ("transfer-mismatch", a.url, (at6,), t6),
        ("transfer-mismatch", a.url, (at8,), t8),
    }
    assert len(report["findings"]) == 6
    details = {f["transfer_id"]: f["detail"] for f in report["findings"]}
    assert details[t6].endswith("disagree on the study")
    assert details[t8].endswith("disagree on the outcome (the owner recorded 4, the requester 0)")
    # Nothing in the report identifies the patient, not even by their pseudonymous address.
    assert x.address[2:] not in json.dumps(report)

    code, text = run_verify(*consortium.args("hosp-a", "hosp-b"))
    assert code == 1
    assert f"transfer-unpaired: {b.url} entry {at4['requester']} transfer {t4}:" in text
    assert "logged by the requester only" in text
