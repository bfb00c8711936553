"""Cross-hospital exchange between two real nodes over mutual TLS on one anvil chain.

A patient of hospital A grants hospital B treatment access to one study; a clinician at B finds
it across the consortium, copies it, and the pixels at B are A's; A's other study stays
invisible; revocation, non-members and malformed requests are refused; break-glass is recorded
on chain; both sides' audit events name the same transfer; a transfer cut midway keeps what
arrived and a retry completes it. (tests/node/exchange_helpers.py builds the consortium.)
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from typer.testing import CliRunner

from ledger.anchor import AuditAnchorClient
from ledger.audit_events import (
    Action,
    AuditEvent,
    EntityKind,
    EventType,
    Outcome,
    ParticipantRole,
    uid_hash,
)
from ledger.break_glass import break_glass_record
from ledger.consent import Purpose, consent_ref, study_hash
from node.cli import app as cli_app
from node.dicom.multipart import MultipartParser, PartData, PartEnd, PartStart, parse_media_type
from node.services.exchange import (
    BREAK_GLASS_HEADER,
    PATIENT_HEADER,
    PURPOSE_HEADER,
    TRANSFER_ID_HEADER,
)
from tests.ledger.conftest import Anvil, rpc
from tests.node.exchange_helpers import Network, make_patient, two_hospitals


@pytest.fixture(scope="module")
def anvil_chain() -> Iterator[Anvil]:
    chain = Anvil().start()
    yield chain
    chain.stop()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, anvil_chain: Anvil) -> Iterator[Network]:
    with two_hospitals(tmp_path_factory.mktemp("exchange"), anvil_chain) as network:
        yield network


# -- helpers -----------------------------------------------------------------------------------


def search(net: Network, patient: str, purpose: str = "treatment") -> httpx.Response:
    with net.user_client() as client:
        return client.get(
            f"{net.b.url}/network/studies",
            params={"patient": patient, "purpose": purpose},
            headers=net.b.token("clinician"),
        )


def retrieve(
    net: Network, study_uid: str, patient: str, role: str = "clinician", **extra: Any
) -> httpx.Response:
    body = {"patient": patient, "source": net.member_accounts["a"], "purpose": "treatment"}
    body.update(extra)
    with net.user_client() as client:
        return client.post(
            f"{net.b.url}/network/studies/{study_uid}/$retrieve",
            json=body,
            headers=net.b.token(role),
        )


def peer_get(
    net: Network, caller: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """A request to A's peer routes with `caller`'s certificate (straight, not via the proxy)."""
    with net.peer_client(caller) as client:
        return client.get(f"{net.a.url}{path}", headers=headers or {})


def transfer_headers(patient: str, **changes: str) -> dict[str, str]:
    headers = {
        TRANSFER_ID_HEADER: uuid.uuid4().hex,
        PATIENT_HEADER: patient,
        PURPOSE_HEADER: "treatment",
    }
    headers.update(changes)
    return headers


def studies_of(answer: dict[str, Any]) -> list[str]:
    return [item["study"]["0020000D"]["Value"][0] for item in answer["studies"]]


def transfer_events(events: list[AuditEvent], transfer_id: str) -> list[AuditEvent]:
    return [
        e
        for e in events
        if any(x.kind is EntityKind.TRANSFER and x.ref == transfer_id for x in e.entities)
    ]


def entity(event: AuditEvent, kind: EntityKind) -> str | None:
    return next((x.ref for x in event.entities if x.kind is kind), None)


def wado_study(net: Network, study_uid: str) -> list[bytes]:
    """The instances B serves for a study over WADO-RS (what a viewer at B would load)."""
    with net.user_client() as client:
        r = client.get(
            f"{net.b.url}/dicom-web/studies/{study_uid}", headers=net.b.token("clinician")
        )
    assert r.status_code == 200, r.text
    _, params = parse_media_type(r.headers["content-type"])
    parser = MultipartParser(params["boundary"].encode())
    parts: list[bytes] = []
    current = bytearray()
    for event in parser.feed(r.content):
        if isinstance(event, PartStart):
            current = bytearray()
        elif isinstance(event, PartData):
            current += event.data
        elif isinstance(event, PartEnd):
            parts.append(bytes(current))
    parser.close()
    return parts


def b_transfers(net: Network, study_uid: str) -> list[dict[str, Any]]:
    with net.user_client() as client:
        r = client.get(
            f"{net.b.url}/network/transfers",
            params={"study": study_uid},
            headers=net.b.token("auditor"),
        )
    assert r.status_code == 200, r.text
    transfers: list[dict[str, Any]] = r.json()["transfers"]
    return transfers


def b_instance_count(net: Network, study_uid: str) -> int:
    with net.user_client() as client:
        r = client.get(
            f"{net.b.url}/dicom-web/studies",
            params={"StudyInstanceUID": study_uid},
            headers=net.b.token("clinician"),
        )
    if r.status_code == 204:
        return 0
    return int(r.json()[0]["00201208"]["Value"][0])


def pixels(data: bytes) -> bytes:
    return bytes(pydicom.dcmread(io.BytesIO(data)).PixelData)


# -- search ------------------------------------------------------------------------------------


def test_search_finds_exactly_the_consented_study_with_its_source(net: Network) -> None:
    patient = make_patient(net, "search")
    consented, other = list(patient.studies)
    net.grant(patient.account, consented)

    r = search(net, str(patient.b_patient_id))  # B's own Patient id, resolved by its link
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["patient"] == patient.address
    assert studies_of(answer) == [consented]  # the other study: not even counted
    item = answer["studies"][0]
    assert item["source"] == {
        "account": net.member_accounts["a"],
        "hospitalId": "hospital-a",
        "endpoint": f"https://127.0.0.1:{net.proxy.port}",
    }
    expected_ref = consent_ref(
        patient.address, net.b.account, Purpose.TREATMENT, study_hash(consented)
    )
    assert item["consentRef"] == "0x" + expected_ref.hex()
    assert item["study"]["00100020"]["Value"] == [patient.mrn]  # treatment: A's identifiers
    assert [m["hospitalId"] for m in answer["answered"]] == ["hospital-a"]
    assert answer["answered"][0]["studies"] == 1
    # C has nothing listening, D never completes a handshake: both named, neither held B up.
    reasons = {m["hospitalId"]: m["reason"] for m in answer["unanswered"]}
    assert reasons == {"hospital-c": "unreachable", "hospital-d": "timeout"}

    # The address works as well as the local id; a research search sees nothing (the grant
    # is for treatment).
    by_address = search(net, patient.address).json()
    assert studies_of(by_address) == [consented]
    assert studies_of(search(net, patient.address, "research").json()) == []
    assert other not in r.text

    # A research grant shows the study for research, without who the patient is.
    net.grant(patient.account, other, purpose=Purpose.RESEARCH)
    research = search(net, patient.address, "research").json()
    assert studies_of(research) == [other]
    dataset = research["studies"][0]["study"]
    assert "00100020" not in dataset and "00100010" not in dataset and "00080050" not in dataset
    assert patient.mrn not in json.dumps(research)


def test_search_is_audited_as_a_query_at_both_nodes(net: Network) -> None:
    patient = make_patient(net, "audit-query", instances=(1,))
    before_a, before_b = len(net.a.audit_events()), len(net.b.audit_events())
    assert search(net, patient.address).status_code == 200
    queries_b = [e for e in net.b.audit_events()[before_b:] if e.event_type is EventType.QUERY]
    assert any(entity(e, EntityKind.PATIENT) == patient.address for e in queries_b)
    queries_a = [e for e in net.a.audit_events()[before_a:] if e.event_type is EventType.QUERY]
    # A names the asking member by its account, never anonymously.
    assert [e.agents[0].who for e in queries_a] == [net.b.account]
    assert entity(queries_a[0], EntityKind.PATIENT) == patient.address


# -- retrieve ----------------------------------------------------------------------------------


def test_retrieve_copies_the_study_with_provenance_and_paired_audit_events(
    net: Network,
) -> None:
    patient = make_patient(net, "retrieve", instances=(3, 1))
    study, _ = list(patient.studies)
    net.grant(patient.account, study)

    r = retrieve(net, study, str(patient.b_patient_id))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["instances"] == 3 and answer["complete"] is True
    assert answer["source"]["hospitalId"] == "hospital-a"
    ref = answer["consentRef"]
    assert (
        ref
        == "0x"
        + consent_ref(patient.address, net.b.account, Purpose.TREATMENT, study_hash(study)).hex()
    )
    transfer_id = answer["transferId"]
    assert len(transfer_id) == 32 and uuid.UUID(hex=transfer_id).version == 4

    # B now serves the study itself; every pixel is A's.
    served = wado_study(net, study)
    assert sorted(pixels(x) for x in served) == sorted(pixels(x) for x in patient.studies[study])

    # Provenance: who sent it, on which consent, complete.
    (row,) = b_transfers(net, study)
    assert row["transferId"] == transfer_id
    assert row["source"]["account"] == net.member_accounts["a"]
    assert row["consentRef"] == ref and row["breakGlassTx"] is None
    assert row["instancesReceived"] == 3 and row["instancesExpected"] == 3
    assert row["complete"] is True and row["purpose"] == "treatment"

    # One event per side, paired by the transfer id, naming the same consent.
    (owner,) = transfer_events(net.a.audit_events(), transfer_id)
    (requester,) = transfer_events(net.b.audit_events(), transfer_id)
    assert (owner.event_type, owner.action, owner.outcome) == (
        EventType.INSTANCES_TRANSFERRED,
        Action.READ,
        Outcome.SUCCESS,
    )
    assert (requester.event_type, requester.action, requester.outcome) == (
        EventType.IMPORT,
        Action.CREATE,
        Outcome.SUCCESS,
    )
    for event in (owner, requester):
        assert entity(event, EntityKind.CONSENT) == ref
        assert entity(event, EntityKind.PATIENT) == patient.address
        assert entity(event, EntityKind.STUDY) == uid_hash(study)
        assert event.purpose is not None and event.purpose.value == "treatment"
    assert [(a.who, a.role, a.requestor) for a in owner.agents] == [
        (net.b.account, ParticipantRole.DESTINATION, True),
        (net.a.account, ParticipantRole.SOURCE, False),
    ]
    assert requester.agents[0].requestor and requester.agents[0].role is ParticipantRole.CLINICIAN
    assert [(a.who, a.role) for a in requester.agents[1:]] == [
        (net.a.account, ParticipantRole.SOURCE),
        (net.b.account, ParticipantRole.DESTINATION),
    ]

    # The access is on chain, permitted at its block, with the grant's consentRef.
    records = AuditAnchorClient(net.relayer, net.deployment).accesses(requester=net.b.account)
    (record,) = [x for x in records if x.tx_hash == answer["accessTx"]]
    assert record.permitted and record.study_hash == study_hash(study)
    assert record.consent_ref.hex() == ref[2:]
    assert record.provider.lower() == net.member_accounts["a"]

    # A retry is a new transfer that stores nothing twice.
    again = retrieve(net, study, patient.address)
    assert again.status_code == 200, again.text
    assert again.json()["instances"] == 3 and again.json()["transferId"] != transfer_id
    assert b_instance_count(net, study) == 3
    assert len(b_transfers(net, study)) == 2

    # A copy is not B's to offer: asked by A about this patient, B answers nothing.
    with net.peer_client("a") as client:
        onwards = client.get(
            f"{net.b.url}/network/peer/studies",
            params={"patient": patient.address, "purpose": "treatment"},
        )
    assert onwards.status_code == 200 and onwards.json()["studies"] == []


def test_unconsented_study_is_refused_by_requester_and_owner(net: Network) -> None:
    patient = make_patient(net, "unconsented")
    consented, other = list(patient.studies)
    net.grant(patient.account, consented)

    before_a = len(net.a.audit_events())
    r = retrieve(net, other, patient.address)
    assert r.status_code == 403
    # B's own judgment: it never asked A (nothing reached A, nothing was recorded on chain).
    assert "no consent in force lets this hospital" in r.json()["error"]
    assert not [
        e for e in net.a.audit_events()[before_a:] if entity(e, EntityKind.STUDY) == uid_hash(other)
    ]
    assert b_transfers(net, other) == []

    # Asked directly, A refuses on its own judgment too, and records the refusal.
    headers = transfer_headers(patient.address)
    direct = peer_get(net, "b", f"/network/peer/studies/{other}", headers)
    assert direct.status_code == 403
    assert "no consent in force" in direct.json()["error"]
    assert patient.mrn not in direct.text and "Doe" not in direct.text
    (refusal,) = transfer_events(net.a.audit_events(), headers[TRANSFER_ID_HEADER])
    assert refusal.outcome is Outcome.MINOR_FAILURE
    assert entity(refusal, EntityKind.CONSENT) is None

    # A consented study asked for under another patient's address: the same refusal.
    stranger = make_patient(net, "unconsented-2", instances=(1,))
    wrong = peer_get(
        net, "b", f"/network/peer/studies/{consented}", transfer_headers(stranger.address)
    )
    assert wrong.status_code == 403 and wrong.json()["error"] == direct.json()["error"]


def test_revocation_refuses_search_and_transfer(net: Network) -> None:
    patient = make_patient(net, "revoke", instances=(1,))
    (study,) = list(patient.studies)
    net.grant(patient.account, study)
    assert studies_of(search(net, patient.address).json()) == [study]

    net.grant(patient.account, study, revoke=True)
    answer = search(net, patient.address).json()
    assert studies_of(answer) == []
    assert [m["hospitalId"] for m in answer["answered"]] == ["hospital-a"]
    assert retrieve(net, study, patient.address).status_code == 403
    direct = peer_get(net, "b", f"/network/peer/studies/{study}", transfer_headers(patient.address))
    assert direct.status_code == 403


def test_break_glass_is_recorded_on_chain_and_then_transfers(net: Network) -> None:
    patient = make_patient(net, "glass", instances=(2, 1))
    study, other = list(patient.studies)  # no consent at all

    assert retrieve(net, study, patient.address).status_code == 403
    # Auditors may not break the glass (nor retrieve at all).
    assert (
        retrieve(net, study, patient.address, "auditor", breakGlass={"reason": 1}).status_code
        == 403
    )

    r = retrieve(net, study, patient.address, breakGlass={"reason": 1})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["instances"] == 2 and answer["consentRef"] is None
    tx = answer["breakGlassTx"]
    record = break_glass_record(net.relayer, net.deployment, tx)
    assert record is not None
    assert record.member.lower() == net.b.account
    assert record.patient.lower() == patient.address
    assert record.study_hash == study_hash(study) and record.reason_code == 1

    transfer_id = answer["transferId"]
    (owner,) = transfer_events(net.a.audit_events(), transfer_id)
    (requester,) = transfer_events(net.b.audit_events(), transfer_id)
    assert entity(owner, EntityKind.CONSENT) == entity(requester, EntityKind.CONSENT)
    assert entity(owner, EntityKind.CONSENT) == f"break-glass:{tx}"
    assert b_transfers(net, study)[0]["breakGlassTx"] == tx

    # The owner checks the record itself: not for another study, not someone else's, and a
    # transaction that is no break-glass record at all is refused.
    for caller, study_uid, tx_hash, reason in (
        ("b", other, tx, "another study"),
        ("a", study, tx, "another member"),
        ("b", study, answer["accessTx"], "no BreakGlass record"),
    ):
        headers = transfer_headers(patient.address, **{BREAK_GLASS_HEADER: tx_hash})
        refused = peer_get(net, caller, f"/network/peer/studies/{study_uid}", headers)
        assert refused.status_code == 403, (caller, study_uid)
        assert reason in refused.json()["error"]

    # The same record is honoured while recent, and no longer once the chain has moved on.
    headers = transfer_headers(patient.address, **{BREAK_GLASS_HEADER: tx})
    assert peer_get(net, "b", f"/network/peer/studies/{study}", headers).status_code == 200
    max_age = net.a.settings.network_break_glass_max_age_seconds
    rpc(net.anvil.url, "evm_increaseTime", [max_age + 60])
    rpc(net.anvil.url, "evm_mine")
    headers = transfer_headers(patient.address, **{BREAK_GLASS_HEADER: tx})
    stale = peer_get(net, "b", f"/network/peer/studies/{study}", headers)
    assert stale.status_code == 403 and "break the glass again" in stale.json()["error"]


# -- transfers that break ----------------------------------------------------------------------


def test_broken_transfer_keeps_what_arrived_and_a_retry_completes(net: Network) -> None:
    patient = make_patient(net, "broken", instances=(4,), size=128)
    (study,) = list(patient.studies)
    net.grant(patient.account, study)
    body_bytes = sum(len(x) for x in patient.studies[study])
    net.proxy.cut_after = int(body_bytes * 0.6)  # A's connection drops in the third instance
    try:
        r = retrieve(net, study, patient.address)
    finally:
        net.proxy.cut_after = None
    assert r.status_code == 502, r.text
    broken = r.json()
    assert broken["complete"] is False
    assert broken["instances"] == 2 and broken["instancesExpected"] == 4
    assert "2 of 4 instances arrived" in broken["error"]
    assert b_instance_count(net, study) == 2
    (row,) = b_transfers(net, study)
    assert row["transferId"] == broken["transferId"]
    assert row["complete"] is False and row["instancesReceived"] == 2
    (requester,) = transfer_events(net.b.audit_events(), broken["transferId"])
    assert requester.outcome is Outcome.SERIOUS_FAILURE

    again = retrieve(net, study, patient.address)
    assert again.status_code == 200, again.text
    assert again.json()["instances"] == 4 and again.json()["complete"] is True
    assert b_instance_count(net, study) == 4
    served = wado_study(net, study)
    assert sorted(pixels(x) for x in served) == sorted(pixels(x) for x in patient.studies[study])


def test_broken_transfer_keeps_an_instance_that_arrived_whole_just_before_the_break(
    net: Network,
) -> None:
    # Instances of 131 KB: B parses the stream in pieces of 256 KiB, so when A's connection
    # drops in the fourth instance the end of the third is still waiting in B's buffer.
    patient = make_patient(net, "broken-late", instances=(6,), size=256)
    (study,) = list(patient.studies)
    net.grant(patient.account, study)
    body_bytes = sum(len(x) for x in patient.studies[study])
    net.proxy.cut_after = int(body_bytes * 0.6)
    try:
        r = retrieve(net, study, patient.address)
    finally:
        net.proxy.cut_after = None
    assert r.status_code == 502, r.text
    assert r.json()["instances"] == 3 and "3 of 6 instances arrived" in r.json()["error"]
    assert b_instance_count(net, study) == 3
    (row,) = b_transfers(net, study)
    assert row["instancesReceived"] == 3 and row["complete"] is False


@pytest.mark.parametrize(("owner", "status"), [("c", 502), ("d", 504)])
def test_an_owner_never_reached_is_logged_as_a_transfer_that_never_began(
    net: Network, owner: str, status: int
) -> None:
    # C is down (connection refused); D accepts and never answers the handshake. Neither saw
    # the request, so B's event says 12 (no transfer began) and an auditor asks nothing of
    # their logs; 8 would say the owner began sending.
    patient = make_patient(net, f"owner-{owner}-down", instances=(1,))
    (study,) = list(patient.studies)
    net.grant(patient.account, study)

    r = retrieve(net, study, patient.address, source=net.member_accounts[owner])

    assert r.status_code == status, r.text
    (event,) = [
        e
        for e in net.b.audit_events()
        if e.event_type is EventType.IMPORT and entity(e, EntityKind.STUDY) == uid_hash(study)
    ]
    assert event.outcome is Outcome.MAJOR_FAILURE
    assert event.agents[1].who == net.member_accounts[owner]
    assert b_transfers(net, study) == []


def test_a_transfer_this_node_fails_to_record_still_leaves_its_audit_event(net: Network) -> None:
    # A answers with the study, then B's own database refuses to record the transfer: the
    # owner began, so B's one event says 8 (an auditor then looks for A's), and nothing is kept.
    patient = make_patient(net, "b-cannot-record", instances=(1,))
    (study,) = list(patient.studies)
    net.grant(patient.account, study)
    with net.b.archive.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse_transfers BEFORE INSERT ON study_transfer "
            "BEGIN SELECT RAISE(ABORT, 'database full'); END"
        )
    try:
        r = retrieve(net, study, patient.address)
    finally:
        with net.b.archive.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse_transfers")

    assert r.status_code >= 500, r.text
    (event,) = [
        e
        for e in net.b.audit_events()
        if e.event_type is EventType.IMPORT and entity(e, EntityKind.STUDY) == uid_hash(study)
    ]
    assert event.outcome is Outcome.SERIOUS_FAILURE
    assert b_transfers(net, study) == [] and b_instance_count(net, study) == 0


# -- who may ask ---------------------------------------------------------------------------------


def test_only_member_certificates_reach_peer_routes(net: Network) -> None:
    patient = make_patient(net, "certs", instances=(1,))
    (study,) = list(patient.studies)
    net.grant(patient.account, study)
    path = f"/network/peer/studies?patient={patient.address}&purpose=treatment"

    assert studies_of(peer_get(net, "b", path).json()) == [study]
    stranger = peer_get(net, "stranger", path)  # CA-issued, never registered on chain
    assert stranger.status_code == 403
    assert "not registered to an active member" in stranger.json()["error"]
    # A user with a valid token but no certificate: tokens do not open peer routes.
    with net.user_client() as client:
        user = client.get(f"{net.a.url}{path}", headers=net.a.token("admin"))
    assert user.status_code == 403 and "client certificate" in user.json()["error"]
    # Another CA's certificate fails the handshake itself.
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        peer_get(net, "forged", path)


def test_malformed_requests_are_refused_with_4xx(net: Network) -> None:
    patient = make_patient(net, "malformed", instances=(1,))
    (study,) = list(patient.studies)
    peer_cases = {
        "no transfer id": transfer_headers(patient.address, **{TRANSFER_ID_HEADER: ""}),
        "uuid1 transfer id": transfer_headers(
            patient.address, **{TRANSFER_ID_HEADER: uuid.uuid1().hex}
        ),
        "upper-case id": transfer_headers(
            patient.address, **{TRANSFER_ID_HEADER: uuid.uuid4().hex.upper()}
        ),
        "bad patient": transfer_headers("0x1234"),
        "bad purpose": transfer_headers(patient.address, **{PURPOSE_HEADER: "curiosity"}),
        "bad break-glass tx": transfer_headers(patient.address, **{BREAK_GLASS_HEADER: "0xzz"}),
    }
    for name, headers in peer_cases.items():
        r = peer_get(net, "b", f"/network/peer/studies/{study}", headers)
        assert r.status_code == 400, (name, r.text)
        assert patient.address not in r.json()["error"], name
    r = peer_get(net, "b", "/network/peer/studies/not-a-uid", transfer_headers(patient.address))
    assert r.status_code == 400
    r = peer_get(net, "b", "/network/peer/studies?patient=someone&purpose=treatment")
    assert r.status_code == 400

    with net.user_client() as client:
        url = f"{net.b.url}/network/studies/{study}/$retrieve"
        headers = net.b.token("clinician")
        source = net.member_accounts["a"]
        me = {"patient": patient.address, "source": source}
        for name, kwargs, status in (
            ("not json", {"content": b"{oops"}, 400),
            ("not an object", {"json": [1, 2]}, 400),
            ("no source", {"json": {"patient": patient.address}}, 400),
            ("unknown field", {"json": {**me, "x": 1}}, 400),
            ("bad reason", {"json": {**me, "breakGlass": {"reason": 7}}}, 400),
            ("research", {"json": {**me, "purpose": "research"}}, 400),
            ("not a member", {"json": {**me, "source": "0x" + "11" * 20}}, 400),
            ("unknown patient id", {"json": {**me, "patient": "987654"}}, 404),
        ):
            r = client.post(url, headers=headers, **kwargs)
            assert r.status_code == status, (name, r.text)
        assert (
            client.post(
                f"{net.b.url}/network/studies/1.2.x/$retrieve",
                headers=headers,
                json={"patient": patient.address, "source": source},
            ).status_code
            == 400
        )
        for params in ({}, {"patient": "Doe"}, {"patient": patient.address, "purpose": "fun"}):
            r = client.get(f"{net.b.url}/network/studies", params=params, headers=headers)
            assert r.status_code == 400, (params, r.text)
    assert b_transfers(net, study) == []


# -- the command line ----------------------------------------------------------------------------


def test_cli_searches_and_retrieves(net: Network, tmp_path: Path) -> None:
    patient = make_patient(net, "cli", instances=(2,))
    (study,) = list(patient.studies)
    net.grant(patient.account, study)
    token_file = tmp_path / "token"
    token_file.write_text(net.b.token("radiologist")["Authorization"].removeprefix("Bearer "))
    common = ["--node", net.b.url, "--token-file", str(token_file), "--ca-cert", str(net.ca_cert)]
    runner = CliRunner()

    found = runner.invoke(
        cli_app, ["network", "studies", *common, "--patient", patient.address, "--json"]
    )
    assert found.exit_code == 0, found.output
    assert study in found.output and "hospital-a" in found.output
    text = runner.invoke(cli_app, ["network", "studies", *common, "--patient", patient.address])
    assert text.exit_code == 0 and "1 study" in text.output and "hospital-d: timeout" in text.output

    got = runner.invoke(
        cli_app,
        ["network", "retrieve", study, *common, "--patient", patient.address,
         "--source", net.member_accounts["a"]],
    )  # fmt: skip
    assert got.exit_code == 0, got.output
    assert f"stored 2 instance(s) of {study} from hospital-a" in got.output
    assert b_instance_count(net, study) == 2

    refused = runner.invoke(
        cli_app,
        ["network", "retrieve", "1.2.3.4", *common, "--patient", patient.address,
         "--source", net.member_accounts["a"]],
    )  # fmt: skip
    assert refused.exit_code == 1 and "error (403)" in refused.output
