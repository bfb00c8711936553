"""The three-node consortium on real processes (issue #6, "Tests"): the exchange under a
patient's consent from end to end, the refusals around it, the auditor's check of the real logs,
and the peer-route rules.

Three `pacsmesh node serve` processes (a, b, c), each with its own data directory and a
certificate from the consortium CA, on one anvil chain (tests/system/consortium.py). A patient
of hospital a grants hospital b treatment access to one of their studies at a: a clinician at b
finds it and copies it, and the pixels at b are a's. a's other studies stay invisible to b; c,
with no grant, sees nothing of the patient and b's search lists it as answered with nothing.
After the patient revokes, b is refused from the next block on, by b's own check and by a's.
A break-glass retrieval is recorded on chain and named alike on both sides; a refusal by the
owner is in both trails under one transfer id. `pacsmesh audit verify --node a --node b
--node c` finds the real logs clean, and catches a transfer that only the owner logged. A
certificate the CA issued but no member registered, and a member removed by a vote, are
refused on the peer routes. Each refusal is in the refusing node's audit trail.

The member removal runs last: it takes c out of the consortium for good. Token refusals,
consent signatures and the CA handshake: test_consortium_security.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from ledger.anchor import AuditAnchorClient
from ledger.audit_events import uid_hash
from ledger.break_glass import break_glass_record
from ledger.consent import Purpose, study_hash
from node.services.exchange import PATIENT_HEADER, PURPOSE_HEADER, TRANSFER_ID_HEADER
from node.services.exchange_owner import NOT_COVERED
from tests.system.consortium import (
    ClientCert,
    Consortium,
    Patient,
    entity_refs,
    refused,
    running_consortium,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODE_SETTINGS = {
    # The consent caches sync in the background far less often than the scenario moves (a
    # node's default is every 2 s): a refusal right after a revocation can come only from a
    # decision taken at the chain's head, never from a background sync that happened first.
    "ledger_consent_refresh_seconds": 10.0,
    # Anchors every few seconds (not every minute): the auditor checks the logs against them.
    "audit_anchor_every_seconds": 3.0,
}
CONSENT_REF = re.compile(r"^0x[0-9a-f]{64}$")
NO_CONSENT_HERE = "no consent in force lets this hospital access this study"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    # Three hospitals: removing one takes the votes of two (a strict majority of three).
    root = tmp_path_factory.mktemp("consortium")
    with running_consortium(root, ["a", "b", "c"], node_settings=NODE_SETTINGS) as running:
        yield running


@pytest.fixture(scope="module")
def patient(net: Consortium) -> Patient:
    """A patient of hospital a, linked to their key (no consent given to anyone)."""
    admitted = net.admit_patient("a")
    assert net.link_patient(admitted).status_code == 200
    return admitted


@pytest.fixture(scope="module")
def studies(net: Consortium, patient: Patient) -> dict[str, list[Dataset]]:
    """The patient's studies at a, by what the scenario does with them."""
    labels = ("consented", "private", "glass", "revoked")
    made = {label: net.make_study(patient, 2, seed=10 * k) for k, label in enumerate(labels)}
    net.store_study("a", [ds for datasets in made.values() for ds in datasets])
    return made


@pytest.fixture(scope="module")
def consented(net: Consortium, patient: Patient, studies: dict[str, list[Dataset]]) -> str:
    """The one study the patient grants b treatment access to, through a's FHIR Consent."""
    study_uid = uid_of(studies["consented"])
    granted = net.grant(patient, "b", Purpose.TREATMENT, study_uid)
    assert granted.status_code == 201, granted.text
    return study_uid


@pytest.fixture(scope="module")
def consented_transfer(net: Consortium, patient: Patient, consented: str) -> dict[str, Any]:
    """A clinician at b copies the consented study from a: the answer of the retrieve."""
    reply = net.retrieve("b", consented, patient, source="a")
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


@pytest.fixture(scope="module")
def glass_transfer(
    net: Consortium, patient: Patient, studies: dict[str, list[Dataset]]
) -> dict[str, Any]:
    """A clinician at b breaks the glass for a study no grant covers: the retrieve's answer."""
    study_uid = uid_of(studies["glass"])
    plain = net.retrieve("b", study_uid, patient, source="a")
    assert plain.status_code == 403, plain.text  # without a grant it takes breaking the glass
    reply = net.retrieve("b", study_uid, patient, source="a", break_glass=1)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


@pytest.fixture(scope="module")
def misdirected(net: Consortium, patient: Patient) -> tuple[str, httpx.Response]:
    """b asks a for a study of the patient that a does not hold (a study granted to b, but held
    elsewhere): b's check passes, a refuses. The study's UID and b's answer."""
    study_uid = generate_uid()
    granted = net.grant(patient, "b", Purpose.TREATMENT, study_uid)
    assert granted.status_code == 201, granted.text
    return study_uid, net.retrieve("b", study_uid, patient, source="a")


@pytest.fixture(scope="module")
def probes() -> list[str]:
    """Transfer ids of requests made with b's certificate straight to a, without b's node
    (which therefore never logged them)."""
    return []


# -- helpers -------------------------------------------------------------------------------------


def uid_of(datasets: Sequence[Dataset]) -> str:
    return str(datasets[0].StudyInstanceUID)


def found(reply: httpx.Response) -> list[str]:
    """The Study Instance UIDs a consortium search answered with."""
    assert reply.status_code == 200, reply.text
    return [item["study"]["0020000D"]["Value"][0] for item in reply.json()["studies"]]


def peer_search(
    net: Consortium, caller: str | ClientCert, owner: str, patient: Patient
) -> httpx.Response:
    """What a member's node asks an owner when a clinician searches for a patient's studies."""
    with net.peer_client(caller) as client:
        return client.get(
            f"{net[owner].url}/network/peer/studies",
            params={"patient": patient.address.lower(), "purpose": "treatment"},
        )


def peer_transfer(
    net: Consortium, caller: str, owner: str, study_uid: str, patient: Patient
) -> tuple[httpx.Response, str]:
    """What a member's node asks an owner to transfer a study (a fresh transfer id)."""
    transfer_id = uuid.uuid4().hex
    with net.peer_client(caller) as client:
        reply = client.get(
            f"{net[owner].url}/network/peer/studies/{study_uid}",
            headers={
                TRANSFER_ID_HEADER: transfer_id,
                PATIENT_HEADER: patient.address.lower(),
                PURPOSE_HEADER: "treatment",
            },
        )
    return reply, transfer_id


def refusals_since(net: Consortium, name: str, mark: int) -> list[dict[str, Any]]:
    return [e for e in net.audit_since(name, mark) if refused(e)]


def naming(events: list[dict[str, Any]], ref: str) -> list[dict[str, Any]]:
    """The events among these with an entity of this reference."""
    return [e for e in events if ref in entity_refs(e)]


def transfer_event(net: Consortium, name: str, transfer_id: str) -> dict[str, Any]:
    """The one event a hospital logged for a transfer (its side of it)."""
    events = naming(net.audit_events(name, entity=transfer_id), transfer_id)
    assert len(events) == 1, events
    return events[0]


def consent_entity(event: dict[str, Any]) -> str:
    (ref,) = [
        e["what"]["identifier"]["value"]
        for e in event["entity"]
        if e["what"]["identifier"]["system"].endswith("consent")
    ]
    return str(ref)


def accesses_by(net: Consortium, name: str, study_uid: str) -> list[Any]:
    """The CrossHospitalAccess records a hospital made on chain for a study."""
    records = AuditAnchorClient(net.chain, net.deployment).accesses(requester=net[name].account)
    return [r for r in records if r.study_hash == study_hash(study_uid)]


# -- the exchange --------------------------------------------------------------------------------


def test_b_finds_the_consented_study_and_nothing_else_of_the_patient(
    net: Consortium, patient: Patient, studies: dict[str, list[Dataset]], consented: str
) -> None:
    reply = net.search("b", patient)

    assert found(reply) == [consented]
    answer = reply.json()
    (item,) = answer["studies"]
    assert item["source"] == {
        "account": net["a"].account.lower(),
        "hospitalId": "hosp-a",
        "endpoint": net["a"].url,
    }
    assert CONSENT_REF.match(item["consentRef"]), item["consentRef"]
    # a answered with the one study; c, which holds nothing of the patient, with none: it
    # answered, it did not fail.
    assert {m["hospitalId"]: m["studies"] for m in answer["answered"]} == {
        "hosp-a": 1,
        "hosp-c": 0,
    }
    assert answer["unanswered"] == []
    # Of a's other studies, nothing: not a UID, not a count.
    for label in ("private", "glass", "revoked"):
        assert uid_of(studies[label]) not in reply.text


def test_c_without_a_grant_sees_nothing_of_the_patient(
    net: Consortium, patient: Patient, consented: str
) -> None:
    reply = net.search("c", patient)

    assert found(reply) == []
    answer = reply.json()
    assert {m["hospitalId"]: m["studies"] for m in answer["answered"]} == {
        "hosp-a": 0,
        "hosp-b": 0,
    }
    assert answer["unanswered"] == []

    mark_a, mark_c = net.audit_mark("a"), net.audit_mark("c")
    retrieve = net.retrieve("c", consented, patient, source="a")

    assert retrieve.status_code == 403, retrieve.text
    assert NO_CONSENT_HERE in retrieve.json()["error"]
    # Refused by c itself and recorded there; nothing was asked of a, nothing put on chain.
    assert len(naming(refusals_since(net, "c", mark_c), uid_hash(consented))) == 1
    assert naming(net.audit_since("a", mark_a), uid_hash(consented)) == []
    assert accesses_by(net, "c", consented) == []


def test_b_retrieves_the_consented_study_and_the_pixels_match(
    net: Consortium,
    studies: dict[str, list[Dataset]],
    consented: str,
    consented_transfer: dict[str, Any],
) -> None:
    t = consented_transfer
    assert t["complete"] is True and t["instances"] == t["instancesExpected"] == 2
    assert t["source"]["hospitalId"] == "hosp-a" and t["consentRef"]

    copies = net.study_instances("b", consented)

    originals = {str(ds.SOPInstanceUID): ds for ds in studies["consented"]}
    assert sorted(str(ds.SOPInstanceUID) for ds in copies) == sorted(originals)
    for copy in copies:
        assert copy.PixelData == originals[str(copy.SOPInstanceUID)].PixelData
    # One event on each side, naming the same patient, study, transfer and consent.
    owner = transfer_event(net, "a", t["transferId"])
    requester = transfer_event(net, "b", t["transferId"])
    assert (owner["type"]["code"], owner["action"], owner["outcome"]) == ("110104", "R", "0")
    assert (requester["type"]["code"], requester["action"], requester["outcome"]) == (
        "110107",
        "C",
        "0",
    )
    assert sorted(entity_refs(owner)) == sorted(entity_refs(requester))
    assert consent_entity(owner) == t["consentRef"]
    (access,) = accesses_by(net, "b", consented)
    assert access.permitted and "0x" + access.consent_ref.hex() == t["consentRef"]


def test_b_cannot_retrieve_a_study_the_grant_does_not_cover(
    net: Consortium, patient: Patient, studies: dict[str, list[Dataset]], consented: str
) -> None:
    private = uid_of(studies["private"])
    mark_a, mark_b = net.audit_mark("a"), net.audit_mark("b")

    reply = net.retrieve("b", private, patient, source="a")

    assert reply.status_code == 403, reply.text
    assert NO_CONSENT_HERE in reply.json()["error"]
    # b refused it before asking a: the refusal is in b's trail; a saw nothing, the chain too.
    assert len(naming(refusals_since(net, "b", mark_b), uid_hash(private))) == 1
    assert naming(net.audit_since("a", mark_a), uid_hash(private)) == []
    assert accesses_by(net, "b", private) == []


def test_break_glass_retrieval_is_on_chain_and_named_alike_on_both_sides(
    net: Consortium,
    patient: Patient,
    studies: dict[str, list[Dataset]],
    glass_transfer: dict[str, Any],
) -> None:
    study_uid = uid_of(studies["glass"])
    t = glass_transfer
    assert t["complete"] is True and t["instances"] == 2
    assert t["consentRef"] is None
    tx = t["breakGlassTx"]

    record = break_glass_record(net.chain, net.deployment, tx)

    assert record is not None
    assert record.member.lower() == net["b"].account.lower()
    assert record.patient.lower() == patient.address.lower()
    assert record.study_hash == study_hash(study_uid) and record.reason_code == 1
    # The access on chain cites the record; the contract found no consent in force.
    (access,) = accesses_by(net, "b", study_uid)
    assert not access.permitted and "0x" + access.consent_ref.hex() == tx
    owner = transfer_event(net, "a", t["transferId"])
    requester = transfer_event(net, "b", t["transferId"])
    assert consent_entity(owner) == consent_entity(requester) == f"break-glass:{tx}"
    assert owner["outcome"] == requester["outcome"] == "0"
    assert len(net.study_instances("b", study_uid)) == 2


def test_an_owner_refusal_is_in_both_trails_under_one_transfer_id(
    net: Consortium, misdirected: tuple[str, httpx.Response]
) -> None:
    study_uid, reply = misdirected

    assert reply.status_code == 403, reply.text
    assert reply.json()["error"] == f"hosp-a refused: {NOT_COVERED}"
    # b logged the attempt with the grant it relied on; a its refusal, naming no consent.
    (requester,) = [
        e
        for e in net.audit_events("b", entity=f"ImagingStudy/{study_uid}")
        if e["type"]["code"] == "110107"
    ]
    (transfer_id,) = [
        e["what"]["identifier"]["value"]
        for e in requester["entity"]
        if e["what"]["identifier"]["system"].endswith("transfer")
    ]
    owner = transfer_event(net, "a", transfer_id)
    assert refused(owner) and refused(requester)
    assert CONSENT_REF.match(consent_entity(requester))
    assert not [e for e in owner["entity"] if e["what"]["identifier"]["system"].endswith("consent")]


def test_the_auditor_finds_the_real_logs_clean(
    net: Consortium,
    consented_transfer: dict[str, Any],
    glass_transfer: dict[str, Any],
    misdirected: tuple[str, httpx.Response],
) -> None:
    status, report = net.verify_audit(["a", "b", "c"])

    assert status == 0, report
    assert report["findings"] == [] and report["unverifiable"] == []
    transfers = {n["hospital_id"]: n["transfers"] for n in report["nodes"]}
    assert transfers == {
        "hosp-a": {"owner": 3, "requester": 0},
        "hosp-b": {"owner": 0, "requester": 3},
        "hosp-c": {"owner": 0, "requester": 0},
    }
    # The consented copy, the break-glass copy, and the refusal (nothing left a).
    assert report["accesses"] == {
        "checked": 2,
        "consented": 1,
        "break_glass": 1,
        "not_released": 1,
    }


def test_revocation_refuses_b_from_the_next_block(
    net: Consortium,
    patient: Patient,
    studies: dict[str, list[Dataset]],
    probes: list[str],
) -> None:
    study_uid = uid_of(studies["revoked"])
    granted = net.grant(patient, "b", Purpose.TREATMENT, study_uid)
    assert granted.status_code == 201, granted.text
    first = net.retrieve("b", study_uid, patient, source="a")
    assert first.status_code == 200, first.text
    mark_a, mark_b = net.audit_mark("a"), net.audit_mark("b")

    # The patient revokes from their own wallet: no hospital relays it, none has synced it.
    net.revoke_on_chain(patient, "b", Purpose.TREATMENT, study_uid)
    # At once, no wait: b's certificate asks a directly, as a b whose own check lagged would.
    direct, transfer_id = peer_transfer(net, "b", "a", study_uid, patient)
    probes.append(transfer_id)
    retrieve = net.retrieve("b", study_uid, patient, source="a")

    # a judges at the chain's head: the revocation's block counts.
    assert direct.status_code == 403, direct.text
    assert direct.json()["error"] == NOT_COVERED
    # So does b: refused before anything is asked of a or recorded on chain.
    assert retrieve.status_code == 403, retrieve.text
    assert NO_CONSENT_HERE in retrieve.json()["error"]
    assert len(accesses_by(net, "b", study_uid)) == 1  # the one before the revocation
    assert study_uid not in found(net.search("b", patient))
    # Each refusal is in the refusing node's trail: a's names the transfer.
    refusal = transfer_event(net, "a", transfer_id)
    assert refused(refusal) and int(refusal["id"]) > mark_a
    assert len(naming(refusals_since(net, "b", mark_b), uid_hash(study_uid))) == 1


def test_the_auditor_catches_a_transfer_only_the_owner_logged(
    net: Consortium,
    patient: Patient,
    consented: str,
    consented_transfer: dict[str, Any],
    probes: list[str],
) -> None:
    # b's certificate fetches the consented study straight from a, bypassing b's node: a
    # streams it (the grant covers it) and logs its side; b's log never hears of it.
    reply, transfer_id = peer_transfer(net, "b", "a", consented, patient)
    assert reply.status_code == 200, reply.text
    probes.append(transfer_id)

    status, report = net.verify_audit(["a", "b", "c"])

    assert status == 1, report
    findings = report["findings"]
    # Exactly the requests that bypassed b's node: this one, and a refused one if the
    # revocation test ran.
    assert sorted(f["transfer_id"] for f in findings) == sorted(probes), findings
    for finding in findings:
        assert finding["kind"] == "transfer-unpaired", finding
        assert finding["node"] == net["a"].url
        assert "logged by the owner only" in finding["detail"]


# -- peer routes ---------------------------------------------------------------------------------


def test_unregistered_certificate_from_the_consortium_ca_gets_403(
    net: Consortium, patient: Patient
) -> None:
    stranger = net.issue_certificate("stranger")  # signed by the consortium CA, never registered
    assert peer_search(net, "b", "a", patient).status_code == 200  # a member is answered
    mark = net.audit_mark("a")

    reply = peer_search(net, stranger, "a", patient)

    assert reply.status_code == 403, reply.text
    assert "not registered to an active member" in reply.json()["error"]
    assert len(refusals_since(net, "a", mark)) == 1


def test_removed_member_is_refused_from_the_next_block(net: Consortium, patient: Patient) -> None:
    # Last in this module: c stays removed.
    assert peer_search(net, "c", "a", patient).status_code == 200

    net.remove_member("c", proposer="a", voters=["b"])
    mark = net.audit_mark("a")
    reply = peer_search(net, "c", "a", patient)

    # Its certificate still chains to the CA; the chain, not the CA, has the last word.
    assert reply.status_code == 403, reply.text
    assert "not registered to an active member" in reply.json()["error"]
    assert len(refusals_since(net, "a", mark)) == 1
    assert peer_search(net, "b", "a", patient).status_code == 200  # the others are unaffected
    assert [m["status"] for m in net.members() if m["hospital_id"] == "hosp-c"] == ["removed"]
