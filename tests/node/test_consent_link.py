"""Linking a local patient to the network identity they hold: only with their signature."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from sqlalchemy import func, select

from ledger.keystore import generate_key_file
from node.services.patient_links import LINK_T, SignedLink, sign_link
from tests.conftest import REPO_ROOT
from tests.node.consent_helpers import (
    HOSPITAL_A,
    ConsentNode,
    make_consortium,
    serve_consent_node,
)

MRN, ISSUER = "MRN-4711", "HOSP-A"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ConsentNode]:
    """A node on the embedded chain, a founding member with hospital id hosp-a."""
    consortium = make_consortium(tmp_path / "node" / "ledger")
    with serve_consent_node(tmp_path / "node", consortium) as running:
        yield running


def _links(node: ConsentNode) -> int:
    with node.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(LINK_T)).scalar_one())


def _post_link(node: ConsentNode, patient_id: int, body: dict[str, Any]) -> Any:
    return node.post(f"Patient/{patient_id}/$link", body)


def _refused(node: ConsentNode, reply: Any, status: int, words: str) -> None:
    assert reply.status_code == status, reply.text
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert words in outcome["issue"][0]["diagnostics"]
    assert _links(node) == 0, "a refused link must store nothing"


def test_cli_signed_link_links_the_patient(node: ConsentNode, tmp_path: Path) -> None:
    patient_id = node.add_patient(mrn=MRN, issuer=ISSUER, name="Doe^Jane")
    key, password = tmp_path / "jane.json", tmp_path / "pw"
    password.write_text("correct horse")
    account = generate_key_file(key, "correct horse")
    cmd = [sys.executable, "-m", "node.cli", "patient", "sign-link", "--key", str(key)]
    cmd += ["--hospital", HOSPITAL_A, "--mrn", MRN, "--issuer", ISSUER]
    cmd += ["--password-file", str(password)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert MRN not in done.stdout  # only its hash leaves the patient's device
    body = json.loads(done.stdout)

    reply = _post_link(node, patient_id, body)
    assert reply.status_code == 200, reply.text
    values = {p["name"]: p for p in reply.json()["parameter"]}
    assert values["address"]["valueString"] == account.address
    assert values["patient"]["valueReference"]["reference"] == f"Patient/{patient_id}"
    with node.engine.connect() as conn:
        row = conn.execute(select(LINK_T)).one()
    assert (row.mrn, row.issuer, row.address) == (MRN, ISSUER, account.address)
    assert row.unlinked_at is None


def test_forged_link_is_refused(node: ConsentNode) -> None:
    patient_id = node.add_patient(mrn=MRN, issuer=ISSUER)
    victim, forger = Account.create(), Account.create()
    genuine = sign_link(victim, HOSPITAL_A, MRN, ISSUER)
    # The forger signs the very message naming the victim's address.
    sig = forger.sign_message(encode_typed_data(full_message=genuine.typed_data()))
    raw = sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v])
    forged = SignedLink(
        genuine.hospital, genuine.mrn_hash, victim.address, genuine.issued_at, genuine.nonce, raw
    )
    _refused(node, _post_link(node, patient_id, forged.to_parameters()), 400, "not made by")
    tampered = genuine.to_parameters()
    tampered["parameter"][3]["valueString"] = str(genuine.issued_at + 1)  # issuedAt
    _refused(node, _post_link(node, patient_id, tampered), 400, "not made by")


def test_link_for_another_record_or_hospital_is_refused(node: ConsentNode) -> None:
    patient_id = node.add_patient(mrn=MRN, issuer=ISSUER)
    patient: LocalAccount = Account.create()
    other_mrn = sign_link(patient, HOSPITAL_A, "MRN-9999", ISSUER)
    _refused(node, _post_link(node, patient_id, other_mrn.to_parameters()), 400, "another patient")
    other_issuer = sign_link(patient, HOSPITAL_A, MRN, "HOSP-Z")
    _refused(
        node, _post_link(node, patient_id, other_issuer.to_parameters()), 400, "another patient"
    )
    other_hospital = sign_link(patient, "hosp-b", MRN, ISSUER)
    _refused(
        node, _post_link(node, patient_id, other_hospital.to_parameters()), 400, "another hospital"
    )
    _refused(node, _post_link(node, 999_999, sign_link(patient, HOSPITAL_A, MRN).to_parameters()),
             404, "no Patient")  # fmt: skip


def test_replayed_or_stale_link_is_refused(node: ConsentNode) -> None:
    patient_id = node.add_patient(mrn=MRN, issuer=ISSUER)
    patient: LocalAccount = Account.create()
    old = sign_link(patient, HOSPITAL_A, MRN, ISSUER, now=time.time() - 3 * 86400)
    _refused(node, _post_link(node, patient_id, old.to_parameters()), 409, "sign a new one")

    link = sign_link(patient, HOSPITAL_A, MRN, ISSUER)
    assert _post_link(node, patient_id, link.to_parameters()).status_code == 200
    replay = _post_link(node, patient_id, link.to_parameters())
    assert replay.status_code == 409, replay.text
    assert "already used" in replay.json()["issue"][0]["diagnostics"]
    again = _post_link(
        node, patient_id, sign_link(patient, HOSPITAL_A, MRN, ISSUER).to_parameters()
    )
    assert again.status_code == 409
    assert "already linked" in again.json()["issue"][0]["diagnostics"]
    # The same key cannot be linked to a second record at this node either.
    second = node.add_patient(mrn="MRN-2", issuer=ISSUER)
    other = _post_link(
        node, second, sign_link(patient, HOSPITAL_A, "MRN-2", ISSUER).to_parameters()
    )
    assert other.status_code == 409
    assert "another patient" in other.json()["issue"][0]["diagnostics"]
    assert _links(node) == 1


def test_malformed_link_bodies_are_400(node: ConsentNode) -> None:
    patient_id = node.add_patient(mrn=MRN, issuer=ISSUER)
    good = sign_link(Account.create(), HOSPITAL_A, MRN, ISSUER).to_parameters()
    missing = {**good, "parameter": good["parameter"][:-1]}
    _refused(node, _post_link(node, patient_id, missing), 400, "signature")
    _refused(node, _post_link(node, patient_id, {"resourceType": "Patient"}), 400, "Parameters")
    short = json.loads(json.dumps(good))
    short["parameter"][5]["valueString"] = "0x1234"
    _refused(node, _post_link(node, patient_id, short), 400, "65 bytes")


def test_unlink_ends_the_link_and_old_signatures_stay_spent(node: ConsentNode) -> None:
    patient_id = node.add_patient(mrn=MRN, issuer=ISSUER)
    patient: LocalAccount = Account.create()
    first = sign_link(patient, HOSPITAL_A, MRN, ISSUER)
    assert _post_link(node, patient_id, first.to_parameters()).status_code == 200
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "address", "valueString": patient.address}]}  # fmt: skip
    done = node.post(f"Patient/{patient_id}/$unlink", body)
    assert done.status_code == 200, done.text
    assert node.post(f"Patient/{patient_id}/$unlink", body).status_code == 404
    with node.engine.connect() as conn:
        assert conn.execute(select(LINK_T.c.unlinked_at)).scalar_one() is not None
    # The old signature cannot bring the link back; a fresh one from the patient can.
    replay = _post_link(node, patient_id, first.to_parameters())
    assert replay.status_code == 409 and "already used" in replay.text
    fresh = sign_link(patient, HOSPITAL_A, MRN, ISSUER)
    assert _post_link(node, patient_id, fresh.to_parameters()).status_code == 200
