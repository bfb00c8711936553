"""FHIR R4 translation: search parameters to index queries, index rows to resources.

The protocol layer for FHIR, beside node/hl7 and node/dimse: node/api/fhir routes requests
here; the rules (report lifecycle, consent, audit) stay in node/services.
"""
