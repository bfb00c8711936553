"""`POST /gateway/captures`: the DICOM capture gateway's HTTP face.

Two request shapes, because capture devices and their integration scripts come in both:
- `multipart/form-data` (RFC 7578), what an HTML form or `curl -F` sends: text fields
  `accession` (or `order`), optional `conversion_type`, `description`, `pixel_spacing`, and one
  or more `file` parts (JPEG or PNG). All files become the frames of one instance.
- a bare `image/jpeg` or `image/png` body with `?accession=...` (and the optional fields as
  query parameters), what a device that can only "POST a file to a URL" sends.

201 answers with the stored UIDs and the WADO-RS URL of the new instance.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from node.api.deps import ArchiveDep
from node.dicom.multipart import PartData, PartEnd, PartStart, iter_events, parse_media_type
from node.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from node.services.capture import store_capture

router = APIRouter(prefix="/gateway", tags=["Capture gateway"])

# Encoded uploads larger than this are refused before decoding (the decoded limit is separate).
MAX_CAPTURE_REQUEST_BYTES = 256 << 20
_TEXT_FIELDS = ("accession", "order", "conversion_type", "description", "pixel_spacing")
_MAX_FIELD_BYTES = 1024
_IMAGE_TYPES = ("image/jpeg", "image/png")


@router.post("/captures", status_code=201)
async def create_capture(request: Request, archive: ArchiveDep) -> JSONResponse:
    """Store JPEG/PNG captures of an order as one DICOM Secondary Capture instance."""
    limit = min(archive.settings.max_request_bytes, MAX_CAPTURE_REQUEST_BYTES)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    media, params = parse_media_type(request.headers.get("content-type") or "")
    fields = {k: v for k, v in request.query_params.items() if k in _TEXT_FIELDS}
    if media == "multipart/form-data":
        boundary = params.get("boundary")
        if not boundary or len(boundary) > 200:
            raise InvalidRequestError("multipart/form-data Content-Type has no usable boundary")
        form, files = await _read_form(request, boundary.encode("latin-1"), limit)
        for key, value in form.items():
            if key in fields and fields[key] != value:
                raise InvalidRequestError(f"{key} differs between the query and the form")
            fields[key] = value
    elif media in _IMAGE_TYPES:
        files = [await _read_body(request, limit)]
    else:
        raise UnsupportedMediaTypeError(
            "send multipart/form-data with file parts, or an image/jpeg or image/png body"
        )
    accession = fields.get("accession") or fields.get("order")
    if not accession:
        raise InvalidRequestError("the accession number of the order is required (accession)")
    spacing = _spacing(fields.get("pixel_spacing"))
    result = await to_thread.run_sync(
        lambda: store_capture(
            archive,
            accession,
            files,
            conversion_type=fields.get("conversion_type") or "WSD",
            description=fields.get("description"),
            pixel_spacing_mm=spacing,
        )
    )
    stored = result.stored
    root = archive.settings.base_url + "/dicom-web"
    study_url = f"{root}/studies/{stored.study_uid}"
    body: dict[str, Any] = {
        "accession_number": result.accession_number,
        "study_uid": stored.study_uid,
        "series_uid": stored.series_uid,
        "sop_instance_uid": stored.sop_instance_uid,
        "sop_class_uid": stored.sop_class_uid,
        "number_of_frames": result.number_of_frames,
        "study_url": study_url,
        "retrieve_url": (
            f"{study_url}/series/{stored.series_uid}/instances/{stored.sop_instance_uid}"
        ),
    }
    return JSONResponse(body, status_code=201, headers={"Location": body["retrieve_url"]})


async def _read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


async def _read_form(
    request: Request, boundary: bytes, limit: int
) -> tuple[dict[str, str], list[bytes]]:
    """Text fields and file parts of a multipart/form-data body (RFC 7578 §4)."""
    fields: dict[str, str] = {}
    files: list[bytes] = []
    name: str | None = None
    is_file = False
    current = bytearray()
    async for event in iter_events(request.stream(), boundary, limit):
        if isinstance(event, PartStart):
            disposition, params = parse_media_type(event.headers.get("content-disposition", ""))
            if disposition != "form-data" or "name" not in params:
                raise InvalidRequestError("every form part needs Content-Disposition: form-data")
            name, current = params["name"], bytearray()
            is_file = "filename" in params or name == "file"
            if not is_file and name not in _TEXT_FIELDS:
                raise InvalidRequestError(f"unknown form field {name[:40]!r}")
        elif isinstance(event, PartData):
            current += event.data
            if not is_file and len(current) > _MAX_FIELD_BYTES:
                raise InvalidRequestError(f"form field {name} is too long")
        elif isinstance(event, PartEnd) and name is not None:
            if is_file:
                files.append(bytes(current))
            else:
                try:
                    fields[name] = current.decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    raise InvalidRequestError(f"form field {name} is not UTF-8") from exc
    if not files:
        raise InvalidRequestError("the form has no file parts")
    return fields, files


def _spacing(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise InvalidRequestError("pixel_spacing must be a number of millimetres") from exc
