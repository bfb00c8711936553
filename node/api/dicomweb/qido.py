"""QIDO-RS (PS3.18 §10.6): search for studies, series and instances.

The router only negotiates the media type and hands the query parameters to the query
service; matching rules and validation live in `node.services.query`.
"""

from __future__ import annotations

import json
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from node.api.deps import ArchiveDep
from node.api.dicomweb import media
from node.services import query as query_service
from node.services.archive import Archive
from node.services.metadata import metadata_loader
from node.services.query import Query, QueryLevel, bounded, parse_query, search

router = APIRouter(tags=["QIDO-RS"])


def _run(
    archive: Archive, query: Query, study_uid: str | None, series_uid: str | None
) -> list[dict[str, Any]]:
    root = archive.settings.base_url + "/dicom-web"
    with archive.engine.connect() as conn:
        return search(
            conn,
            query,
            study_uid=study_uid,
            series_uid=series_uid,
            base_url=root,
            load_metadata=metadata_loader(archive, root),
        )


async def _search(
    request: Request,
    archive: Archive,
    level: QueryLevel,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Response:
    # Refuses what is not DICOM JSON; results are always labelled application/dicom+json.
    media.negotiate_metadata(request.headers.get("accept"), "search results")
    query = parse_query(level, request.query_params.multi_items())
    cap = query_service.MAX_RESULTS
    results = await to_thread.run_sync(_run, archive, bounded(query, cap), study_uid, series_uid)
    if not results:
        # PS3.18 §8.3.4.4.1 (as published): no match is 204 with an empty body. CP-2473 would
        # make it 200; dicomweb-client and viewers accept both.
        return Response(status_code=204)
    headers = {}
    if len(results) > cap:
        # More matched than one response carries: say so, as PS3.18 asks of an origin server
        # that limits results; the client asks for the rest with offset.
        results = results[:cap]
        headers["Warning"] = (
            '299 pacsmesh: "The number of results exceeded the maximum supported by the '
            'server. Additional results can be requested."'
        )
    body = json.dumps(results, ensure_ascii=False, separators=(",", ":"))
    return Response(body.encode(), media_type="application/dicom+json", headers=headers)


@router.get("/studies")
async def search_for_studies(request: Request, archive: ArchiveDep) -> Response:
    """Studies matching the query (PS3.18 §10.6)."""
    return await _search(request, archive, QueryLevel.STUDY)


@router.get("/series")
async def search_for_all_series(request: Request, archive: ArchiveDep) -> Response:
    """Series of any study matching the query."""
    return await _search(request, archive, QueryLevel.SERIES)


@router.get("/studies/{study_uid}/series")
async def search_for_series(study_uid: str, request: Request, archive: ArchiveDep) -> Response:
    """Series of one study matching the query."""
    return await _search(request, archive, QueryLevel.SERIES, study_uid)


@router.get("/instances")
async def search_for_all_instances(request: Request, archive: ArchiveDep) -> Response:
    """Instances of any study matching the query."""
    return await _search(request, archive, QueryLevel.INSTANCE)


@router.get("/studies/{study_uid}/instances")
async def search_for_study_instances(
    study_uid: str, request: Request, archive: ArchiveDep
) -> Response:
    """Instances of one study matching the query."""
    return await _search(request, archive, QueryLevel.INSTANCE, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/instances")
async def search_for_instances(
    study_uid: str, series_uid: str, request: Request, archive: ArchiveDep
) -> Response:
    """Instances of one series matching the query."""
    return await _search(request, archive, QueryLevel.INSTANCE, study_uid, series_uid)
