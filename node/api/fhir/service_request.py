"""FHIR ServiceRequest: read and search."""

from __future__ import annotations

from node.api.fhir.interactions import add_read_and_search, fhir_router
from node.fhir import orders as fhir_orders

router = fhir_router("ServiceRequest")
add_read_and_search(
    router,
    "ServiceRequest",
    fhir_orders.read_order,
    fhir_orders.search_orders,
    fhir_orders.SEARCH_PARAMS,
)
