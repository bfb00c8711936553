"""Who an event names as its requesting agent, for each kind of principal (PS3.15 A.5.2).

The HTTP trail (node.api.audit_http) and the exchange's transfer events both ask
``NodeAudit.principal_actor``, so a principal is named the same way on every interface.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.audit_events import ParticipantRole
from node.auth.policy import PatientBinding, Principal, make_principal, role_scopes
from node.services.audit import NodeAudit

ADDRESS = "0x" + "Ab" * 20


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[NodeAudit]:
    opened = NodeAudit.open(tmp_path, "HOSP-A")
    yield opened
    opened.close()


def _principal(subject: str, role: str, patient: PatientBinding | None = None) -> Principal:
    return make_principal(
        subject=subject,
        role=role,
        scopes=role_scopes(role),
        issuer="https://node.test",
        token_id="t",
        patient=patient,
    )


def test_staff_act_in_their_role_and_a_service_credential_as_an_application(
    audit: NodeAudit,
) -> None:
    for role, expected in (
        ("clinician", ParticipantRole.CLINICIAN),
        ("radiologist", ParticipantRole.RADIOLOGIST),
        ("auditor", ParticipantRole.AUDITOR),
        ("admin", ParticipantRole.ADMIN),
        # The training credential is software: DICOM CID 402 "Application" (110150).
        ("trainer", ParticipantRole.APPLICATION),
        # A role the vocabulary lacks: the requesting process, "Source" (110153).
        ("janitor", ParticipantRole.SOURCE),
    ):
        actor = audit.principal_actor(_principal(f"{role}-1", role), "10.0.0.7")
        assert (actor.who, actor.role, actor.network_address) == (
            f"user:{role}-1",
            expected,
            "10.0.0.7",
        ), role
    # A subject that is not a plain token is named by its hash, never as typed.
    odd = audit.principal_actor(_principal("Doe, Jane", "clinician"), None)
    assert odd.who.startswith("user:") and "Doe" not in odd.who


def test_a_patient_is_named_by_their_address_else_their_pseudonym(audit: NodeAudit) -> None:
    linked = _principal("p1", "patient", PatientBinding("MRN-1", "HOSP", ADDRESS))
    unlinked = _principal("p2", "patient", PatientBinding("MRN-2", "HOSP"))
    by_address = audit.principal_actor(linked, None)
    assert (by_address.who, by_address.role) == (ADDRESS.lower(), ParticipantRole.PATIENT)
    by_pseudonym = audit.principal_actor(unlinked, None)
    assert by_pseudonym.who == audit.patient_ref("MRN-2", "HOSP")
    assert by_pseudonym.role is ParticipantRole.PATIENT and "MRN" not in by_pseudonym.who
