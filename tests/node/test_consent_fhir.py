"""Patient consent through FHIR: a signed grant posted as a Consent reaches the chain, reads back
as a FHIR Consent, and a revocation makes decisions refuse; bad signatures are never relayed.

Runs on the embedded chain (owned by the node) and on a real anvil process."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.consent import ALL_MEMBERS, Purpose, sign_consent, study_hash
from ledger.deploy import contract
from node.auth.policy import Principal
from node.errors import ForbiddenError, InvalidRequestError
from node.services.consent_decisions import ConsentDecisions
from node.services.consent_intake import consent_body
from node.services.patient_links import sign_link
from tests.ledger.conftest import Anvil, rpc
from tests.node.consent_helpers import (
    HOSPITAL_A,
    HOSPITAL_B,
    ConsentNode,
    Consortium,
    consent_post,
    make_consortium,
    serve_consent_node,
    signed_grant,
)
from tests.node.factories import make_ct

MRN, ISSUER = "MRN-100", "HOSP-A"
STUDY_UID = "1.2.826.0.1.3680043.8.498.7001"
OTHER_STUDY_UID = "1.2.826.0.1.3680043.8.498.7002"


@dataclass
class Setup:
    node: ConsentNode
    consortium: Consortium
    patient: LocalAccount
    patient_id: int

    @property
    def b(self) -> str:
        return self.consortium.member_b.address


@pytest.fixture(scope="module")
def anvil_chain() -> Iterator[Anvil]:
    """One real anvil process for this module (each test deploys its own suite)."""
    chain = Anvil().start()
    yield chain
    chain.stop()


@pytest.fixture(params=["embedded", pytest.param("anvil", marks=pytest.mark.integration)])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    """A node (hosp-a) with one linked patient who has a study stored there."""
    anvil: Anvil | None = (
        request.getfixturevalue("anvil_chain") if request.param == "anvil" else None
    )
    consortium = make_consortium(tmp_path / "node" / "ledger", anvil)
    with serve_consent_node(tmp_path / "node", consortium) as node:
        patient_id = node.add_patient(mrn=MRN, issuer=ISSUER, name="Roe^Richard")
        node.stow([make_ct(study_uid=STUDY_UID, patient_id=MRN, patient_name="Roe^Richard")])
        patient: LocalAccount = Account.create()
        link = sign_link(patient, HOSPITAL_A, MRN, ISSUER)
        assert node.post(f"Patient/{patient_id}/$link", link.to_parameters()).status_code == 200
        yield Setup(node, consortium, patient, patient_id)


def test_posted_grant_is_on_chain_and_reads_as_fhir_consent(setup: Setup) -> None:
    node, link = setup.node, setup.node.ledger
    signed = signed_grant(link.consent, setup.patient, setup.b, Purpose.TREATMENT, STUDY_UID)
    reply = node.post("Consent", consent_post(node, signed, setup.patient_id))
    assert reply.status_code == 201, reply.text
    consent = reply.json()
    assert reply.headers["location"].endswith(f"/fhir/Consent/{consent['id']}")
    assert link.consent.is_permitted(
        setup.patient.address, setup.b, Purpose.TREATMENT, study_hash(STUDY_UID)
    )
    assert not link.consent.is_permitted(
        setup.patient.address, setup.b, Purpose.TREATMENT, study_hash(OTHER_STUDY_UID)
    )

    read = node.get(f"Consent/{consent['id']}")
    assert read.status_code == 200
    body = read.json()
    assert body["status"] == "active"
    assert body["patient"]["reference"] == f"Patient/{setup.patient_id}"
    actor = body["provision"]["actor"][0]["reference"]
    assert actor["identifier"]["value"] == setup.b and actor["display"] == HOSPITAL_B
    assert body["provision"]["purpose"][0]["code"] == "TREAT"
    assert body["provision"]["data"][0]["reference"]["reference"] == f"ImagingStudy/{STUDY_UID}"

    for query in (
        f"Consent?patient=Patient/{setup.patient_id}",
        f"Consent?actor={HOSPITAL_B}&purpose=TREAT&status=active",
        f"Consent?actor={setup.b}",
        f"Consent?_id={consent['id']}",
    ):
        found = node.search(query)
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [consent["id"]], query
    assert node.search("Consent?purpose=HRESCH")["total"] == 0
    assert node.search("Consent?status=inactive")["total"] == 0

    decision = ConsentDecisions(link).decide(
        setup.b, setup.patient.address, Purpose.TREATMENT, STUDY_UID
    )
    assert decision.permitted and decision.consent_ref == "0x" + consent["id"]
    other = ConsentDecisions(link).decide(
        setup.b, setup.patient.address, Purpose.TREATMENT, OTHER_STUDY_UID
    )
    assert not other.permitted and other.consent_ref is None


def test_revocation_makes_consent_inactive_and_decisions_refuse(setup: Setup) -> None:
    node, link = setup.node, setup.node.ledger
    grant = signed_grant(link.consent, setup.patient, ALL_MEMBERS, Purpose.RESEARCH)
    created = node.post("Consent", consent_post(node, grant, setup.patient_id))
    assert created.status_code == 201, created.text
    decisions = ConsentDecisions(link)
    assert decisions.decide(setup.b, setup.patient.address, Purpose.RESEARCH, STUDY_UID).permitted

    revoke = signed_grant(link.consent, setup.patient, ALL_MEMBERS, Purpose.RESEARCH, revoke=True)
    reply = node.post("Consent", consent_post(node, revoke, setup.patient_id))
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"] == created.json()["id"]
    assert reply.json()["status"] == "inactive"
    revoke_block = link.chain.block_number()
    assert not link.consent.is_permitted(setup.patient.address, setup.b, Purpose.RESEARCH)
    decision = decisions.decide(setup.b, setup.patient.address, Purpose.RESEARCH, STUDY_UID)
    assert not decision.permitted
    assert decision.block >= revoke_block  # refused from the revoking block on
    assert node.search("Consent?status=inactive")["total"] == 1
    assert node.search("Consent?status=active")["total"] == 0


def test_forged_replayed_expired_or_foreign_signatures_are_not_relayed(setup: Setup) -> None:
    node, link = setup.node, setup.node.ledger
    patient = setup.patient

    def refused(body: dict[str, object], status: int, words: str) -> None:
        reply = node.post("Consent", body)
        assert reply.status_code == status, reply.text
        assert words in reply.json()["issue"][0]["diagnostics"]
        assert link.consent.nonce(patient.address) == nonce, "a refused consent was relayed"
        assert not link.consent.is_permitted(patient.address, setup.b, Purpose.AI_TRAINING)

    nonce = link.consent.nonce(patient.address)
    good = signed_grant(link.consent, patient, setup.b, Purpose.AI_TRAINING)
    impostor: LocalAccount = Account.create()
    forged = link.consent.sign(impostor, replace(good.request, patient=impostor.address))
    forged = replace(forged, request=good.request)  # the impostor's signature, the patient's data
    refused(consent_post(node, forged, setup.patient_id), 400, "not made by the patient")

    expired = link.consent.sign(patient, replace(good.request, deadline=1))
    refused(consent_post(node, expired, setup.patient_id), 400, "deadline has passed")

    # A genuine signature, but for another chain: it must not be relayed here.
    chain_id, registry = link.chain.chain_id + 1, link.deployment.consent_registry
    other_chain = sign_consent(patient, good.request, chain_id, registry)
    refused(consent_body(other_chain, chain_id, registry, str(setup.patient_id)), 400, "another")

    # Not linked: a stranger's valid signature naming this Patient.
    stranger: LocalAccount = Account.create()
    theirs = signed_grant(link.consent, stranger, setup.b, Purpose.AI_TRAINING)
    reply = node.post("Consent", consent_post(node, theirs, setup.patient_id))
    assert reply.status_code == 409 and "not linked" in reply.text
    assert link.consent.nonce(stranger.address) == 0

    # Relayed once; the same signature again is a replay.
    assert node.post("Consent", consent_post(node, good, setup.patient_id)).status_code == 201
    nonce = link.consent.nonce(patient.address)
    revoke = signed_grant(link.consent, patient, setup.b, Purpose.AI_TRAINING, revoke=True)
    assert node.post("Consent", consent_post(node, revoke, setup.patient_id)).status_code == 200
    nonce = link.consent.nonce(patient.address)
    refused(consent_post(node, good, setup.patient_id), 409, "already used")


def test_break_glass_is_recorded_on_chain_and_flagged(setup: Setup) -> None:
    link = setup.node.ledger
    decisions = ConsentDecisions(link)
    assert not decisions.decide(
        setup.b, setup.patient.address, Purpose.TREATMENT, STUDY_UID
    ).permitted
    own = decisions.decide(link.account, setup.patient.address, Purpose.TREATMENT, STUDY_UID)
    assert own.permitted and own.local  # own-hospital care needs no ledger consent

    clinician = Principal("dr-house", "clinician", (), "test", "t1")
    decision = decisions.break_glass(setup.patient.address, STUDY_UID, 1, clinician)
    assert decision.permitted and decision.break_glass and decision.tx_hash
    registry = contract(link.chain, "ConsentRegistry", link.deployment.consent_registry)
    event = registry.events.BreakGlass()
    logs = link.chain.get_logs(
        link.deployment.consent_registry, link.deployment.block_number, topics=[event.topic]
    )
    records = [event.process_log(lg)["args"] for lg in logs]
    assert [
        (r["patient"], r["member"], bytes(r["studyHash"]), r["reasonCode"]) for r in records
    ] == [(setup.patient.address, link.account, study_hash(STUDY_UID), 1)]

    auditor = Principal("audit-1", "auditor", (), "test", "t2")
    with pytest.raises(ForbiddenError):
        decisions.break_glass(setup.patient.address, STUDY_UID, 1, auditor)
    with pytest.raises(InvalidRequestError):
        decisions.break_glass(setup.patient.address, STUDY_UID, 99, clinician)


def test_search_by_all_members_and_period_and_unlink_hides(setup: Setup) -> None:
    node, link = setup.node, setup.node.ledger
    expires = link.chain.block_timestamp() + 10 * 86400
    grant = signed_grant(
        link.consent, setup.patient, ALL_MEMBERS, Purpose.AI_TRAINING, expires_at=expires
    )
    created = node.post("Consent", consent_post(node, grant, setup.patient_id))
    assert created.status_code == 201, created.text
    consent = created.json()
    assert consent["provision"]["purpose"][0]["code"] == "MLTRAINING"
    assert consent["provision"]["actor"][0]["reference"]["identifier"]["value"] == "all-members"
    assert "data" not in consent["provision"]  # all of the patient's studies
    assert consent["provision"]["period"]["end"].startswith(
        datetime.fromtimestamp(expires, UTC).date().isoformat()
    )
    expiry_day = datetime.fromtimestamp(expires, UTC).date()
    for query, total in (
        ("Consent?actor=all", 1),
        (f"Consent?actor={HOSPITAL_B}", 0),  # a grant to all is not a grant naming B
        (f"Consent?period={expiry_day.isoformat()}", 1),
        (f"Consent?period=gt{expiry_day.isoformat()}", 0),
        ("Consent?period=le2000-01-01", 0),  # in force from the granting block on
        ("Consent?period=ge2100", 0),
    ):
        assert node.search(query)["total"] == total, query
    bad = node.get("Consent?purpose=XYZ")
    assert bad.status_code == 400 and "v3-ActReason" in bad.text

    body = {"resourceType": "Parameters", "parameter": [
        {"name": "address", "valueString": setup.patient.address}]}  # fmt: skip
    assert node.post(f"Patient/{setup.patient_id}/$unlink", body).status_code == 200
    assert node.search(f"Consent?patient=Patient/{setup.patient_id}")["total"] == 0
    assert node.get(f"Consent/{consent['id']}").status_code == 404
    # The grant itself is the patient's and stays on chain.
    assert link.consent.is_permitted(setup.patient.address, setup.b, Purpose.AI_TRAINING)


@pytest.mark.integration
def test_with_a_confirmation_depth_grants_count_once_confirmed(
    anvil_chain: Anvil, tmp_path: Path
) -> None:
    consortium = make_consortium(tmp_path / "node" / "ledger", anvil_chain)
    with serve_consent_node(tmp_path / "node", consortium, ledger_confirmations=2) as node:
        patient_id = node.add_patient(mrn=MRN, issuer=ISSUER)
        patient: LocalAccount = Account.create()
        link = sign_link(patient, HOSPITAL_A, MRN, ISSUER)
        assert node.post(f"Patient/{patient_id}/$link", link.to_parameters()).status_code == 200
        ledger = node.ledger
        b = consortium.member_b.address
        grant = signed_grant(ledger.consent, patient, b, Purpose.TREATMENT)
        reply = node.post("Consent", consent_post(node, grant, patient_id))
        assert reply.status_code == 201, reply.text  # answered from the chain's own record
        assert reply.json()["status"] == "active"
        decisions = ConsentDecisions(ledger)
        assert not decisions.decide(b, patient.address, Purpose.TREATMENT, None).permitted
        assert node.get(f"Consent/{reply.json()['id']}").status_code == 404  # not confirmed
        for _ in range(2):
            rpc(anvil_chain.url, "evm_mine")
        ledger.cache.sync()
        assert decisions.decide(b, patient.address, Purpose.TREATMENT, None).permitted
        assert node.get(f"Consent/{reply.json()['id']}").json()["status"] == "active"
