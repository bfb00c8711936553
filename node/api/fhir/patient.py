"""FHIR Patient: read and search."""

from __future__ import annotations

from node.api.fhir.interactions import add_read_and_search, fhir_router
from node.fhir import patients as fhir_patients

router = fhir_router("Patient")
add_read_and_search(
    router,
    "Patient",
    fhir_patients.read_patient,
    fhir_patients.search_patients,
    fhir_patients.SEARCH_PARAMS,
)
