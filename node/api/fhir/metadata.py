"""The CapabilityStatement (R4 §6.1.0) at /fhir/metadata: what this server really implements.

The search parameters listed per type are the ones the services accept (the test checks the
two lists against each other), so a client can trust this statement.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import Request
from fastapi.responses import Response

from ledger.audit_wire import custodian
from node.api.fhir.interactions import fhir_router
from node.api.fhir.outcome import FhirResponse
from node.fhir import audit_search
from node.fhir import consents as consent_fhir
from node.fhir import imaging as fhir_imaging
from node.fhir import observations as fhir_observations
from node.fhir import orders as fhir_orders
from node.fhir import patients as fhir_patients
from node.fhir import reports as fhir_reports
from node.fhir.search import now_instant

router = fhir_router("CapabilityStatement")

# name -> (FHIR search parameter type, what it matches)
_PARAM_DOCS: Final[dict[str, tuple[str, str]]] = {
    "_id": ("token", "the logical id"),
    "identifier": ("token", "an identifier value, optionally system|value"),
    "name": ("string", "start of any part of the name, any case"),
    "birthdate": ("date", "birth date, with eq/ne/gt/ge/lt/le/sa/eb prefixes"),
    "gender": ("token", "male | female | other | unknown"),
    "patient": ("reference", "the Patient (Patient/id)"),
    "subject": ("reference", "the subject, a Patient (Patient/id)"),
    "status": ("token", "the resource status"),
    "occurrence": ("date", "scheduled date of the order"),
    "code": ("token", "the code, optionally system|code"),
    "started": ("date", "study date"),
    "modality": (
        "token",
        "DICOM modality code (CID 29): of any series (ImagingStudy), ordered (ServiceRequest)",
    ),
    "accession": ("token", "the accession number (a pacsmesh search parameter)"),
    "basedon": ("reference", "the ServiceRequest the study fulfils"),
    "based-on": ("reference", "the ServiceRequest the report fulfils"),
    "date": ("date", "the study date of the report (effective)"),
    "result": ("reference", "an Observation in the report"),
    "derived-from": ("reference", "the ImagingStudy the finding was made on"),
    # AuditEvent (node/api/fhir/audit_event.py, docs/security-audit.md)
    "action": ("token", "C | R | U | D | E"),
    "agent": ("token", "who acted, as recorded (user:NAME, ae:TITLE, hl7:APP@FACILITY, 0x…)"),
    "agent-role": ("token", "the agent's role (clinician, …, or a DICOM CID 402 code)"),
    "entity": ("token", "a recorded reference (sha256:…, 0x…) or Type/id (ImagingStudy/UID)"),
    "outcome": ("token", "0 | 4 | 8 | 12"),
    "type": ("token", "DICOM CID 400 event code, optionally DCM system|code"),
    "subtype": ("token", "restful interaction: read, search-type, create, update, delete"),
    "actor": ("reference", "the grantee member: account, hospital id, `all`, or system|value"),
    "purpose": ("token", "v3-ActReason purpose: TREAT, HRESCH or MLTRAINING"),
    "period": ("date", "the grant's validity window (eq overlaps the date; ge/gt/le/lt)"),
}
# Where a parameter means something else on one type.
_TYPE_PARAM_DOCS: Final[dict[tuple[str, str], tuple[str, str]]] = {
    ("AuditEvent", "_id"): ("token", "the event's leaf index in the audit log"),
    ("AuditEvent", "date"): ("date", "when the event was recorded, with prefixes"),
    ("AuditEvent", "patient"): ("reference", "the Patient (Patient/id) or their ledger address"),
}
_READ_SEARCH: Final = [{"code": "read"}, {"code": "search-type"}]
_TYPES: Final[list[tuple[str, frozenset[str], list[dict[str, str]]]]] = [
    ("Patient", fhir_patients.SEARCH_PARAMS, _READ_SEARCH),
    ("ServiceRequest", fhir_orders.SEARCH_PARAMS, _READ_SEARCH),
    ("ImagingStudy", fhir_imaging.SEARCH_PARAMS, _READ_SEARCH),
    (
        "DiagnosticReport",
        fhir_reports.SEARCH_PARAMS,
        [
            *_READ_SEARCH,
            {"code": "vread"},
            {"code": "history-instance"},
            {"code": "create"},
            {"code": "update"},
        ],
    ),
    ("Observation", fhir_observations.SEARCH_PARAMS, _READ_SEARCH),
    ("AuditEvent", audit_search.SEARCH_PARAMS, _READ_SEARCH),
    ("Consent", consent_fhir.SEARCH_PARAMS, [*_READ_SEARCH, {"code": "create"}]),
]


def capability_statement(base_url: str, member_account: str | None = None) -> dict[str, Any]:
    """This server's CapabilityStatement (naming its consortium member account, if it has one).

    The member account is what an auditor reads this node's anchors under; the auditor checks
    it against the endpoint the consortium registry holds for this member (ledger/audit_wire.py).
    """
    resources: list[dict[str, Any]] = []
    for resource_type, params, interactions in _TYPES:
        entry: dict[str, Any] = {
            "type": resource_type,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
            "interaction": interactions,
            "searchParam": [
                {"name": p, "type": doc[0], "documentation": doc[1]}
                for p in sorted(params)
                for doc in [_TYPE_PARAM_DOCS.get((resource_type, p), _PARAM_DOCS[p])]
            ],
        }
        if resource_type == "Patient":
            # The patient-signed link to a network identity (docs/consent.md).
            entry["operation"] = [
                {"name": name, "definition": f"urn:pacsmesh:OperationDefinition/Patient-{name}"}
                for name in ("link", "unlink")
            ]
        if resource_type == "DiagnosticReport":
            entry.update(
                versioning="versioned-update",
                readHistory=True,
                updateCreate=False,
                conditionalCreate=False,
                conditionalUpdate=False,
            )
        resources.append(entry)
    resources.append(
        {
            "type": "Endpoint",
            "profile": "http://hl7.org/fhir/StructureDefinition/Endpoint",
            "interaction": [{"code": "read"}],
        }
    )
    implementation: dict[str, Any] = {
        "description": "pacsmesh node FHIR server",
        "url": f"{base_url}/fhir",
    }
    if member_account is not None:
        implementation["custodian"] = custodian(member_account)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now_instant(),
        "publisher": "pacsmesh",
        "kind": "instance",
        "software": {"name": "pacsmesh node", "version": "0.1.0"},
        "implementation": implementation,
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json", "application/json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Search paging: _count (default 50, at most 500) and _offset. Unknown "
                    "search parameters are refused with 400 unless Prefer: handling=lenient."
                ),
                "resource": resources,
            }
        ],
    }


@router.get("/metadata", name="capabilities")
def metadata(request: Request) -> Response:
    """The CapabilityStatement (R4 §3.1.0.9 capabilities interaction)."""
    link = getattr(request.app.state, "ledger", None)
    account = link.account if link is not None else None
    return FhirResponse(capability_statement(request.app.state.settings.base_url, account))
