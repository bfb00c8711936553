"""STOW-RS (PS3.18 §10.5): store instances sent as multipart/related application/dicom."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from node.api.audit_http import note_studies
from node.api.deps import ArchiveDep
from node.api.dicomweb import media
from node.dicom.multipart import (
    PartData,
    PartEnd,
    PartStart,
    iter_events,
    parse_media_type,
    stow_boundary,
)
from node.errors import InvalidRequestError, PayloadTooLargeError
from node.services.archive import Archive
from node.services.delete import delete_by_sop_uids
from node.services.store import (
    REASON_NOT_DICOM,
    InstanceIngest,
    StoredInstance,
    StoreFailure,
)

router = APIRouter(tags=["STOW-RS"])


@router.post("/studies")
async def store_instances(request: Request, archive: ArchiveDep) -> JSONResponse:
    """Store instances of any studies."""
    return await _stow(request, archive, None)


@router.post("/studies/{study_uid}")
async def store_study_instances(
    study_uid: str, request: Request, archive: ArchiveDep
) -> JSONResponse:
    """Store instances that must all belong to one study."""
    return await _stow(request, archive, study_uid)


async def _stow(request: Request, archive: Archive, study_uid: str | None) -> JSONResponse:
    settings = archive.settings
    boundary = stow_boundary(request.headers.get("content-type"))
    media.negotiate_metadata(request.headers.get("accept"), "the store response")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError("Content-Length is not a number")
        if int(declared) > settings.max_request_bytes:
            raise PayloadTooLargeError(
                f"request body exceeds the limit of {settings.max_request_bytes} bytes"
            )
    stored: list[StoredInstance] = []
    failed: list[StoreFailure] = []
    ingest: InstanceIngest | None = None
    parts = 0
    try:
        async for event in iter_events(request.stream(), boundary, settings.max_request_bytes):
            if isinstance(event, PartData):
                if ingest is not None:
                    ingest.feed(event.data)
            elif isinstance(event, PartStart):
                parts += 1
                if parts > settings.max_instances_per_request:
                    raise PayloadTooLargeError(
                        f"request has more than {settings.max_instances_per_request} instances"
                    )
                part_type = event.headers.get("content-type")
                if part_type and parse_media_type(part_type)[0] != "application/dicom":
                    failed.append(StoreFailure(REASON_NOT_DICOM, "part is not application/dicom"))
                    ingest = None
                else:
                    ingest = InstanceIngest(archive, study_uid)
            elif isinstance(event, PartEnd) and ingest is not None:
                current, ingest = ingest, None
                try:
                    stored.append(await to_thread.run_sync(current.finish))
                except StoreFailure as failure:
                    failed.append(failure)
    except BaseException:
        # A refused request (bad framing, over a limit, client gone) stores nothing at all.
        if ingest is not None:
            ingest.abort()
        created = [s.sop_instance_uid for s in stored if s.created]
        if created:
            await to_thread.run_sync(delete_by_sop_uids, archive, created)
        raise
    if not parts:
        raise InvalidRequestError("multipart body contains no parts")
    note_studies(request, {s.study_uid for s in stored})  # for the request's audit event
    body = _response(stored, failed, archive.settings.base_url + "/dicom-web")
    status = 200 if not failed else 202 if stored else 409
    return JSONResponse(body, status_code=status, media_type="application/dicom+json")


def _attr(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def _response(
    stored: list[StoredInstance], failed: list[StoreFailure], root: str
) -> dict[str, Any]:
    """PS3.18 §10.5.3 Store Instances Response Module (DICOM JSON)."""
    body: dict[str, Any] = {}
    studies = {s.study_uid for s in stored}
    if len(studies) == 1:
        body["00081190"] = _attr("UR", f"{root}/studies/{next(iter(studies))}")
    if stored:
        body["00081199"] = _attr(
            "SQ",
            *[
                {
                    "00081150": _attr("UI", s.sop_class_uid),
                    "00081155": _attr("UI", s.sop_instance_uid),
                    "00081190": _attr(
                        "UR",
                        f"{root}/studies/{s.study_uid}/series/{s.series_uid}"
                        f"/instances/{s.sop_instance_uid}",
                    ),
                }
                for s in stored
            ],
        )
    if failed:
        items = []
        for f in failed:
            item: dict[str, Any] = {
                "00081197": _attr("US", f.code),
                "00000902": _attr("LO", f.reason[:64]),
            }
            if f.sop_class_uid:
                item["00081150"] = _attr("UI", str(f.sop_class_uid))
            if f.sop_instance_uid:
                item["00081155"] = _attr("UI", str(f.sop_instance_uid))
            items.append(item)
        body["00081198"] = _attr("SQ", *items)
    return body
