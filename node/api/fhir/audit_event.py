"""FHIR AuditEvent: read and search the node's audit log, each event with its inclusion proof.

Auditors (``user/AuditEvent.read``) see every event; a patient (``patient/AuditEvent.read``)
sees only the events that name them or their studies and orders. Reading the trail is itself
recorded ("Audit Log Used", PS3.15 A.5.3.2) by the audit middleware.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import Connection

from node.api.deps import ArchiveDep
from node.api.fhir.interactions import fhir_router
from node.api.fhir.outcome import FhirResponse, fhir_base, lenient, resource_response
from node.auth.policy import Principal
from node.errors import ForbiddenError, NotFoundError
from node.fhir.audit_events import TreeHead, audit_event_resource
from node.fhir.audit_search import SEARCH_PARAMS, AuditIndex
from node.fhir.search import Page, bundle, parse_search
from node.services.audit import NodeAudit

router = fhir_router("AuditEvent")


def _index(request: Request) -> AuditIndex:
    state = request.app.state
    index: AuditIndex | None = getattr(state, "audit_index", None)
    if index is None:
        audit: NodeAudit = state.audit
        index = state.audit_index = AuditIndex(audit)
    return index


def _restriction(request: Request, index: AuditIndex, conn: Connection) -> set[str] | None:
    """None for a caller who may see every event; else the references their events name."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        return None  # authentication is off on this node: as every other route, open
    if not (
        principal.satisfies("user/AuditEvent.read")
        or principal.satisfies("patient/AuditEvent.read")
    ):
        raise ForbiddenError("reading the audit trail needs the AuditEvent.read scope")
    if not principal.compartment_restricted:
        return None
    bound = principal.patient
    if bound is None:
        return set()
    return index.patient_refs(conn, mrn=bound.mrn, issuer=bound.issuer, address=bound.address)


@router.get("/AuditEvent", name="search AuditEvent")
def search_audit_events(request: Request, archive: ArchiveDep) -> Response:
    """Search AuditEvent (FHIR R4 search-type), newest first."""
    parsed = parse_search(
        request.query_params.multi_items(), SEARCH_PARAMS, lenient=lenient(request)
    )
    index = _index(request)
    with archive.engine.connect() as conn:
        restrict = _restriction(request, index, conn)
        total, hits = index.search(conn, parsed, restrict)
    # Read after the search indexed the log: every hit lies inside this head.
    head = TreeHead.of(index.audit.log)
    resources = [audit_event_resource(index.audit.log, hit, head) for hit in hits]
    base = fhir_base(request)
    return FhirResponse(
        bundle(f"{base}/AuditEvent", parsed, Page(total, resources), fhir_base=base)
    )


@router.get("/AuditEvent/{event_id}", name="read AuditEvent")
def read_audit_event(event_id: str, request: Request, archive: ArchiveDep) -> Response:
    """Read one AuditEvent (its id is its leaf index in the log)."""
    index = _index(request)
    with archive.engine.connect() as conn:
        restrict = _restriction(request, index, conn)
    hit = index.read(int(event_id), restrict) if event_id.isdigit() else None
    if hit is None:
        raise NotFoundError(f"no AuditEvent with id {event_id}")
    head = TreeHead.of(index.audit.log)
    return resource_response(audit_event_resource(index.audit.log, hit, head))
