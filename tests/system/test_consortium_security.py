"""Consortium security on real node processes (HTTPS + mutual TLS, one anvil chain, CA-issued
certificates): every way in that should be shut is shut, and each refusal is in the refused
node's audit trail (`/fhir/AuditEvent`, read with an auditor token) as a failure.

Built with tests/system/consortium.py (two hospitals are enough here; the peer-route refusals
are in test_consortium_peers.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from eth_account import Account
from pydicom.uid import generate_uid

from ledger.consent import ConsentClient, Purpose, study_hash
from node.services.audit import ANONYMOUS
from tests.system.consortium import (
    Consortium,
    Patient,
    agents,
    entity_refs,
    refused,
    running_consortium,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with running_consortium(tmp_path_factory.mktemp("consortium"), ["a", "b"]) as running:
        yield running


@pytest.fixture(scope="module")
def patient(net: Consortium) -> Patient:
    """The patient the `patient` user at hospital a is, admitted there and linked to their key."""
    admitted = net.admit_patient("a")
    linked = net.link_patient(admitted)
    assert linked.status_code == 200, linked.text
    return admitted


def refused_probe(net: Consortium, token: str) -> tuple[httpx.Response, str]:
    """A DICOMweb read at hospital a with `token`, naming a study no one else names."""
    probe = generate_uid()
    with net.user_client("a", token=token) as client:
        return client.get(f"/dicom-web/studies/{probe}/metadata"), probe


def the_refusal(net: Consortium, study_uid: str) -> dict[str, object]:
    """The one audit event at hospital a that names this study: it must record a failure."""
    events = net.audit_events("a", entity=f"ImagingStudy/{study_uid}")
    assert len(events) == 1, events
    assert refused(events[0]), events[0]
    return events[0]


def test_token_signed_by_another_node_is_refused_and_audited(net: Consortium) -> None:
    foreign = net.token("b", "clinician")
    with net.user_client("b", token=foreign) as client:
        assert client.get("/dicom-web/studies").status_code in (200, 204)  # valid where issued

    reply, probe = refused_probe(net, foreign)

    assert reply.status_code == 401
    assert reply.json()["error"] == "token from an untrusted issuer"
    assert reply.headers["www-authenticate"].startswith("Bearer")
    event = the_refusal(net, probe)
    assert agents(event) == [ANONYMOUS]  # a refused token names no one


def test_expired_token_is_refused_and_audited(net: Consortium) -> None:
    with net.user_client("a", "clinician") as client:
        assert client.get("/dicom-web/studies").status_code in (200, 204)  # the user is fine

    reply, probe = refused_probe(net, net.expired_token("a", "clinician"))

    assert reply.status_code == 401
    assert reply.json()["error"] == "token expired"
    assert agents(the_refusal(net, probe)) == [ANONYMOUS]


def test_patient_token_cannot_read_another_patient(net: Consortium, patient: Patient) -> None:
    other = net.admit_patient("a", mrn="A-0002", patient_name="Roe^Richard")
    with net.user_client("a", "patient") as client:
        own = client.get(f"/fhir/Patient/{patient.patient_id}")
        theirs = client.get(f"/fhir/Patient/{other.patient_id}")

    assert own.status_code == 200, own.text
    # Refused as if the record did not exist: nothing about the other patient leaks.
    assert theirs.status_code == 404
    assert "Roe" not in theirs.text and other.mrn not in theirs.text
    events = [e for e in net.audit_events("a", entity=f"Patient/{other.patient_id}") if refused(e)]
    assert len(events) == 1, events
    assert ANONYMOUS not in agents(events[0])  # recorded under the patient who asked


def test_forged_consent_signature_is_refused_and_audited(net: Consortium, patient: Patient) -> None:
    consents = ConsentClient(net.chain, net.deployment)
    nonce = consents.nonce(patient.address)
    mark = net.audit_mark("a")
    # Someone else signs a grant naming the patient: it must not reach the chain.
    body = net.consent_body(patient, "b", Purpose.TREATMENT, signer=Account.create())

    reply = net.post_consent(patient, body)

    assert reply.status_code == 400, reply.text
    issue = reply.json()["issue"][0]
    assert issue["code"] == "security"
    assert issue["diagnostics"] == "the signature was not made by the patient's key"
    assert consents.nonce(patient.address) == nonce, "nothing may be relayed"
    member_b = net["b"].account
    assert not consents.is_permitted(patient.address, member_b, Purpose.TREATMENT)
    posted = [e for e in net.audit_since("a", mark) if e["action"] == "C"]
    assert len(posted) == 1 and refused(posted[0]), posted


def test_replayed_consent_signature_is_refused_and_audited(
    net: Consortium, patient: Patient
) -> None:
    consents = ConsentClient(net.chain, net.deployment)
    study_uid = generate_uid()
    body = net.consent_body(patient, "b", Purpose.TREATMENT, study_uid)
    first = net.post_consent(patient, body)
    assert first.status_code == 201, first.text
    nonce = consents.nonce(patient.address)
    mark = net.audit_mark("a")

    replay = net.post_consent(patient, body)

    assert replay.status_code == 409, replay.text
    issue = replay.json()["issue"][0]
    assert issue["code"] == "conflict"
    assert issue["diagnostics"] == "the signature's nonce was already used (replay refused)"
    assert consents.nonce(patient.address) == nonce
    # The first (genuine) grant stands, and only it.
    member_b = net["b"].account
    assert consents.is_permitted(
        patient.address, member_b, Purpose.TREATMENT, study_hash(study_uid)
    )
    posted = [e for e in net.audit_since("a", mark) if e["action"] == "C"]
    assert len(posted) == 1 and refused(posted[0]), posted


def test_certificate_not_from_the_consortium_ca_fails_the_handshake(net: Consortium) -> None:
    rogue = net.issue_certificate("rogue", net.new_ca("rogue-ca"))
    url = f"{net['a'].url}/dicom-web/studies"
    headers = {"Authorization": f"Bearer {net.token('a', 'clinician')}"}
    mark = net.audit_mark("a")

    with (
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        net.peer_client(rogue) as client,
    ):
        client.get(url, headers=headers)

    # The same request without that certificate is served: it was the certificate refused.
    with net.user_client("a", "clinician") as client:
        assert client.get("/dicom-web/studies").status_code in (200, 204)
    # The handshake failed before HTTP, so no request carried it into the trail; the TLS layer
    # recorded it as a Security Alert naming the reason (recorded in the background, hence
    # the short wait), and the served request is there too.
    deadline = time.monotonic() + 10
    while True:
        since = net.audit_since("a", mark)
        alerts = [e for e in since if "https:certificate-not-trusted" in entity_refs(e)]
        if alerts or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(alerts) == 1, since
    assert refused(alerts[0]) and alerts[0]["type"]["code"] == "110113", alerts[0]
    assert [e for e in since if not refused(e)], since  # the served request
