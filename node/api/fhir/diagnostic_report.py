"""FHIR DiagnosticReport: read, search, create, update, vread and history.

A report's life (preliminary → final → amended, history kept, final versions queued for the
order system) is `node.services.reports`; this router translates HTTP (R4 §3.1.0).
"""

from __future__ import annotations

import re

from anyio import to_thread
from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import Connection

from node.api.deps import ArchiveDep
from node.api.fhir.interactions import add_read_and_search, fhir_router
from node.api.fhir.outcome import (
    FhirResponse,
    fhir_base,
    require_json_body,
    resource_response,
)
from node.auth.deps import RequestPrincipal
from node.auth.policy import Principal
from node.errors import InvalidRequestError, NotFoundError
from node.fhir import reports as fhir_reports
from node.fhir.compartment import check_readable, compartment_of
from node.services import reports
from node.services.archive import Archive

router = fhir_router("DiagnosticReport")
add_read_and_search(
    router,
    "DiagnosticReport",
    fhir_reports.read_report,
    fhir_reports.search_reports,
    fhir_reports.SEARCH_PARAMS,
)
_ETAG = re.compile(r'(?:W/)?"(\d+)"')


@router.post("/DiagnosticReport", name="create DiagnosticReport")
async def create(request: Request, archive: ArchiveDep) -> Response:
    """Create a report (R4 §3.1.0.7): status preliminary or final."""
    require_json_body(request)
    body = await request.body()
    resource = await to_thread.run_sync(_create, archive, body)
    location = f"{fhir_base(request)}/DiagnosticReport/{resource['id']}/_history/1"
    return resource_response(resource, 201, Location=location)


def _create(archive: Archive, body: bytes) -> dict[str, object]:
    with archive.engine.connect() as conn:
        content = fhir_reports.parse_report(conn, body, None)
    key = reports.create_report(archive.engine, content)
    with archive.engine.connect() as conn:
        return fhir_reports.read_report(conn, str(key))


@router.put("/DiagnosticReport/{resource_id}", name="update DiagnosticReport")
async def update(resource_id: str, request: Request, archive: ArchiveDep) -> Response:
    """Write the next version (R4 §3.1.0.4): preliminary → final, final → amended."""
    require_json_body(request)
    expected = None
    if_match = request.headers.get("if-match")
    if if_match is not None:
        m = _ETAG.fullmatch(if_match.strip())
        if m is None:
            raise InvalidRequestError('If-Match must be a version ETag like W/"2"')
        expected = int(m.group(1))
    body = await request.body()
    resource = await to_thread.run_sync(_update, archive, resource_id, body, expected)
    return resource_response(resource)


def _update(
    archive: Archive, resource_id: str, body: bytes, expected: int | None
) -> dict[str, object]:
    if not resource_id.isdigit():
        raise NotFoundError(f"no DiagnosticReport with id {resource_id}")
    with archive.engine.connect() as conn:
        fhir_reports.read_report(conn, resource_id)  # 404 before judging the body
        content = fhir_reports.parse_report(conn, body, resource_id)
    reports.update_report(archive.engine, int(resource_id), content, expected)
    with archive.engine.connect() as conn:
        return fhir_reports.read_report(conn, resource_id)


@router.get("/DiagnosticReport/{resource_id}/_history", name="history DiagnosticReport")
def history(
    resource_id: str, request: Request, archive: ArchiveDep, principal: RequestPrincipal
) -> Response:
    """Every version of one report (R4 §3.1.0.10 history-instance)."""
    with archive.engine.connect() as conn:
        _check_compartment(conn, resource_id, principal)
        return FhirResponse(fhir_reports.history(conn, resource_id, fhir_base(request)))


@router.get("/DiagnosticReport/{resource_id}/_history/{version_id}", name="vread DiagnosticReport")
def vread(
    resource_id: str, version_id: str, archive: ArchiveDep, principal: RequestPrincipal
) -> Response:
    """One version of a report (R4 §3.1.0.3 vread)."""
    with archive.engine.connect() as conn:
        _check_compartment(conn, resource_id, principal)
        return resource_response(fhir_reports.read_version(conn, resource_id, version_id))


def _check_compartment(conn: Connection, resource_id: str, principal: Principal | None) -> None:
    """A patient reads a report's versions only when the report is theirs (else 404)."""
    compartment = compartment_of(conn, principal)
    if compartment is not None:
        check_readable(fhir_reports.read_report(conn, resource_id), compartment)
