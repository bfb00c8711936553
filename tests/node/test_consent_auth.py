"""Consent routes under the node's real bearer-token middleware: a patient token reaches only
its own record, unlinking is for administrators, staff see what their scopes allow."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.consent import Purpose
from node.api.fhir.consent import CONSENT_ROUTE_RULES
from node.auth.policy import PatientBinding
from node.services.patient_links import sign_link
from tests.node.authhelpers import account_token
from tests.node.consent_helpers import (
    HOSPITAL_A,
    ConsentNode,
    consent_post,
    make_consortium,
    serve_consent_node,
    signed_grant,
)

ISSUER = "HOSP-A"


@dataclass
class World:
    node: ConsentNode
    b: str
    alice: LocalAccount
    bob: LocalAccount
    alice_id: int
    bob_id: int

    def token(self, role: str, mrn: str | None = None) -> str:
        assert self.node.app is not None
        settings = self.node.app.state.settings
        patient = PatientBinding(mrn, ISSUER) if mrn else None
        return account_token(settings, f"{role}-1", role, 600, patient=patient).access_token

    def call(self, method: str, path: str, token: str | None, body: Any = None) -> httpx.Response:
        headers = {"Content-Type": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(
            method, f"{self.node.fhir}/{path}", json=body, headers=headers, timeout=60
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    consortium = make_consortium(tmp_path / "node" / "ledger")
    with serve_consent_node(tmp_path / "node", consortium, rules=CONSENT_ROUTE_RULES) as node:
        alice, bob = Account.create(), Account.create()
        alice_id = node.add_patient(mrn="MRN-ALICE", issuer=ISSUER)
        bob_id = node.add_patient(mrn="MRN-BOB", issuer=ISSUER)
        w = World(node, consortium.member_b.address, alice, bob, alice_id, bob_id)
        admin = w.token("admin")
        for who, pid, mrn in ((alice, alice_id, "MRN-ALICE"), (bob, bob_id, "MRN-BOB")):
            body = sign_link(who, HOSPITAL_A, mrn, ISSUER).to_parameters()
            assert w.call("POST", f"Patient/{pid}/$link", admin, body).status_code == 200
        bob_grant = signed_grant(node.ledger.consent, bob, w.b, Purpose.TREATMENT)
        reply = w.call("POST", "Consent", admin, consent_post(node, bob_grant, bob_id))
        assert reply.status_code == 201, reply.text
        yield w


def test_patient_token_sees_and_acts_for_its_own_record_only(world: World) -> None:
    node, alice = world.node, world.token("patient", "MRN-ALICE")
    assert world.call("GET", "Consent", alice).json()["total"] == 0  # Bob's grant is hidden
    bob_consent = world.call("GET", "Consent", world.token("clinician")).json()["entry"][0]
    assert world.call("GET", f"Consent/{bob_consent['resource']['id']}", alice).status_code == 404

    # Alice signs a grant but posts it for Bob's record: refused, not relayed.
    grant = signed_grant(node.ledger.consent, world.alice, world.b, Purpose.RESEARCH)
    reply = world.call("POST", "Consent", alice, consent_post(node, grant, world.bob_id))
    assert reply.status_code == 403, reply.text
    assert node.ledger.consent.nonce(world.alice.address) == 0
    mine = world.call("POST", "Consent", alice, consent_post(node, grant, world.alice_id))
    assert mine.status_code == 201, mine.text
    listed = world.call("GET", "Consent", alice).json()
    assert [e["resource"]["id"] for e in listed["entry"]] == [mine.json()["id"]]

    other = sign_link(Account.create(), HOSPITAL_A, "MRN-BOB", ISSUER).to_parameters()
    assert world.call("POST", f"Patient/{world.bob_id}/$link", alice, other).status_code == 403
    unlink = {"resourceType": "Parameters", "parameter": [
        {"name": "address", "valueString": world.alice.address}]}  # fmt: skip
    assert world.call("POST", f"Patient/{world.alice_id}/$unlink", alice, unlink).status_code == 403
    admin = world.token("admin")
    assert world.call("POST", f"Patient/{world.alice_id}/$unlink", admin, unlink).status_code == 200


def test_staff_scopes_and_missing_tokens(world: World) -> None:
    assert world.call("GET", "Consent", None).status_code == 401
    assert world.call("GET", "Consent", world.token("auditor")).json()["total"] == 1
    assert world.call("GET", "Consent", world.token("clinician")).json()["total"] == 1
    # Clinicians read consents but do not relay them (no Consent.write scope).
    grant = signed_grant(world.node.ledger.consent, world.alice, world.b, Purpose.TREATMENT)
    body = consent_post(world.node, grant, world.alice_id)
    assert world.call("POST", "Consent", world.token("clinician"), body).status_code == 403
    assert world.node.ledger.consent.nonce(world.alice.address) == 0
