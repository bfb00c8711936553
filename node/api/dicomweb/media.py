"""Content negotiation for DICOMweb: parse `Accept` and choose what a WADO-RS response carries.

Pure functions over header strings (RFC 9110 §12.5.1 `Accept`, PS3.18 §8.7 media types and
transfer-syntax parameter). The routers call one `negotiate_*` per resource kind with the header
and, where it matters, the stored Transfer Syntax UID; each returns the representation to send
or raises `NotAcceptableError` (406). A header that cannot be parsed is `InvalidRequestError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import Response

from node.errors import InvalidRequestError, NotAcceptableError
from node.services.syntaxes import (
    ANY_TRANSFER_SYNTAX,
    APPLICATION_DICOM,
    APPLICATION_DICOM_JSON,
    APPLICATION_JSON,
    APPLICATION_OCTET_STREAM,
    COMPRESSED_FRAME_MEDIA,
    EXPLICIT_VR_LITTLE_ENDIAN,
    MEDIA_ALIASES,
    NATIVE_SYNTAXES,
    RENDERED_MEDIA,
    TRANSCODE_TARGETS,
    Representation,
)


@dataclass(frozen=True)
class MediaRange:
    """One element of an `Accept` header: `type/subtype` with parameters and its q-value."""

    type: str
    subtype: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def media_type(self) -> str:
        """`type/subtype`, lower case."""
        return f"{self.type}/{self.subtype}"

    @property
    def multipart(self) -> bool:
        """True for `multipart/related` (PS3.18 §8.7.3.2: the payload is in its parts)."""
        return self.media_type == "multipart/related"

    @property
    def wants_multipart(self) -> bool:
        """Whether to answer multipart: yes unless a single-part type was named (PS3.18 §8.7)."""
        return self.multipart or self.type in ("*", "multipart")

    @property
    def part_type(self) -> str:
        """The media type of the payload: the `type` parameter of a multipart range."""
        if self.multipart:
            inner = self.params.get("type", "*/*").lower()
            return MEDIA_ALIASES.get(inner, inner)
        if self.type == "multipart":
            return "*/*"
        return MEDIA_ALIASES.get(self.media_type, self.media_type)

    @property
    def transfer_syntax(self) -> str | None:
        """The `transfer-syntax` parameter, if any."""
        return self.params.get("transfer-syntax")


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise InvalidRequestError("Accept header has an unterminated quoted string")
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)
    return value


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def _is_token(text: str) -> bool:
    return bool(text) and all(c in _TOKEN_CHARS for c in text.lower())


def _parse_q(value: str) -> float:
    # RFC 9110 §12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
    try:
        q = float(value)
    except ValueError:
        raise InvalidRequestError(f"Accept header has an invalid q-value {value!r}") from None
    if not 0.0 <= q <= 1.0 or len(value) > 5:
        raise InvalidRequestError(f"Accept header has an invalid q-value {value!r}")
    return q


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an `Accept` header into media ranges, most preferred first (RFC 9110 §12.5.1).

    An absent or empty header means `*/*`. Ranges with q=0 are dropped; ties keep header order.
    """
    if header is None or not header.strip():
        return [MediaRange("*", "*")]
    ranges: list[MediaRange] = []
    for element in _split_outside_quotes(header, ","):
        if not element.strip():
            continue  # RFC 9110 §5.6.1: empty list elements are allowed and ignored
        pieces = _split_outside_quotes(element, ";")
        media = pieces[0].strip().lower()
        type_, slash, subtype = media.partition("/")
        if not slash or not _is_token(type_) or not _is_token(subtype):
            raise InvalidRequestError(f"Accept header has an invalid media range {media!r}")
        if type_ == "*" and subtype != "*":
            raise InvalidRequestError(f"Accept header has an invalid media range {media!r}")
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            if not piece.strip():
                continue
            name, eq, value = piece.partition("=")
            name = name.strip().lower()
            if not eq or not _is_token(name):
                raise InvalidRequestError(f"Accept header has an invalid parameter {piece!r}")
            if name == "q":
                q = _parse_q(value.strip())
                # Anything after q is an accept-extension, not a media type parameter.
                break
            params[name] = _unquote(value)
        if q > 0:
            ranges.append(MediaRange(type_, subtype, params, q))
    # sorted() is stable, so equal q-values keep the client's order.
    return sorted(ranges, key=lambda r: -r.q)


def _matches(pattern: str, media_type: str) -> bool:
    p_type, _, p_sub = pattern.partition("/")
    m_type, _, m_sub = media_type.partition("/")
    if p_type == "*":
        return True
    return p_type == m_type and p_sub in ("*", m_sub)


def _decodable(stored_ts: str) -> bool:
    """Whether an installed pixel-data decoder handles `stored_ts`."""
    if stored_ts in NATIVE_SYNTAXES:
        return True
    # Imported lazily: pydicom's pixel machinery is heavy and only needed here.
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return bool(get_decoder(stored_ts).is_available)
    except NotImplementedError:
        return False


def can_transcode(stored_ts: str, target_ts: str) -> bool:
    """Whether `transcode` can turn an instance stored in `stored_ts` into `target_ts`."""
    if target_ts == stored_ts:
        return True
    return target_ts in TRANSCODE_TARGETS and _decodable(stored_ts)


def negotiate_instance(accept: str | None, stored_ts: str) -> Representation:
    """Choose the transfer syntax of a Part-10 instance in a WADO-RS instance response.

    PS3.18 §8.7.3.5.2: `application/dicom` without `transfer-syntax` means Explicit VR Little
    Endian; `transfer-syntax=*` lets the server choose, and this node sends the stored syntax.
    Applies per instance, so a study of mixed syntaxes is negotiated instance by instance.
    """
    for media_range in parse_accept(accept):
        if not _matches(media_range.part_type, APPLICATION_DICOM):
            continue
        wanted = media_range.transfer_syntax
        if wanted is None:
            # A bare wildcard (`*/*`) promises nothing about syntax: send what is stored.
            explicit = media_range.part_type == APPLICATION_DICOM
            wanted = EXPLICIT_VR_LITTLE_ENDIAN if explicit else ANY_TRANSFER_SYNTAX
        if wanted == ANY_TRANSFER_SYNTAX:
            wanted = stored_ts
        if can_transcode(stored_ts, wanted):
            return Representation(APPLICATION_DICOM, wanted, media_range.wants_multipart)
    raise NotAcceptableError(
        f"cannot send an instance stored as {stored_ts} in any transfer syntax that Accept allows"
    )


def negotiate_pixel_data(accept: str | None, stored_ts: str) -> Representation:
    """Choose how frames or pixel bulk data are sent (PS3.18 §8.7.3.3.2, Table 8.7.3-2).

    Native pixel data goes as `application/octet-stream` (Explicit VR Little Endian). A
    compressed instance sends its original frame fragments when the client accepts that
    compressed media type (or octet-stream with `transfer-syntax=*`, as OHIF-class viewers ask),
    otherwise its decoded frames as octet-stream when a decoder is installed.
    """
    compressed_media = COMPRESSED_FRAME_MEDIA.get(stored_ts)
    for media_range in parse_accept(accept):
        part = media_range.part_type
        wanted = media_range.transfer_syntax
        if (
            compressed_media is not None
            and _matches(part, compressed_media)
            and wanted in (None, ANY_TRANSFER_SYNTAX, stored_ts)
        ):
            return Representation(compressed_media, stored_ts, media_range.wants_multipart)
        if not _matches(part, APPLICATION_OCTET_STREAM):
            continue
        if wanted in (ANY_TRANSFER_SYNTAX, stored_ts) and compressed_media is not None:
            return Representation(APPLICATION_OCTET_STREAM, stored_ts, media_range.wants_multipart)
        if wanted in (None, ANY_TRANSFER_SYNTAX, EXPLICIT_VR_LITTLE_ENDIAN) and _decodable(
            stored_ts
        ):
            return Representation(
                APPLICATION_OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, media_range.wants_multipart
            )
    raise NotAcceptableError(
        f"cannot send pixel data stored as {stored_ts} in any media type that Accept allows"
    )


def negotiate_bulkdata(accept: str | None) -> Representation:
    """Choose the media type of a non-pixel bulk data value: octet-stream only (PS3.18 §8.7.3.3)."""
    for media_range in parse_accept(accept):
        wanted = media_range.transfer_syntax
        if _matches(media_range.part_type, APPLICATION_OCTET_STREAM) and wanted in (
            None,
            ANY_TRANSFER_SYNTAX,
            EXPLICIT_VR_LITTLE_ENDIAN,
        ):
            return Representation(
                APPLICATION_OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, media_range.wants_multipart
            )
    raise NotAcceptableError("bulk data is only available as application/octet-stream")


def negotiate_metadata(accept: str | None, what: str = "metadata") -> str:
    """Choose a DICOM JSON media type (PS3.18 §8.7.3.4; XML is not offered).

    Serves metadata, QIDO-RS results and STOW-RS responses alike; `what` names the resource in
    the 406 message.
    """
    for media_range in parse_accept(accept):
        if _matches(media_range.part_type, APPLICATION_DICOM_JSON):
            return APPLICATION_DICOM_JSON
        if media_range.part_type == APPLICATION_JSON:
            return APPLICATION_JSON
    raise NotAcceptableError(f"{what} is only available as application/dicom+json")


def negotiate_rendered(accept: str | None) -> str:
    """Choose the media type of a rendered or thumbnail resource (PS3.18 §8.7.4); JPEG first."""
    for media_range in parse_accept(accept):
        for media_type in RENDERED_MEDIA:
            if _matches(media_range.part_type, media_type):
                return media_type
    raise NotAcceptableError("rendered images are only available as image/jpeg or image/png")


TRUNCATED_WARNING = (
    '299 pacsmesh: "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)


def search_results(results: list[dict[str, Any]], cap: int) -> Response:
    """A QIDO-RS answer: 204 for no match; at most `cap` results, with a Warning when more
    matched (PS3.18 asks an origin server that limits results to say so; the client asks for
    the rest with offset)."""
    if not results:
        # PS3.18 §8.3.4.4.1 (as published): no match is 204 with an empty body. CP-2473 would
        # make it 200; dicomweb-client and viewers accept both.
        return Response(status_code=204)
    headers = {}
    if len(results) > cap:
        results = results[:cap]
        headers["Warning"] = TRUNCATED_WARNING
    body = json.dumps(results, ensure_ascii=False, separators=(",", ":"))
    return Response(body.encode(), media_type="application/dicom+json", headers=headers)
