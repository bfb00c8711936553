"""DICOMweb for the training credential: the QIDO-RS and WADO-RS routes, de-identified.

The QIDO and WADO routers hand a request here when its principal is bound to AI training
(`TrainingDep` is not None); the rules are `node.services.training`, the de-identified
representations `node.services.training_export`. Each response names, for the audit event,
the stored studies it touched, their patients' ledger addresses and the permitting grants.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from anyio import to_thread
from fastapi import Depends, Request
from fastapi.responses import Response, StreamingResponse

from ledger.audit_events import Purpose
from node.api.audit_http import note_entities
from node.api.deps import get_archive
from node.api.dicomweb import media
from node.auth.deps import request_principal
from node.dicom.multipart import Framing, Part, stream_parts
from node.errors import NotFoundError
from node.ledger_link import ledger_of
from node.services import query as query_service
from node.services.deid import DeidOptions
from node.services.query import QueryLevel, bounded, parse_query, search
from node.services.syntaxes import Representation
from node.services.training import Resolved, TrainingView, audit_entities, load_uid_key
from node.services.training_export import (
    export_instance,
    export_metadata,
    export_results,
    raw_metadata_loader,
)
from node.settings import NodeSettings

_key_lock = threading.Lock()


def _uid_key(state: Any, settings: NodeSettings) -> bytes:
    with _key_lock:
        key: bytes | None = getattr(state, "training_uid_key", None)
        if key is None:
            key = load_uid_key(settings.deid_uid_key_path)
            state.training_uid_key = key
        return key


def training_view(request: Request) -> TrainingView | None:
    """The training view when the caller is a training credential; None for anyone else."""
    principal = request_principal(request)
    if principal is None or principal.purpose != Purpose.AI_TRAINING:
        return None
    state = request.app.state
    link = ledger_of(state, "AI-training consent cannot be checked")
    settings: NodeSettings = state.settings
    options = DeidOptions(
        retain_full_dates=settings.deid_retain_full_dates,
        retain_patient_characteristics=settings.deid_retain_patient_characteristics,
    )
    key = _uid_key(state, settings)
    issuers = getattr(state, "training_issuers", None)
    if issuers is None:
        issuers = state.training_issuers = {}
    return TrainingView(get_archive(request), link.cache, link.account, key, options, issuers)


TrainingDep = Annotated[TrainingView | None, Depends(training_view)]


def _root(view: TrainingView) -> str:
    return view.archive.settings.base_url + "/dicom-web"


def _note(request: Request, view: TrainingView, study_uids: list[str]) -> None:
    studies = [view.visible[s] for s in study_uids if s in view.visible]
    for kind, ref in audit_entities(studies):
        note_entities(request, kind, [ref])


# -- QIDO-RS -------------------------------------------------------------------------------------


async def search_response(
    request: Request,
    view: TrainingView,
    level: QueryLevel,
    study_uid: str | None,
    series_uid: str | None,
) -> Response:
    """A QIDO-RS search over what the credential may see, results de-identified."""
    media.negotiate_metadata(request.headers.get("accept"), "search results")
    query = parse_query(level, request.query_params.multi_items())
    cap = query_service.MAX_RESULTS

    def run() -> tuple[list[dict[str, Any]], list[str]]:
        stored = view.stored_query(query, study_uid, series_uid)
        if stored is None or not view.visible:
            return [], []
        stored_query, stored_study, stored_series = stored
        with view.archive.engine.connect() as conn:
            results = search(
                conn,
                bounded(stored_query, cap),
                study_uid=stored_study,
                series_uid=stored_series,
                base_url=_root(view),
                load_metadata=raw_metadata_loader(view),
                scope=view.scope,
            )
        return export_results(view, results, level, _root(view))

    results, studies = await to_thread.run_sync(run)
    _note(request, view, studies)
    return media.search_results(results, cap)


# -- WADO-RS -------------------------------------------------------------------------------------


async def retrieve_response(
    request: Request,
    view: TrainingView,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Response:
    """De-identified instances, streamed one at a time as multipart/related."""
    accept = request.headers.get("accept")
    resolved = await to_thread.run_sync(view.resolve, study_uid, series_uid, sop_uid)
    plans = [media.negotiate_instance(accept, row.transfer_syntax_uid) for row in resolved.rows]
    _note(request, view, [resolved.study.study_uid])
    framing = Framing()
    return StreamingResponse(
        stream_parts(framing, _parts(view, resolved, plans)), media_type=framing.content_type
    )


async def _parts(
    view: TrainingView, resolved: Resolved, plans: list[Representation]
) -> AsyncGenerator[Part, None]:
    for row, plan in zip(resolved.rows, plans, strict=True):
        ts = plan.transfer_syntax or row.transfer_syntax_uid
        # One instance in memory at a time: read, de-identify, encode, send.
        try:
            data = await to_thread.run_sync(export_instance, view, row, ts)
        except NotFoundError:
            continue  # deleted, or changed to refuse training, since the request resolved
        yield plan.content_type, (data,)


async def metadata_response(
    request: Request,
    view: TrainingView,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Response:
    """De-identified DICOM JSON headers of the addressed instances."""
    media_type = media.negotiate_metadata(request.headers.get("accept"))

    def load() -> tuple[Resolved, list[dict[str, Any]]]:
        resolved = view.resolve(study_uid, series_uid, sop_uid)
        return resolved, export_metadata(view, resolved.rows)

    resolved, body = await to_thread.run_sync(load)
    _note(request, view, [resolved.study.study_uid])
    return Response(json.dumps(body, separators=(",", ":")), media_type=media_type)
