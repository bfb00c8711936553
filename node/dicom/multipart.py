"""Streaming multipart/related (RFC 2387 over RFC 2046 §5.1): STOW-RS bodies, WADO replies, imports.

The parser is push-based and incremental: feed it chunks as they arrive from the socket and it
returns events; it never holds more than one chunk plus a delimiter's length of body bytes.
The writer (`Framing`, `stream_parts`) is the one place replies are framed and their exact
length is computed: WADO-RS, the training view and the exchange owner all send through it.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field

from node.errors import InvalidRequestError, UnsupportedMediaTypeError


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its lower-cased type and parameters (quotes removed)."""
    parts = _split_params(value)
    media = parts[0].strip().lower()
    params: dict[str, str] = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            params[k.strip().lower()] = v
    return media, params


def _split_params(value: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def stow_boundary(content_type: str | None) -> bytes:
    """Check a STOW-RS request's media type (PS3.18 §10.5.1.1) and return its boundary."""
    if not content_type:
        raise UnsupportedMediaTypeError("Content-Type is required: multipart/related")
    media, params = parse_media_type(content_type)
    if media != "multipart/related":
        raise UnsupportedMediaTypeError(
            f"Content-Type {media} is not supported; "
            'use multipart/related; type="application/dicom"'
        )
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaTypeError(
            f'multipart/related type "{part_type}" is not supported; use application/dicom'
        )
    boundary = params.get("boundary")
    if not boundary or len(boundary) > 200:
        raise InvalidRequestError("multipart/related Content-Type has no usable boundary")
    return boundary.encode("latin-1")


def related_boundary(content_type: str | None) -> bytes | None:
    """The boundary of a multipart/related reply's Content-Type; None when it is no such reply."""
    media, params = parse_media_type(content_type or "")
    boundary = params.get("boundary")
    if media != "multipart/related" or not boundary or len(boundary) > 200:
        return None
    return boundary.encode("latin-1")


@dataclass
class PartStart:
    """A new body part begins; its headers (names lower-cased)."""

    headers: dict[str, str]


@dataclass
class PartData:
    """Bytes of the current part."""

    data: bytes


@dataclass
class PartEnd:
    """The current part is complete."""


Event = PartStart | PartData | PartEnd

_PREAMBLE, _HEADERS, _BODY, _AFTER, _DONE = range(5)
MAX_PART_HEADERS = 16 << 10


class MultipartParser:
    """Incremental multipart parser; `feed` returns events, `close` checks completeness."""

    def __init__(self, boundary: bytes) -> None:
        self._dash = b"--" + boundary
        self._delim = b"\r\n--" + boundary
        self._buf = bytearray()
        self._state = _PREAMBLE

    def feed(self, chunk: bytes | bytearray) -> list[Event]:
        """Consume the next body bytes."""
        self._buf += chunk
        events: list[Event] = []
        while True:
            if self._state == _PREAMBLE:
                # The first boundary may open the body or follow a preamble after CRLF.
                if self._buf.startswith(self._dash):
                    del self._buf[: len(self._dash)]
                    self._state = _AFTER
                    continue
                i = self._buf.find(self._delim)
                if i < 0:
                    if len(self._buf) > MAX_PART_HEADERS:
                        raise InvalidRequestError("multipart body has no opening boundary")
                    break
                del self._buf[: i + len(self._delim)]
                self._state = _AFTER
            elif self._state == _AFTER:
                if len(self._buf) < 2:
                    break
                if self._buf.startswith(b"--"):
                    self._state = _DONE
                    self._buf.clear()
                    break
                i = self._buf.find(b"\r\n")
                if i < 0:
                    if len(self._buf) > 256:
                        raise InvalidRequestError("malformed multipart boundary line")
                    break
                if self._buf[:i].strip(b" \t"):
                    raise InvalidRequestError("malformed multipart boundary line")
                del self._buf[: i + 2]
                self._state = _HEADERS
            elif self._state == _HEADERS:
                i = self._buf.find(b"\r\n\r\n")
                if self._buf.startswith(b"\r\n"):
                    i, skip = 0, 2  # a part with no headers at all
                elif i >= 0:
                    skip = 4
                else:
                    if len(self._buf) > MAX_PART_HEADERS:
                        raise InvalidRequestError("multipart part headers are too large")
                    break
                events.append(PartStart(_parse_headers(bytes(self._buf[:i]))))
                del self._buf[: i + skip]
                self._state = _BODY
            elif self._state == _BODY:
                i, decided = self._find_delimiter()
                if i < 0:
                    keep = len(self._delim) - 1
                    if len(self._buf) > keep:
                        events.append(PartData(bytes(self._buf[:-keep])))
                        del self._buf[:-keep]
                    break
                if i:
                    events.append(PartData(bytes(self._buf[:i])))
                    del self._buf[:i]
                if not decided:
                    break
                events.append(PartEnd())
                del self._buf[: len(self._delim)]
                self._state = _AFTER
            else:  # _DONE: an epilogue is allowed and ignored
                self._buf.clear()
                break
        return events

    def _find_delimiter(self) -> tuple[int, bool]:
        """The next delimiter's index (-1: none) and whether it is surely one.

        RFC 2046 §5.1.1: a delimiter is followed by "--" or by optional whitespace and CRLF;
        the same bytes followed by anything else are part content.
        """
        start, n = 0, len(self._delim)
        while True:
            i = self._buf.find(self._delim, start)
            if i < 0:
                return -1, True
            after = bytes(self._buf[i + n : i + n + 2])
            if len(after) < 2:
                return i, False
            if after in (b"--", b"\r\n") or after[:1] in (b" ", b"\t"):
                return i, True
            start = i + 1

    def close(self) -> None:
        """The body ended: it must have ended with the closing boundary."""
        if self._state != _DONE:
            raise InvalidRequestError("multipart body is incomplete: no closing boundary")


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        if not line.strip():
            continue
        if ":" not in line:
            raise InvalidRequestError("malformed multipart part header line")
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return headers


def new_boundary() -> str:
    """A boundary that cannot occur in the parts (random, 32 hex digits)."""
    return secrets.token_hex(16)


# RFC 2046 §5.1.1: the CRLF before a delimiter belongs to the delimiter, not to the part.
PART_END = b"\r\n"

# One outgoing part: its Content-Type and its content, in pieces.
Part = tuple[str, Iterable[bytes]]


@dataclass(frozen=True)
class Framing:
    """How one multipart/related body is framed: its boundary and the type of its parts."""

    part_type: str = "application/dicom"
    boundary: str = field(default_factory=new_boundary)

    @property
    def content_type(self) -> str:
        """The body's Content-Type (RFC 2387 §3.1: `type` names the parts' type)."""
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def head(self, content_type: str) -> bytes:
        """A part's delimiter line and headers: its content follows, then PART_END."""
        return f"--{self.boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()

    def close(self) -> bytes:
        """The close delimiter that ends the body."""
        return f"--{self.boundary}--\r\n".encode()

    def length(self, parts: Iterable[tuple[str, int]]) -> int:
        """The exact length of a body of parts of these Content-Types and sizes."""
        framed = sum(len(self.head(ct)) + size + len(PART_END) for ct, size in parts)
        return framed + len(self.close())

    def body(self, parts: Iterable[tuple[str, bytes]]) -> bytes:
        """A whole body held in memory (small payloads: frames, bulk data, a demo load)."""
        framed = b"".join(self.head(ct) + data + PART_END for ct, data in parts)
        return framed + self.close()


async def stream_parts(framing: Framing, parts: AsyncGenerator[Part, None]) -> AsyncIterator[bytes]:
    """A body sent part by part as `parts` yields them, a piece at a time.

    `parts` is asked for the next part only once everything before has been handed on, so
    work it does after its last part happens before the close delimiter leaves; closing this
    stream (the client went away) closes `parts` too.
    """
    async with aclosing(parts):
        async for content_type, content in parts:
            yield framing.head(content_type)
            for piece in content:
                yield piece
            yield PART_END
    yield framing.close()


async def iter_events(
    stream: AsyncIterator[bytes], boundary: bytes, max_bytes: int
) -> AsyncIterator[Event]:
    """Parse a streamed body; raises PayloadTooLargeError past `max_bytes`."""
    from node.errors import PayloadTooLargeError

    parser = MultipartParser(boundary)
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLargeError(f"request body exceeds the limit of {max_bytes} bytes")
        for event in parser.feed(chunk):
            yield event
    parser.close()
