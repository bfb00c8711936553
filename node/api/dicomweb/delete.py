"""DELETE of studies, series and instances (the DICOMweb extension most archives offer)."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import Response

from node.api.deps import ArchiveDep
from node.services.delete import delete_instances

router = APIRouter(tags=["DELETE"])


@router.delete("/studies/{study_uid}", status_code=204)
async def delete_study(study_uid: str, archive: ArchiveDep) -> Response:
    """Delete a study and shred its key."""
    await to_thread.run_sync(delete_instances, archive, study_uid)
    return Response(status_code=204)


@router.delete("/studies/{study_uid}/series/{series_uid}", status_code=204)
async def delete_series(study_uid: str, series_uid: str, archive: ArchiveDep) -> Response:
    """Delete a series (and the study's key if it was the last series)."""
    await to_thread.run_sync(delete_instances, archive, study_uid, series_uid)
    return Response(status_code=204)


@router.delete("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}", status_code=204)
async def delete_instance(
    study_uid: str, series_uid: str, sop_uid: str, archive: ArchiveDep
) -> Response:
    """Delete one instance."""
    await to_thread.run_sync(delete_instances, archive, study_uid, series_uid, sop_uid)
    return Response(status_code=204)
