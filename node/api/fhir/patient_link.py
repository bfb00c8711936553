"""`POST /fhir/Patient/{id}/$link` ties a local patient to the network identity they hold;
`POST /fhir/Patient/{id}/$unlink` ends such a link (Parameters with `address`).

The body is the FHIR Parameters resource `pacsmesh patient sign-link` prints (hospital,
mrnHash, address, issuedAt, nonce, signature as valueString each). The node checks the
signature against this node's hospital id and the patient's own MRN and issuer
(`node.services.patient_links`), stores the link, and answers with a Parameters naming the
linked address. Anything wrong is a 400/409 OperationOutcome and nothing is stored.
"""

from __future__ import annotations

import json
from typing import Any

from anyio import to_thread
from eth_utils.address import is_address
from fastapi import Request
from fastapi.responses import Response

from node.api.deps import ArchiveDep
from node.api.fhir.consent import patient_compartment
from node.api.fhir.interactions import fhir_router
from node.api.fhir.outcome import FhirResponse, require_json_body
from node.auth.policy import Principal
from node.errors import ForbiddenError, InvalidRequestError, NotFoundError
from node.fhir.patients import patient_mrn
from node.fhir.search import fhir_instant
from node.ledger_link import LedgerLink, ledger_of
from node.services import patient_links
from node.services.archive import Archive
from node.services.consent_errors import LedgerUnavailableError

router = fhir_router("Patient")


@router.post("/Patient/{resource_id}/$link", name="link Patient")
async def link_patient(resource_id: str, request: Request, archive: ArchiveDep) -> Response:
    """Link the patient to the address whose key signed the link (custom operation $link)."""
    link = ledger_of(request.app.state)
    require_json_body(request)
    body = await request.body()
    only = patient_compartment(request)
    result = await to_thread.run_sync(_link, archive, link, resource_id, body, only)
    return FhirResponse(result)


def _link(
    archive: Archive,
    link: LedgerLink,
    resource_id: str,
    body: bytes,
    only: tuple[str, str] | None,
) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise InvalidRequestError("the body is not JSON") from None
    signed = patient_links.parse_parameters(parsed)
    with archive.engine.connect() as conn:
        record = patient_mrn(conn, resource_id)
    if only is not None and record != only:
        raise ForbiddenError("a patient may link only their own record")
    if record is None:
        raise NotFoundError(f"no Patient with id {resource_id}")
    mrn, issuer = record
    hospital = link.hospital_id()
    if not hospital:
        raise LedgerUnavailableError("this node's account is not a consortium member")
    patient_links.verify_link(signed, hospital, mrn, issuer)
    linked_at = patient_links.store_link(archive.engine, signed, mrn, issuer)
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{resource_id}"}},
            {"name": "address", "valueString": signed.patient},
            {"name": "linkedAt", "valueInstant": fhir_instant(linked_at)},
        ],
    }


@router.post("/Patient/{resource_id}/$unlink", name="unlink Patient")
async def unlink_patient(resource_id: str, request: Request, archive: ArchiveDep) -> Response:
    """End the link of the patient to an address; its consents stop showing here."""
    principal = getattr(request.state, "principal", None)
    if isinstance(principal, Principal) and principal.role != "admin":
        raise ForbiddenError("unlinking a patient's identity is reserved to administrators")
    require_json_body(request)  # local bookkeeping: works while the chain is down too
    body = await request.body()
    result = await to_thread.run_sync(_unlink, archive, resource_id, body)
    return FhirResponse(result)


def _unlink(archive: Archive, resource_id: str, body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise InvalidRequestError("the body is not JSON") from None
    params = parsed.get("parameter") if isinstance(parsed, dict) else None
    address = next(
        (
            p.get("valueString")
            for p in params or []
            if isinstance(p, dict) and p.get("name") == "address"
        ),
        None,
    )
    if (
        not isinstance(parsed, dict)
        or parsed.get("resourceType") != "Parameters"
        or not isinstance(address, str)
        or not is_address(address)
    ):
        raise InvalidRequestError("the body must be Parameters with an address (valueString)")
    with archive.engine.connect() as conn:
        record = patient_mrn(conn, resource_id)
    if record is None:
        raise NotFoundError(f"no Patient with id {resource_id}")
    unlinked_at = patient_links.unlink(archive.engine, record[0], record[1], address)
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{resource_id}"}},
            {"name": "address", "valueString": address},
            {"name": "unlinkedAt", "valueInstant": fhir_instant(unlinked_at)},
        ],
    }
