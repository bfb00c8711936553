"""The read and search-type interactions (R4 §3.1.0.2, §3.1.0.8) every resource router shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import Connection

from node.api.deps import ArchiveDep
from node.api.fhir.outcome import (
    FhirResponse,
    FhirRoute,
    fhir_base,
    lenient,
    negotiate,
    resource_response,
)
from node.auth.deps import RequestPrincipal
from node.fhir.compartment import check_readable, compartment_of, restrict_search
from node.fhir.search import Page, SearchRequest, bundle, parse_search

Reader = Callable[[Connection, str], dict[str, Any]]
Searcher = Callable[[Connection, SearchRequest], Page]


def fhir_router(resource_type: str) -> APIRouter:
    """An empty router for one resource type: FHIR errors, JSON negotiation."""
    return APIRouter(
        route_class=FhirRoute, dependencies=[Depends(negotiate)], tags=[f"FHIR {resource_type}"]
    )


def add_read_and_search(
    router: APIRouter,
    resource_type: str,
    read: Reader,
    search: Searcher,
    params: frozenset[str],
) -> None:
    """GET /{type}/{id} and GET /{type}?params for one resource type."""

    def search_type(request: Request, archive: ArchiveDep, principal: RequestPrincipal) -> Response:
        parsed = parse_search(request.query_params.multi_items(), params, lenient=lenient(request))
        with archive.engine.connect() as conn:
            # A patient principal searches only their own compartment.
            compartment = compartment_of(conn, principal)
            narrowed = (
                parsed
                if compartment is None
                else restrict_search(resource_type, parsed, compartment)
            )
            page = search(conn, narrowed) if narrowed is not None else Page(0, [])
        base = fhir_base(request)
        return FhirResponse(bundle(f"{base}/{resource_type}", parsed, page, fhir_base=base))

    def read_instance(
        resource_id: str, archive: ArchiveDep, principal: RequestPrincipal
    ) -> Response:
        with archive.engine.connect() as conn:
            resource = read(conn, resource_id)
            check_readable(resource, compartment_of(conn, principal))
            return resource_response(resource)

    search_type.__doc__ = f"Search {resource_type} (FHIR R4 search-type)."
    read_instance.__doc__ = f"Read one {resource_type} by id (FHIR R4 read)."
    router.add_api_route(
        f"/{resource_type}", search_type, methods=["GET"], name=f"search {resource_type}"
    )
    router.add_api_route(
        f"/{resource_type}/{{resource_id}}",
        read_instance,
        methods=["GET"],
        name=f"read {resource_type}",
    )
