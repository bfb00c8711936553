"""FHIR R4 JSON under /fhir: one router module per resource type."""
