"""A patient principal's FHIR Patient compartment: the only records a patient token may read.

FHIR R4 §3.1.0.9 (compartments, http://hl7.org/fhir/R4/compartmentdefinition-patient.html):
a resource is in a patient's compartment when its subject/patient is that Patient. Here the
patient a token names (MRN and issuer) is the Patient row the order system registered with that
MRN and issuer; a patient the node has no row for has an empty compartment.

Searches are narrowed by adding the compartment's own `_id`/`patient` criterion (AND with what
the patient asked); reads of a resource outside it answer 404, exactly like a resource that
does not exist, so a patient token cannot probe which ids are in use (R4 §6.1.0.6, "Security":
a server may hide a resource's existence from a client not allowed to see it).

Known limit: the index keeps no issuer for a study's Patient ID, so ImagingStudy, Observation
and DiagnosticReport searches match by MRN alone, as the `patient=` search does for staff.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, select

from node.auth.policy import Principal
from node.errors import NotFoundError
from node.fhir.search import SearchRequest
from node.storage.workflow_index import Patient

PATIENT_T: Final = cast(Table, Patient.__table__)  # type: ignore[attr-defined]

# The search parameter that pins each compartment type to one Patient. A type missing here is
# outside every patient's compartment (default deny).
COMPARTMENT_PARAM: Final = {
    "Patient": "_id",
    "ImagingStudy": "patient",
    "ServiceRequest": "patient",
    "DiagnosticReport": "patient",
    "Observation": "patient",
}


@dataclass(frozen=True)
class Compartment:
    """The Patient row a patient principal is (None: the node holds no record of them)."""

    patient_key: int | None


def compartment_of(conn: Connection, principal: Principal | None) -> Compartment | None:
    """The compartment a principal is confined to, or None for principals that are not."""
    if principal is None or not principal.compartment_restricted:
        return None
    bound = principal.patient
    if bound is None:
        return Compartment(None)
    key = conn.execute(
        select(PATIENT_T.c.patient_key).where(
            PATIENT_T.c.mrn == bound.mrn, PATIENT_T.c.issuer == bound.issuer
        )
    ).scalar_one_or_none()
    return Compartment(int(key) if key is not None else None)


def restrict_search(
    resource_type: str, search: SearchRequest, compartment: Compartment
) -> SearchRequest | None:
    """The search narrowed to the compartment, or None when nothing in it can match."""
    param = COMPARTMENT_PARAM.get(resource_type)
    if param is None or compartment.patient_key is None:
        return None
    value = str(compartment.patient_key) if param == "_id" else f"Patient/{compartment.patient_key}"
    params = {**search.params, param: [*search.values(param), value]}
    # `echo` (the self/next links) stays as the client wrote it.
    return replace(search, params=params)


def in_compartment(resource: dict[str, Any], compartment: Compartment) -> bool:
    """Whether a resource belongs to the compartment's Patient."""
    key = compartment.patient_key
    resource_type = resource.get("resourceType")
    if key is None or resource_type not in COMPARTMENT_PARAM:
        return False
    if resource_type == "Patient":
        return resource.get("id") == str(key)
    subject = resource.get("subject") or {}
    # A logical reference by identifier means the MRN is ambiguous (or unregistered): not proof.
    return isinstance(subject, dict) and subject.get("reference") == f"Patient/{key}"


def check_readable(resource: dict[str, Any], compartment: Compartment | None) -> None:
    """404 for a resource outside the compartment (the same answer as for no resource)."""
    if compartment is None or in_compartment(resource, compartment):
        return
    raise NotFoundError(
        f"no {resource.get('resourceType', 'resource')} with id {resource.get('id')}"
    )
