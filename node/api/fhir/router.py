"""Assembles the FHIR routers under one prefix, with a FHIR answer for every other path."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import Match

from node.api.fhir import (
    audit_event,
    consent,
    diagnostic_report,
    imaging_study,
    metadata,
    observation,
    patient,
    patient_link,
    service_request,
)
from node.api.fhir.outcome import FhirRoute, outcome

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def build_router() -> APIRouter:
    """Every FHIR interaction; mount under /fhir."""
    router = APIRouter(route_class=FhirRoute)
    modules = (
        metadata,
        patient,
        service_request,
        imaging_study,
        diagnostic_report,
        observation,
        audit_event,
        consent,  # issue #6: ledger consent (docs/consent.md)
        patient_link,
    )
    routes = [r for m in modules for r in m.router.routes if isinstance(r, APIRoute)]
    for module in modules:
        router.include_router(module.router)

    def unsupported(rest: str, request: Request) -> Response:
        """405 for an interaction this server does not offer on a known path, else 404."""
        scope = {**request.scope, "path": f"/{rest}", "root_path": ""}
        allowed: set[str] = set()
        for route in routes:
            if route.matches(scope)[0] is Match.PARTIAL:
                allowed |= route.methods or set()
        if allowed:
            methods = ", ".join(sorted(allowed))
            return outcome(
                405,
                "not-supported",
                f"{request.method} is not supported here (allowed: {methods})",
                {"Allow": methods},
            )
        return outcome(404, "not-found", "no such FHIR resource type or interaction on this server")

    router.add_api_route("/{rest:path}", unsupported, methods=_METHODS, include_in_schema=False)
    return router
