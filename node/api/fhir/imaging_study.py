"""FHIR ImagingStudy (read, search) and the DICOMweb Endpoint its studies point at."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from node.api.fhir.interactions import add_read_and_search, fhir_router
from node.api.fhir.outcome import resource_response
from node.errors import NotFoundError
from node.fhir import imaging as fhir_imaging

router = fhir_router("ImagingStudy")
add_read_and_search(
    router,
    "ImagingStudy",
    fhir_imaging.read_study,
    fhir_imaging.search_studies,
    fhir_imaging.SEARCH_PARAMS,
)


@router.get("/Endpoint/{endpoint_id}", name="read Endpoint")
def read_endpoint(endpoint_id: str, request: Request) -> Response:
    """The node's DICOMweb Endpoint (the only Endpoint it has)."""
    if endpoint_id != fhir_imaging.ENDPOINT_ID:
        raise NotFoundError(f"no Endpoint with id {endpoint_id}")
    return resource_response(fhir_imaging.endpoint_resource(request.app.state.settings.base_url))
