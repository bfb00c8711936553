"""Assembles the FHIR routers under one prefix, with a FHIR answer for every other path."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import Match

from node.api.fhir import (
    diagnostic_report,
    imaging_study,
    metadata,
    observation,
    patient,
    service_request,
)
from node.api.fhir.outcome import FhirRoute, outcome

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def build_router() -> APIRouter:
    """Every FHIR interaction; mount under /fhir."""
    router = APIRouter(route_class=FhirRoute)
    for module in (metadata, patient, service_request, imaging_study, diagnostic_report):
        router.include_router(module.router)
    router.include_router(observation.router)
    router.add_api_route("/{rest:path}", _unsupported, methods=_METHODS, include_in_schema=False)
    return router


def _unsupported(rest: str, request: Request) -> Response:
    """405 for an interaction this server does not offer on a known path, else 404."""
    allowed: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, APIRoute) and route.endpoint is not _unsupported:
            match, _ = route.matches(request.scope)
            if match is Match.PARTIAL:
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
