"""FHIR HTTP plumbing: media types, OperationOutcome errors, the route class that renders them.

Every /fhir route uses `FhirRoute`, so a NodeError, a bad parameter or an unexpected failure
inside a FHIR interaction becomes an OperationOutcome (R4 §3.1.0.4.1, §2.38) with the error's
`fhir_code`, while the DICOMweb routes keep their own `{"error": ...}` bodies.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from node.errors import NodeError, NotAcceptableError, UnsupportedMediaTypeError

log = logging.getLogger("pacsmesh.fhir")

FHIR_JSON: Final = "application/fhir+json"
_JSON_TYPES: Final = frozenset({FHIR_JSON, "application/json"})
_FORMATS: Final = frozenset({"json", *_JSON_TYPES})
_HTTP_CODES: Final = {404: "not-found", 405: "not-supported", 406: "not-supported"}


class FhirResponse(JSONResponse):
    """A FHIR JSON body (R4 §2.6.1: application/fhir+json)."""

    media_type = FHIR_JSON


def outcome(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """An OperationOutcome response with one error issue."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }
    return FhirResponse(body, status_code=status, headers=headers)


class FhirRoute(APIRoute):
    """An APIRoute whose errors are rendered as OperationOutcome."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fhir_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except NodeError as exc:
                return outcome(exc.http_status, exc.fhir_code, exc.message)
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                    for e in exc.errors()
                )
                return outcome(400, "invalid", f"invalid request: {problems}")
            except StarletteHTTPException as exc:
                code = _HTTP_CODES.get(exc.status_code, "processing")
                return outcome(exc.status_code, code, str(exc.detail), exc.headers)
            except Exception as exc:
                # Never echo the exception: it may carry personal data from the body.
                log.error("unexpected FHIR error: %s", type(exc).__name__, exc_info=exc)
                return outcome(500, "exception", "internal error")

        return fhir_handler


def negotiate(request: Request) -> None:
    """R4 §2.6.1: JSON only; `_format` overrides Accept. Anything else is 406."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        if fmt.split(";")[0].strip().lower() not in _FORMATS:
            raise NotAcceptableError("this server returns JSON only (_format=json)")
        return
    accept = request.headers.get("accept")
    if not accept:
        return
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in _JSON_TYPES or media in ("*/*", "application/*"):
            return
    raise NotAcceptableError("this server returns application/fhir+json or application/json")


def require_json_body(request: Request) -> None:
    """A create or update body must be FHIR JSON."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() not in _JSON_TYPES:
        raise UnsupportedMediaTypeError(
            "the body must be application/fhir+json (or application/json)"
        )


def fhir_base(request: Request) -> str:
    """The FHIR service base URL this node hands out."""
    base: str = request.app.state.settings.base_url
    return f"{base}/fhir"


def lenient(request: Request) -> bool:
    """Whether the client asked for unknown search parameters to be ignored (R4 §3.1.1.4.1)."""
    prefer = request.headers.get("prefer", "")
    return any(p.strip().lower() == "handling=lenient" for p in re.split(r"[;,]", prefer))


def resource_response(resource: dict[str, Any], status: int = 200, **headers: str) -> Response:
    """A resource as FHIR JSON, with its version as ETag when it has one."""
    version = resource.get("meta", {}).get("versionId")
    all_headers = dict(headers)
    if version is not None:
        all_headers["ETag"] = f'W/"{version}"'
    return FhirResponse(resource, status_code=status, headers=all_headers)
