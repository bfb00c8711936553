"""FHIR Consent: read and search over the ledger's grants, and create (a signed grant/revoke).

Consents exist only on a node connected to the ledger; without one every interaction here is
503 with an OperationOutcome saying so. Translation only: the rules are in
`node.fhir.consents` (resources) and `node.services.consent_intake` (verify, relay).
"""

from __future__ import annotations

from typing import Final

from anyio import to_thread
from fastapi import Request
from fastapi.responses import Response

from node.api.deps import ArchiveDep
from node.api.fhir.interactions import fhir_router
from node.api.fhir.outcome import (
    FhirResponse,
    fhir_base,
    lenient,
    require_json_body,
    resource_response,
)
from node.auth.middleware import READ_METHODS, RouteRule
from node.auth.policy import Principal
from node.errors import ForbiddenError
from node.fhir import consents as consent_fhir
from node.fhir.search import bundle, parse_search
from node.ledger_link import LedgerLink, ledger_of
from node.services import consent_intake
from node.services.archive import Archive
from node.services.consent_errors import ledger_errors

router = fhir_router("Consent")

# What the default-deny route table (node/auth/middleware.py ROUTE_RULES) should admit for
# these routes; the compartment of a patient token is enforced here, in the routes.
CONSENT_ROUTE_RULES: Final = (
    RouteRule("/fhir/Consent", READ_METHODS, ("user/Consent.read", "patient/Consent.read")),
    RouteRule(
        "/fhir/Consent", frozenset({"POST"}), ("patient/Consent.write", "user/Consent.write")
    ),
    # $link (patient for their own record, or staff registering) and $unlink (admins only,
    # checked in the route: a prefix cannot tell the two apart).
    RouteRule(
        "/fhir/Patient/", frozenset({"POST"}), ("patient/Consent.write", "user/Patient.write")
    ),
)


def patient_compartment(request: Request) -> tuple[str, str] | None:
    """The (MRN, issuer) a patient token is bound to; None for staff or without auth."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal) or not principal.compartment_restricted:
        return None
    if principal.patient is None:
        raise ForbiddenError("a patient token must name its patient")
    return principal.patient.mrn, principal.patient.issuer


def _view(link: LedgerLink) -> consent_fhir.ConsentView:
    return consent_fhir.ConsentView(
        link.cache, link.hospital_id, link.deployment.consent_registry, link.chain.chain_id
    )


@router.get("/Consent", name="search Consent")
def search(request: Request, archive: ArchiveDep) -> Response:
    """Search the grants of this node's linked patients (FHIR R4 search-type)."""
    link = ledger_of(request.app.state)
    parsed = parse_search(
        request.query_params.multi_items(), consent_fhir.SEARCH_PARAMS, lenient=lenient(request)
    )
    only = patient_compartment(request)
    with ledger_errors(), archive.engine.connect() as conn:
        page = _view(link).search(conn, parsed, only)
    base = fhir_base(request)
    return FhirResponse(bundle(f"{base}/Consent", parsed, page, fhir_base=base))


@router.get("/Consent/{resource_id}", name="read Consent")
def read(resource_id: str, request: Request, archive: ArchiveDep) -> Response:
    """One grant by its consentRef (FHIR R4 read)."""
    link = ledger_of(request.app.state)
    only = patient_compartment(request)
    with ledger_errors(), archive.engine.connect() as conn:
        return resource_response(_view(link).read(conn, resource_id, only))


@router.post("/Consent", name="create Consent")
async def create(request: Request, archive: ArchiveDep) -> Response:
    """Relay a patient's signed grant (201) or revocation (200) to the ledger."""
    link = ledger_of(request.app.state)
    require_json_body(request)
    body = await request.body()
    only = patient_compartment(request)
    resource, revoke = await to_thread.run_sync(_create, archive, link, body, only)
    location = f"{fhir_base(request)}/Consent/{resource['id']}"
    return resource_response(resource, 200 if revoke else 201, Location=location)


def _create(
    archive: Archive, link: LedgerLink, body: bytes, only: tuple[str, str] | None
) -> tuple[dict[str, object], bool]:
    patient_id, signed = consent_intake.parse_consent_post(
        body, link.chain.chain_id, link.deployment.consent_registry
    )
    state = consent_intake.relay_consent(archive.engine, link, patient_id, signed, only)
    with ledger_errors(), archive.engine.connect() as conn:
        return _view(link).resource_for(conn, state), signed.request.revoke
