"""WADO-RS (PS3.18 §10.4): instances, metadata, frames, bulk data, rendered and thumbnails.

The router negotiates representations (`node.api.dicomweb.media`) and frames the response;
decoding and rendering are the image services' (`node.services.imaging`). Instances sent as
stored stream straight from the sealed blob with a known Content-Length; everything that
needs pixels decodes one instance at a time in a worker thread.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.dataset import Dataset

from node.api.deps import ArchiveDep
from node.api.dicomweb import media
from node.api.dicomweb import training as training_api
from node.api.dicomweb.training import TrainingDep
from node.dicom.multipart import Framing, Part, stream_parts
from node.errors import NotFoundError
from node.services import imaging, retrieve
from node.services.archive import Archive
from node.services.metadata import instance_metadata
from node.services.syntaxes import Representation
from node.storage.records import InstanceRow

router = APIRouter(tags=["WADO-RS"])

INSTANCE = "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def _root(archive: Archive) -> str:
    return archive.settings.base_url + "/dicom-web"


# -- instances -----------------------------------------------------------------------------------


async def _retrieve(
    request: Request,
    archive: Archive,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Response:
    accept = request.headers.get("accept")
    rows = await to_thread.run_sync(retrieve.resolve, archive, study_uid, series_uid, sop_uid)
    plans = [media.negotiate_instance(accept, row.transfer_syntax_uid) for row in rows]
    framing = Framing()
    headers = {}
    if all(_as_stored(row, plan) for row, plan in zip(rows, plans, strict=True)):
        # Every part is sent exactly as stored: the length is known before the first byte.
        length = framing.length(
            (plan.content_type, row.size_bytes) for row, plan in zip(rows, plans, strict=True)
        )
        headers["Content-Length"] = str(length)
    return StreamingResponse(
        stream_parts(framing, _instance_parts(archive, rows, plans)),
        media_type=framing.content_type,
        headers=headers,
    )


def _as_stored(row: InstanceRow, plan: Representation) -> bool:
    return plan.transfer_syntax == row.transfer_syntax_uid


async def _instance_parts(
    archive: Archive, rows: list[InstanceRow], plans: list[Representation]
) -> AsyncGenerator[Part, None]:
    for row, plan in zip(rows, plans, strict=True):
        if _as_stored(row, plan):
            yield plan.content_type, retrieve.iter_instance(archive, row)
        else:
            data = await to_thread.run_sync(_transcoded, archive, row, plan.transfer_syntax)
            yield plan.content_type, (data,)


def _transcoded(archive: Archive, row: InstanceRow, ts: str | None) -> bytes:
    assert ts is not None
    return imaging.transcode(retrieve.load_dataset(archive, row), ts)


# A training credential gets the same resources de-identified (node.api.dicomweb.training).


@router.get("/studies/{study_uid}")
async def retrieve_study(
    study_uid: str, request: Request, archive: ArchiveDep, training: TrainingDep
) -> Response:
    """All instances of a study."""
    if training is not None:
        return await training_api.retrieve_response(request, training, study_uid)
    return await _retrieve(request, archive, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}")
async def retrieve_series(
    study_uid: str, series_uid: str, request: Request, archive: ArchiveDep, training: TrainingDep
) -> Response:
    """All instances of a series."""
    if training is not None:
        return await training_api.retrieve_response(request, training, study_uid, series_uid)
    return await _retrieve(request, archive, study_uid, series_uid)


@router.get(INSTANCE)
async def retrieve_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    request: Request,
    archive: ArchiveDep,
    training: TrainingDep,
) -> Response:
    """One instance."""
    if training is not None:
        return await training_api.retrieve_response(
            request, training, study_uid, series_uid, sop_uid
        )
    return await _retrieve(request, archive, study_uid, series_uid, sop_uid)


# -- metadata (PS3.18 §10.4.1.1.2) ---------------------------------------------------------------


async def _metadata(
    request: Request,
    archive: Archive,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Response:
    media_type = media.negotiate_metadata(request.headers.get("accept"))

    def load() -> list[dict[str, Any]]:
        rows = retrieve.resolve(archive, study_uid, series_uid, sop_uid)
        return list(instance_metadata(archive, rows, _root(archive)).values())

    body = await to_thread.run_sync(load)
    return Response(json.dumps(body, separators=(",", ":")), media_type=media_type)


@router.get("/studies/{study_uid}/metadata")
async def study_metadata(
    study_uid: str, request: Request, archive: ArchiveDep, training: TrainingDep
) -> Response:
    """DICOM JSON headers of every instance of a study."""
    if training is not None:
        return await training_api.metadata_response(request, training, study_uid)
    return await _metadata(request, archive, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/metadata")
async def series_metadata(
    study_uid: str, series_uid: str, request: Request, archive: ArchiveDep, training: TrainingDep
) -> Response:
    """DICOM JSON headers of every instance of a series."""
    if training is not None:
        return await training_api.metadata_response(request, training, study_uid, series_uid)
    return await _metadata(request, archive, study_uid, series_uid)


@router.get(INSTANCE + "/metadata")
async def instance_metadata_route(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    request: Request,
    archive: ArchiveDep,
    training: TrainingDep,
) -> Response:
    """DICOM JSON header of one instance."""
    if training is not None:
        return await training_api.metadata_response(
            request, training, study_uid, series_uid, sop_uid
        )
    return await _metadata(request, archive, study_uid, series_uid, sop_uid)


# -- frames and bulk data (PS3.18 §10.4.1.1.3-4) --------------------------------------------------


def _one(archive: Archive, study_uid: str, series_uid: str, sop_uid: str) -> InstanceRow:
    return retrieve.resolve(archive, study_uid, series_uid, sop_uid)[0]


def _payload_response(payloads: list[tuple[bytes, str]], plan: Representation) -> Response:
    if not plan.multipart and len(payloads) == 1:
        data, content_type = payloads[0]
        return Response(data, media_type=content_type)
    framing = Framing(plan.media_type)
    body = framing.body((content_type, data) for data, content_type in payloads)
    return Response(body, media_type=framing.content_type)


async def _with_dataset(archive: Archive, row: InstanceRow, work: Callable[[Dataset], Any]) -> Any:
    def run() -> Any:
        return work(retrieve.load_dataset(archive, row))

    return await to_thread.run_sync(run)


@router.get(INSTANCE + "/frames/{frame_list}")
async def retrieve_frames(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame_list: str,
    request: Request,
    archive: ArchiveDep,
) -> Response:
    """Pixel data of the listed frames (1-based)."""
    numbers = imaging.parse_frame_list(frame_list)
    row = await to_thread.run_sync(_one, archive, study_uid, series_uid, sop_uid)
    plan = media.negotiate_pixel_data(request.headers.get("accept"), row.transfer_syntax_uid)
    payloads = await _with_dataset(archive, row, lambda ds: imaging.frames(ds, numbers, plan))
    return _payload_response(payloads, plan)


@router.get(INSTANCE + "/bulkdata/{path:path}")
async def retrieve_bulkdata(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    path: str,
    request: Request,
    archive: ArchiveDep,
) -> Response:
    """The value a BulkDataURI names (Pixel Data: all frames, as frames are sent)."""
    row = await to_thread.run_sync(_one, archive, study_uid, series_uid, sop_uid)
    accept = request.headers.get("accept")
    if path.strip("/").upper() in ("7FE00010", "7FE00008", "7FE00009"):
        plan = media.negotiate_pixel_data(accept, row.transfer_syntax_uid)
        payloads = await _with_dataset(archive, row, lambda ds: imaging.all_frames(ds, plan))
        return _payload_response(payloads, plan)
    plan = media.negotiate_bulkdata(accept)
    value = await _with_dataset(archive, row, lambda ds: imaging.bulkdata(ds, path))
    return _payload_response([(value, plan.content_type)], plan)


# -- rendered and thumbnails (PS3.18 §10.4.1.1.5, §10.4.1.1.6) ----------------------------------


async def _rendered(
    request: Request,
    archive: Archive,
    row: InstanceRow,
    frame: int,
    thumbnail: bool = False,
) -> Response:
    media_type = media.negotiate_rendered(request.headers.get("accept"))
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "accept"]
    if thumbnail:
        # PS3.18 §8.3.5.1.5: a thumbnail takes a viewport only.
        viewport = dict(params).get("viewport")
        opts = imaging.parse_rendering_query([("viewport", viewport)] if viewport else [])
        size = (opts.viewport.width, opts.viewport.height) if opts.viewport else (128, 128)
        data = await _with_dataset(
            archive, row, lambda ds: imaging.thumbnail(ds, size, media_type=media_type)
        )
    else:
        opts = imaging.parse_rendering_query(params)
        data = await _with_dataset(
            archive,
            row,
            lambda ds: imaging.render(
                ds,
                frame=frame,
                media_type=media_type,
                window=opts.window,
                viewport=opts.viewport,
                quality=opts.quality,
            ),
        )
    return Response(data, media_type=media_type)


def _representative(archive: Archive, study_uid: str, series_uid: str | None = None) -> InstanceRow:
    """The instance that stands for a study or series in a thumbnail: the first with pixels."""
    rows = retrieve.resolve(archive, study_uid, series_uid)
    for row in rows:
        if row.number_of_frames is not None or row.sop_class_uid.startswith(
            "1.2.840.10008.5.1.4.1.1."
        ):
            return row
    raise NotFoundError("no image to render in this study")


@router.get(INSTANCE + "/rendered")
async def rendered_instance(
    study_uid: str, series_uid: str, sop_uid: str, request: Request, archive: ArchiveDep
) -> Response:
    """The instance's first frame as JPEG or PNG."""
    row = await to_thread.run_sync(_one, archive, study_uid, series_uid, sop_uid)
    return await _rendered(request, archive, row, 1)


@router.get(INSTANCE + "/frames/{frame_list}/rendered")
async def rendered_frame(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame_list: str,
    request: Request,
    archive: ArchiveDep,
) -> Response:
    """One frame as JPEG or PNG."""
    numbers = imaging.parse_frame_list(frame_list)
    row = await to_thread.run_sync(_one, archive, study_uid, series_uid, sop_uid)
    return await _rendered(request, archive, row, numbers[0])


@router.get(INSTANCE + "/thumbnail")
async def instance_thumbnail(
    study_uid: str, series_uid: str, sop_uid: str, request: Request, archive: ArchiveDep
) -> Response:
    """A small rendering of the instance."""
    row = await to_thread.run_sync(_one, archive, study_uid, series_uid, sop_uid)
    return await _rendered(request, archive, row, 1, thumbnail=True)


@router.get("/studies/{study_uid}/series/{series_uid}/thumbnail")
async def series_thumbnail(
    study_uid: str, series_uid: str, request: Request, archive: ArchiveDep
) -> Response:
    """A small rendering of the series' representative instance."""
    row = await to_thread.run_sync(_representative, archive, study_uid, series_uid)
    return await _rendered(request, archive, row, 1, thumbnail=True)


@router.get("/studies/{study_uid}/thumbnail")
async def study_thumbnail(study_uid: str, request: Request, archive: ArchiveDep) -> Response:
    """A small rendering of the study's representative instance."""
    row = await to_thread.run_sync(_representative, archive, study_uid)
    return await _rendered(request, archive, row, 1, thumbnail=True)
