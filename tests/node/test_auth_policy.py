"""Roles, scopes and the patient compartment: what each role may and may not do."""

from __future__ import annotations

import pytest

from node.auth.policy import (
    ROLES,
    PatientBinding,
    Principal,
    Scope,
    check_patient_access,
    make_principal,
    parse_scopes,
    role_scopes,
)
from node.errors import ForbiddenError


def _principal(role: str, patient: PatientBinding | None = None) -> Principal:
    return make_principal(
        subject="u", role=role, scopes=role_scopes(role), issuer="i", token_id="t", patient=patient
    )


ME = PatientBinding("MRN-1", "HOSP-A")

# (resource, action) → roles allowed by default; every other role is refused.
EXPECTED: dict[tuple[str, str], set[str]] = {
    ("ImagingStudy", "read"): {"clinician", "radiologist", "patient", "admin"},
    ("ImagingStudy", "write"): {"clinician", "radiologist", "admin"},
    ("DiagnosticReport", "read"): {"clinician", "radiologist", "patient", "admin"},
    ("DiagnosticReport", "write"): {"radiologist", "admin"},
    ("ServiceRequest", "write"): {"clinician", "admin"},
    ("AuditEvent", "read"): {"auditor", "patient", "admin"},
    ("AuditEvent", "write"): {"admin"},
    ("Consent", "read"): {"clinician", "radiologist", "auditor", "patient", "admin"},
    ("Consent", "write"): {"patient", "admin"},
    ("Patient", "write"): {"admin"},
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("resource", "action"), list(EXPECTED))
def test_role_matrix(role: str, resource: str, action: str) -> None:
    principal = _principal(role, ME if role == "patient" else None)
    assert principal.allows(resource, action) == (role in EXPECTED[(resource, action)])


def test_patient_scopes_reach_only_their_own_compartment() -> None:
    me = _principal("patient", ME)
    check_patient_access(me, "MRN-1", "HOSP-A")  # own record: fine
    for mrn, issuer in (("MRN-2", "HOSP-A"), ("MRN-1", "HOSP-B"), ("MRN-1", "")):
        with pytest.raises(ForbiddenError, match="only their own records"):
            check_patient_access(me, mrn, issuer)
    # A patient's scopes never satisfy a staff-context route requirement.
    assert me.allows("ImagingStudy", "read")
    assert not me.satisfies("user/ImagingStudy.read")
    assert me.satisfies("patient/ImagingStudy.read")
    # Staff pass the compartment check; their scopes decide.
    check_patient_access(_principal("clinician"), "MRN-2", "HOSP-A")


def test_default_deny() -> None:
    assert _principal("superuser").scopes == ()
    assert not _principal("superuser").allows("ImagingStudy", "read")
    nothing = make_principal(subject="u", role="clinician", scopes=(), issuer="i", token_id="t")
    assert not nothing.allows("ImagingStudy", "read")
    clinician = _principal("clinician")
    assert not clinician.allows("ImagingStudy", "delete")  # unknown action
    assert not clinician.satisfies("not a scope")
    # A patient role without a patient, or staff holding patient scopes, get no patient access.
    orphan = _principal("patient")
    assert orphan.scopes == () and not orphan.allows("ImagingStudy", "read")
    staff = make_principal(
        subject="u", role="admin", scopes=parse_scopes("patient/*.read"), issuer="i", token_id="t"
    )
    assert staff.scopes == ()


def test_scopes_parse_and_cover() -> None:
    assert parse_scopes("user/*.read openid profile patient/Observation.* bogus/X.read") == (
        Scope("user", "*", "read"),
        Scope("patient", "Observation", "*"),
    )
    assert Scope("user", "*", "*").covers(Scope("user", "Patient", "write"))
    assert not Scope("user", "*", "read").covers(Scope("user", "Patient", "write"))
    assert not Scope("user", "*", "*").covers(Scope("system", "Patient", "read"))
    admin = _principal("admin")
    assert admin.satisfies("system/ImagingStudy.read")
    assert not _principal("radiologist").satisfies("system/ImagingStudy.read")


def test_broad_requests_are_narrowed_to_the_role() -> None:
    auditor = make_principal(
        subject="u", role="auditor", scopes=parse_scopes("user/*.*"), issuer="i", token_id="t"
    )
    assert auditor.scope_text == (
        "user/AuditEvent.read user/Consent.read user/Organization.read user/Endpoint.read"
    )
    assert Scope("user", "*", "read").meet(Scope("user", "Patient", "*")) == Scope(
        "user", "Patient", "read"
    )
    assert Scope("user", "Patient", "read").meet(Scope("user", "Consent", "read")) is None
