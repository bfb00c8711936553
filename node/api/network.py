"""The network API (`/network`): cross-hospital search and retrieve (docs/exchange.md).

Two routers. Peer routes (`/network/peer/...`) answer other members' nodes: every one of them
depends on the caller's client certificate being a consortium member's now (`get_peer`), and
bearer tokens play no part there. User routes (`/network/studies`, `/network/transfers`) are
for this node's clinicians and radiologists (auditors read provenance), with bearer tokens like
every other route. Both translate HTTP into the exchange services and back.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from node.api.audit_http import note_purpose, note_studies
from node.api.deps import ArchiveDep
from node.api.peer_auth import PeerDep, get_peer
from node.auth.policy import Principal
from node.dicom.multipart import Framing, stream_parts
from node.errors import ForbiddenError, InvalidRequestError
from node.ledger_link import ledger_of
from node.services.audit import NodeAudit
from node.services.consent_decisions import BreakGlassReason
from node.services.exchange import (
    BREAK_GLASS_HEADER,
    INSTANCES_HEADER,
    PATIENT_HEADER,
    PURPOSE_HEADER,
    TRANSFER_ID_HEADER,
    NetworkUnavailableError,
    TransferBrokenError,
    parse_address,
    parse_purpose,
    parse_study_uid,
    parse_transfer_id,
    parse_tx_hash,
)
from node.services.exchange_owner import ExchangeOwner, PeerCaller
from node.services.exchange_requester import (
    ExchangeRequester,
    PeerClient,
    RetrieveRequest,
    resolve_patient,
)
from node.services.provenance import transfers
from node.tls.peers import PeerDirectory

peer_router = APIRouter(tags=["network (peers)"], dependencies=[Depends(get_peer)])
user_router = APIRouter(tags=["network"])

_RETRIEVE_FIELDS = frozenset({"patient", "source", "purpose", "breakGlass"})


def _audit(request: Request) -> NodeAudit:
    audit: NodeAudit = request.app.state.audit
    return audit


def _owner(request: Request, archive: ArchiveDep) -> ExchangeOwner:
    settings = archive.settings
    return ExchangeOwner(
        archive,
        _audit(request),
        ledger_of(request.app.state),
        settings.network_break_glass_max_age_seconds,
    )


def _requester(request: Request, archive: ArchiveDep) -> ExchangeRequester:
    link = ledger_of(request.app.state)
    peers: PeerClient | None = getattr(request.app.state, "peer_client", None)
    if peers is None:
        raise NetworkUnavailableError(
            "this node has no consortium TLS identity (tls_cert, tls_key and tls_ca_cert): "
            "it cannot ask other hospitals"
        )
    # open_network makes the client only beside the directory of members.
    directory: PeerDirectory = request.app.state.peer_directory
    return ExchangeRequester(archive, _audit(request), link, peers, directory)


OwnerDep = Annotated[ExchangeOwner, Depends(_owner)]
RequesterDep = Annotated[ExchangeRequester, Depends(_requester)]


def _host(request: Request) -> str | None:
    return request.client.host if request.client else None


def _principal(request: Request) -> Principal | None:
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else None


# -- peer routes (the owner's side) -------------------------------------------------------------


@peer_router.get("/studies")
async def peer_search(
    request: Request,
    peer: PeerDep,
    owner: OwnerDep,
) -> JSONResponse:
    """The calling member's view of a patient here: the studies consent lets it see."""
    params = request.query_params
    patient = parse_address(params.get("patient"), "patient")
    purpose = parse_purpose(params.get("purpose"))
    note_purpose(request, purpose.label)
    caller = PeerCaller(peer, _host(request))
    answer = await to_thread.run_sync(owner.consented_studies, caller, patient, purpose)
    return JSONResponse(answer)


@peer_router.get("/studies/{study_uid}")
async def peer_transfer(
    study_uid: str,
    request: Request,
    peer: PeerDep,
    owner: OwnerDep,
) -> Response:
    """Stream one study to the calling member, if consent (or break-glass) covers it."""
    headers = request.headers
    transfer_id = parse_transfer_id(headers.get(TRANSFER_ID_HEADER))
    study_uid = parse_study_uid(study_uid)
    patient = parse_address(headers.get(PATIENT_HEADER), PATIENT_HEADER)
    purpose = parse_purpose(headers.get(PURPOSE_HEADER))
    note_purpose(request, purpose.label)
    raw_tx = headers.get(BREAK_GLASS_HEADER)
    break_glass_tx = None if raw_tx is None else parse_tx_hash(raw_tx, BREAK_GLASS_HEADER)
    caller = PeerCaller(peer, _host(request))
    plan = await to_thread.run_sync(
        owner.authorize, caller, transfer_id, study_uid, patient, purpose, break_glass_tx
    )
    framing = Framing()
    return StreamingResponse(
        stream_parts(framing, owner.instances(plan)),
        media_type=framing.content_type,
        headers={
            "Content-Length": str(framing.length(plan.part_sizes())),
            INSTANCES_HEADER: str(len(plan.rows)),
            TRANSFER_ID_HEADER: transfer_id,
        },
    )


# -- user routes (the requester's side) ---------------------------------------------------------


@user_router.get("/studies")
async def network_search(
    request: Request,
    archive: ArchiveDep,
    requester: RequesterDep,
) -> JSONResponse:
    """A patient's studies across the consortium, each with its source; who did not answer."""
    params = request.query_params
    value = params.get("patient")
    if not value:
        raise InvalidRequestError("patient is required: a local Patient id or an address")
    purpose = parse_purpose(params.get("purpose", "treatment"))
    note_purpose(request, purpose.label)
    patient = await to_thread.run_sync(resolve_patient, archive, value)
    return JSONResponse(await requester.search(patient, purpose))


@user_router.post("/studies/{study_uid}/$retrieve")
async def network_retrieve(
    study_uid: str,
    request: Request,
    archive: ArchiveDep,
    requester: RequesterDep,
) -> JSONResponse:
    """Copy a study from its owner under consent (or break-glass), with its provenance."""
    body = await _json_object(request)
    study_uid = parse_study_uid(study_uid)
    unknown = sorted(set(body) - _RETRIEVE_FIELDS)
    if unknown:
        raise InvalidRequestError(f"unknown field(s): {', '.join(unknown)}")
    patient_value = body.get("patient")
    if not isinstance(patient_value, str):
        raise InvalidRequestError("patient is required: a local Patient id or an address")
    source = body.get("source")
    source = parse_address(source if isinstance(source, str) else None, "source")
    purpose_value = body.get("purpose", "treatment")
    if not isinstance(purpose_value, str):
        raise InvalidRequestError("purpose must be a string")
    purpose = parse_purpose(purpose_value)
    note_purpose(request, purpose.label)
    reason = _break_glass_reason(body.get("breakGlass"))
    principal = _principal(request)
    if principal is None:
        raise ForbiddenError("a cross-hospital retrieve needs a signed-in clinician")
    patient = await to_thread.run_sync(resolve_patient, archive, patient_value)
    retrieve = RetrieveRequest(study_uid, patient, source, purpose, reason)
    try:
        answer = await requester.retrieve(retrieve, principal, _host(request))
    except TransferBrokenError as exc:
        # The instances that arrived are stored; say which transfer and how many.
        return JSONResponse({"error": exc.message, **exc.details}, status_code=exc.http_status)
    return JSONResponse(answer)


@user_router.get("/transfers")
async def network_transfers(request: Request, archive: ArchiveDep) -> JSONResponse:
    """Provenance of the copies held here (of one study, or the latest transfers)."""
    value = request.query_params.get("study")
    study_uid = None if value is None else parse_study_uid(value)
    if study_uid is not None:
        note_studies(request, [study_uid])

    def read() -> list[dict[str, Any]]:
        with archive.engine.connect() as conn:
            return transfers(conn, study_uid)

    return JSONResponse({"transfers": await to_thread.run_sync(read)})


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > 64 << 10:
        raise InvalidRequestError("the request body is too large for a retrieve request")
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequestError(
            "the body must be a JSON object: {patient, source, purpose, breakGlass?}"
        )
    return body


def _break_glass_reason(value: Any) -> int | None:
    if value is None:
        return None
    reason = value.get("reason") if isinstance(value, dict) else None
    if not isinstance(reason, int) or isinstance(reason, bool):
        known = ", ".join(f"{r.value} ({r.name.lower()})" for r in BreakGlassReason)
        raise InvalidRequestError(f"breakGlass must be {{reason: N}} with N one of {known}")
    return reason
