"""`POST /fhir/Consent`: a patient's signed grant or revocation, verified here, then relayed.

The posted Consent carries the patient's EIP-712 signature in `sourceAttachment`
(contentType application/json, data = base64 of `{"typedData": {...}, "signature": "0x..."}`),
where typedData is the full EIP-712 message of the ConsentRegistry (primaryType Grant or
Revoke; see docs/ledger.md). The signed data is authoritative: the node rebuilds the request
from it, and uses the rest of the resource only for `patient`, which must be the local
Patient the signing address is linked to. Nothing is relayed unless the signature is the
patient's, for this chain and contract, unexpired, and carries the patient's next nonce.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import TYPE_CHECKING, Any, Final

from eth_utils.address import is_address, to_checksum_address
from sqlalchemy import Engine

from ledger.consent import (
    DOMAIN_NAME,
    DOMAIN_VERSION,
    ConsentRequest,
    Grant,
    GrantState,
    Purpose,
    SignedConsent,
    recover_signer,
)
from node.errors import ConflictError, ForbiddenError, InvalidRequestError, NotFoundError
from node.fhir.patients import patient_mrn
from node.fhir.search import reference_id
from node.services.consent_errors import ledger_errors
from node.services.patient_links import linked_record

if TYPE_CHECKING:
    from node.ledger_link import LedgerLink

SIGNATURE_MEDIA_TYPE: Final = "application/json"


class ConsentSignatureError(InvalidRequestError):
    """The consent signature is not the patient's, or not for this chain and contract."""

    fhir_code = "security"


class ConsentExpiredError(InvalidRequestError):
    """The signature's deadline has passed: the patient must sign again."""

    fhir_code = "expired"


class ConsentReplayError(ConflictError):
    """The signature's nonce is not the patient's next one (used already, or out of order)."""


class PatientNotLinkedError(ConflictError):
    """The signer is not linked to the Patient the Consent names."""

    fhir_code = "business-rule"


def consent_body(
    signed: SignedConsent, chain_id: int, verifying_contract: str, patient_id: str
) -> dict[str, Any]:
    """A Consent resource carrying a signed grant or revocation (what a patient app posts)."""
    typed = signed.request.typed_data(chain_id, verifying_contract)
    message = {
        k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in typed["message"].items()
    }
    signature = signed.r + signed.s + bytes([signed.v])
    payload = {"typedData": {**typed, "message": message}, "signature": "0x" + signature.hex()}
    return {
        "resourceType": "Consent",
        "status": "inactive" if signed.request.revoke else "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "sourceAttachment": {
            "contentType": SIGNATURE_MEDIA_TYPE,
            "title": f"EIP-712 {typed['primaryType']} signed by the patient",
            "data": base64.b64encode(json.dumps(payload).encode()).decode(),
        },
    }


def parse_consent_post(
    body: bytes, chain_id: int, verifying_contract: str
) -> tuple[str, SignedConsent]:
    """(Patient id, signed request) from a posted Consent; says what is wrong if malformed."""
    try:
        resource = json.loads(body)
    except ValueError:
        raise InvalidRequestError("the body is not JSON") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Consent":
        raise InvalidRequestError("the body must be a FHIR Consent resource")
    patient = resource.get("patient")
    if not isinstance(patient, dict) or not isinstance(patient.get("reference"), str):
        raise InvalidRequestError("Consent.patient must reference the local Patient (Patient/id)")
    patient_id = reference_id(patient["reference"], "Patient", "Consent.patient")
    attachment = resource.get("sourceAttachment")
    if not isinstance(attachment, dict) or not isinstance(attachment.get("data"), str):
        raise InvalidRequestError(
            "Consent.sourceAttachment.data must carry the patient's signed EIP-712 grant or revoke"
        )
    if attachment.get("contentType") != SIGNATURE_MEDIA_TYPE:
        raise InvalidRequestError(
            f"Consent.sourceAttachment.contentType must be {SIGNATURE_MEDIA_TYPE}"
        )
    try:
        payload = json.loads(base64.b64decode(attachment["data"], validate=True))
        typed, sig_hex = payload["typedData"], payload["signature"]
        signature = bytes.fromhex(str(sig_hex).removeprefix("0x"))
    except (ValueError, binascii.Error, KeyError, TypeError):
        raise InvalidRequestError(
            "sourceAttachment.data must be base64 JSON with typedData and signature"
        ) from None
    if len(signature) != 65:
        raise InvalidRequestError("the signature must be 65 bytes (r, s, v)")
    request = _request(typed, chain_id, verifying_contract)
    v = signature[64] + 27 if signature[64] in (0, 1) else signature[64]
    return patient_id, SignedConsent(request, v, signature[:32], signature[32:64])


def _request(typed: Any, chain_id: int, verifying_contract: str) -> ConsentRequest:
    if not isinstance(typed, dict) or typed.get("primaryType") not in ("Grant", "Revoke"):
        raise InvalidRequestError("typedData.primaryType must be Grant or Revoke")
    domain = typed.get("domain")
    if not isinstance(domain, dict):
        raise InvalidRequestError("typedData.domain is missing")
    if (domain.get("name"), str(domain.get("version"))) != (DOMAIN_NAME, DOMAIN_VERSION):
        raise ConsentSignatureError("the signature is not for the pacsmesh ConsentRegistry")
    contract = str(domain.get("verifyingContract", ""))
    if (
        _int(domain.get("chainId"), "chainId") != chain_id
        or contract.lower() != verifying_contract.lower()
    ):
        raise ConsentSignatureError(
            "the signature was made for another chain or contract than this consortium's"
        )
    m = typed.get("message")
    if not isinstance(m, dict):
        raise InvalidRequestError("typedData.message is missing")
    for name in ("patient", "grantee"):
        if not is_address(m.get(name)):
            raise InvalidRequestError(f"typedData.message.{name} is not an address")
    try:
        purpose = Purpose(_int(m.get("purpose"), "purpose"))
    except ValueError:
        raise InvalidRequestError("typedData.message.purpose must be 0, 1 or 2") from None
    try:
        study = bytes.fromhex(str(m.get("studyHash", "")).removeprefix("0x"))
    except ValueError:
        study = b""
    if len(study) != 32:
        raise InvalidRequestError("typedData.message.studyHash must be 32 bytes of hex")
    revoke = typed["primaryType"] == "Revoke"
    return ConsentRequest(
        patient=to_checksum_address(m["patient"]),
        grantee=to_checksum_address(m["grantee"]),
        purpose=purpose,
        study_hash=study,
        nonce=_int(m.get("nonce"), "nonce"),
        deadline=_int(m.get("deadline"), "deadline"),
        valid_from=0 if revoke else _int(m.get("validFrom"), "validFrom"),
        expires_at=0 if revoke else _int(m.get("expiresAt"), "expiresAt"),
        revoke=revoke,
    )


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequestError(f"typedData {name} must be a number")
    try:
        number = int(value, 0) if isinstance(value, str) else value
    except ValueError:
        raise InvalidRequestError(f"typedData {name} must be a number") from None
    if not 0 <= number < 2**256:
        raise InvalidRequestError(f"typedData {name} is out of range")
    return number


def relay_consent(
    engine: Engine,
    link: LedgerLink,
    patient_id: str,
    signed: SignedConsent,
    only: tuple[str, str] | None = None,
) -> GrantState:
    """Verify a patient's signed grant or revocation and relay it; the grant's new state.

    `only` is the one record the caller may act for (a patient token's own compartment).
    """
    q = signed.request
    with engine.connect() as conn:
        record = patient_mrn(conn, patient_id)
        if record is None or (only is not None and record != only):
            # A patient acting for another record learns nothing about whether it exists.
            if only is not None:
                raise ForbiddenError("a patient may act only for their own record")
            raise NotFoundError(f"no Patient with id {patient_id}")
        linked = linked_record(conn, q.patient)
    if linked is None or (linked.mrn, linked.issuer) != record:
        raise PatientNotLinkedError(
            f"the signing address is not linked to Patient/{patient_id}: link it first "
            "(POST /fhir/Patient/{id}/$link with the patient's signed link)"
        )
    chain_id, contract = link.chain.chain_id, link.deployment.consent_registry
    if recover_signer(signed, chain_id, contract) != q.patient:
        raise ConsentSignatureError("the signature was not made by the patient's key")
    with ledger_errors():
        chain_now = link.chain.block_timestamp()
        if q.deadline < max(chain_now, int(time.time())):
            raise ConsentExpiredError("the signature's deadline has passed: sign again")
        expected = link.consent.nonce(q.patient)
        if q.nonce != expected:
            raise ConsentReplayError(
                "the signature's nonce was already used (replay refused)"
                if q.nonce < expected
                else "the signature's nonce is ahead of the patient's next one"
            )
        link.consent.relay(signed)
        link.cache.sync()  # read-your-writes when the chain needs no confirmations
        cached = next(
            (
                st
                for st in link.cache.states_of(q.patient)
                if (st.grant.grantee, st.grant.purpose, st.grant.study_hash)
                == (q.grantee, q.purpose, q.study_hash)
            ),
            None,
        )
        if q.revoke:
            window = cached.grant if cached is not None else None
            return GrantState(
                window or Grant(q.patient, q.grantee, q.purpose, q.study_hash, 0, 0), True
            )
        # The chain's own record: with a confirmation depth the cache may not show it yet.
        stored = link.consent.grant_of(q.patient, q.grantee, q.purpose, q.study_hash)
    if stored is None:
        raise NotFoundError("the grant was relayed but the chain does not show it")
    return GrantState(stored, False)
