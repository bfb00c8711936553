"""QIDO-RS (PS3.18 §10.6): search for studies, series and instances.

The router only negotiates the media type and hands the query parameters to the query
service; matching rules and validation live in `node.services.query`.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from node.api.deps import ArchiveDep
from node.api.dicomweb import media
from node.api.dicomweb.training import TrainingDep, search_response
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
    training: TrainingDep,
    level: QueryLevel,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Response:
    if training is not None:
        # A training credential: only consented studies, de-identified (node.services.training).
        return await search_response(request, training, level, study_uid, series_uid)
    # Refuses what is not DICOM JSON; results are always labelled application/dicom+json.
    media.negotiate_metadata(request.headers.get("accept"), "search results")
    query = parse_query(level, request.query_params.multi_items())
    cap = query_service.MAX_RESULTS
    results = await to_thread.run_sync(_run, archive, bounded(query, cap), study_uid, series_uid)
    return media.search_results(results, cap)


@router.get("/studies")
async def search_for_studies(
    request: Request, archive: ArchiveDep, training: TrainingDep
) -> Response:
    """Studies matching the query (PS3.18 §10.6)."""
    return await _search(request, archive, training, QueryLevel.STUDY)


@router.get("/series")
async def search_for_all_series(
    request: Request, archive: ArchiveDep, training: TrainingDep
) -> Response:
    """Series of any study matching the query."""
    return await _search(request, archive, training, QueryLevel.SERIES)


@router.get("/studies/{study_uid}/series")
async def search_for_series(
    study_uid: str, request: Request, archive: ArchiveDep, training: TrainingDep
) -> Response:
    """Series of one study matching the query."""
    return await _search(request, archive, training, QueryLevel.SERIES, study_uid)


@router.get("/instances")
async def search_for_all_instances(
    request: Request, archive: ArchiveDep, training: TrainingDep
) -> Response:
    """Instances of any study matching the query."""
    return await _search(request, archive, training, QueryLevel.INSTANCE)


@router.get("/studies/{study_uid}/instances")
async def search_for_study_instances(
    study_uid: str, request: Request, archive: ArchiveDep, training: TrainingDep
) -> Response:
    """Instances of one study matching the query."""
    return await _search(request, archive, training, QueryLevel.INSTANCE, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/instances")
async def search_for_instances(
    study_uid: str, series_uid: str, request: Request, archive: ArchiveDep, training: TrainingDep
) -> Response:
    """Instances of one series matching the query."""
    return await _search(request, archive, training, QueryLevel.INSTANCE, study_uid, series_uid)
