"""WADO-RS (PS3.18 §10.4): retrieve studies, series and instances, and their metadata."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.uid import ExplicitVRLittleEndian

from node.api.deps import ArchiveDep
from node.api.dicomweb.multipart import new_boundary, parse_media_type
from node.errors import NotAcceptableError
from node.services import retrieve
from node.services.archive import Archive
from node.storage.records import InstanceRow

router = APIRouter(tags=["WADO-RS"])

ORIGINAL = "*"


def negotiate_dicom(accept: str | None) -> str:
    """The transfer syntax to send, from Accept (PS3.18 §8.7.3.5): '*' means as stored.

    No transfer-syntax parameter means Explicit VR Little Endian (PS3.18 since 2016c).
    """
    if not accept:
        return ExplicitVRLittleEndian
    for item in accept.split(","):
        media, params = parse_media_type(item)
        if media in ("*/*", "multipart/*", "multipart/related"):
            part = params.get("type", "application/dicom").lower()
            if media == "*/*" or part == "application/dicom":
                return params.get("transfer-syntax", ExplicitVRLittleEndian)
    raise NotAcceptableError(
        'instances are available as multipart/related; type="application/dicom"'
    )


async def _retrieve(
    request: Request,
    archive: Archive,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Response:
    wanted = negotiate_dicom(request.headers.get("accept"))
    rows = await to_thread.run_sync(retrieve.resolve, archive, study_uid, series_uid, sop_uid)
    boundary = new_boundary()
    plans = [_plan(row, wanted) for row in rows]
    headers = {}
    if all(p[1] for p in plans):  # every part as stored: the length is known up front
        total = (
            sum(
                len(_part_head(boundary, ts)) + row.size_bytes + 2
                for row, ts in zip(rows, (p[0] for p in plans), strict=True)
            )
            + len(boundary)
            + 6
        )
        headers["Content-Length"] = str(total)
    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(
        _stream(archive, rows, plans, boundary), media_type=media, headers=headers
    )


def _plan(row: InstanceRow, wanted: str) -> tuple[str, bool]:
    """(transfer syntax of the part, whether it is sent exactly as stored)."""
    if wanted in (ORIGINAL, row.transfer_syntax_uid):
        return row.transfer_syntax_uid, True
    return wanted, False


def _part_head(boundary: str, ts: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={ts}\r\n\r\n".encode()


async def _stream(
    archive: Archive, rows: list[InstanceRow], plans: list[tuple[str, bool]], boundary: str
) -> AsyncIterator[bytes]:
    for row, (ts, as_stored) in zip(rows, plans, strict=True):
        yield _part_head(boundary, ts)
        if as_stored:
            for chunk in retrieve.iter_instance(archive, row):
                yield chunk
        else:
            yield await to_thread.run_sync(_transcoded, archive, row, ts)
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _transcoded(archive: Archive, row: InstanceRow, ts: str) -> bytes:
    from node.services.imaging import transcode

    return transcode(retrieve.load_dataset(archive, row), ts)


@router.get("/studies/{study_uid}")
async def retrieve_study(study_uid: str, request: Request, archive: ArchiveDep) -> Response:
    """All instances of a study."""
    return await _retrieve(request, archive, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}")
async def retrieve_series(
    study_uid: str, series_uid: str, request: Request, archive: ArchiveDep
) -> Response:
    """All instances of a series."""
    return await _retrieve(request, archive, study_uid, series_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}")
async def retrieve_instance(
    study_uid: str, series_uid: str, sop_uid: str, request: Request, archive: ArchiveDep
) -> Response:
    """One instance."""
    return await _retrieve(request, archive, study_uid, series_uid, sop_uid)


# -- metadata (PS3.18 §10.4.1.1.2) ---------------------------------------------------------------


def _metadata(
    archive: Archive, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> list[dict[str, Any]]:
    from node.services.metadata import instance_metadata

    rows = retrieve.resolve(archive, study_uid, series_uid, sop_uid)
    return instance_metadata(archive, rows, archive.settings.base_url + "/dicom-web")


def _check_json_accept(accept: str | None) -> None:
    if not accept:
        return
    for item in accept.split(","):
        media, _ = parse_media_type(item)
        if media in ("application/dicom+json", "application/json", "*/*", "application/*"):
            return
    raise NotAcceptableError("metadata is available as application/dicom+json")


async def _metadata_response(
    request: Request,
    archive: Archive,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Response:
    _check_json_accept(request.headers.get("accept"))
    body = await to_thread.run_sync(_metadata, archive, study_uid, series_uid, sop_uid)
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/dicom+json")


@router.get("/studies/{study_uid}/metadata")
async def study_metadata(study_uid: str, request: Request, archive: ArchiveDep) -> Response:
    """DICOM JSON headers of every instance of a study."""
    return await _metadata_response(request, archive, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/metadata")
async def series_metadata(
    study_uid: str, series_uid: str, request: Request, archive: ArchiveDep
) -> Response:
    """DICOM JSON headers of every instance of a series."""
    return await _metadata_response(request, archive, study_uid, series_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata")
async def instance_metadata(
    study_uid: str, series_uid: str, sop_uid: str, request: Request, archive: ArchiveDep
) -> Response:
    """DICOM JSON header of one instance."""
    return await _metadata_response(request, archive, study_uid, series_uid, sop_uid)
