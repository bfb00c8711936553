"""FHIR Observation: read and search."""

from __future__ import annotations

from node.api.fhir.interactions import add_read_and_search, fhir_router
from node.fhir import observations as fhir_observations

router = fhir_router("Observation")
add_read_and_search(
    router,
    "Observation",
    fhir_observations.read_observation,
    fhir_observations.search_observations,
    fhir_observations.SEARCH_PARAMS,
)
