"""The multipart/related writer (`node.dicom.multipart.Framing`, `stream_parts`): what WADO-RS,
the training view and the exchange owner send is what a reader gets back, its announced
Content-Length is exact, and work after the last part happens before the body ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from node.dicom.multipart import (
    Framing,
    MultipartParser,
    Part,
    PartData,
    PartEnd,
    PartStart,
    related_boundary,
    stream_parts,
)

content_types = st.sampled_from(
    ["application/dicom", "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"]
)
# Contents in pieces, with the bytes a careless writer or reader trips on.
pieces = st.lists(
    st.one_of(st.binary(max_size=300), st.sampled_from([b"\r\n", b"--", b"\r\n--", b"\r\n\r\n"])),
    max_size=6,
)


def _read(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The parts of a body as a client reads them: (Content-Type, content)."""
    boundary = related_boundary(content_type)
    assert boundary is not None
    parser = MultipartParser(boundary)
    parts: list[tuple[str, bytes]] = []
    for event in parser.feed(body):
        if isinstance(event, PartStart):
            parts.append((event.headers["content-type"], b""))
        elif isinstance(event, PartData):
            parts[-1] = (parts[-1][0], parts[-1][1] + event.data)
        else:
            assert isinstance(event, PartEnd)
    parser.close()
    return parts


async def _collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [piece async for piece in stream]


async def _parts(spec: list[tuple[str, list[bytes]]]) -> AsyncGenerator[Part, None]:
    for content_type, content in spec:
        yield content_type, iter(content)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.tuples(content_types, pieces), max_size=5))
def test_streamed_body_reads_back_and_its_length_is_announced_exactly(
    spec: list[tuple[str, list[bytes]]],
) -> None:
    framing = Framing()
    body = b"".join(asyncio.run(_collect(stream_parts(framing, _parts(spec)))))
    whole = [(content_type, b"".join(content)) for content_type, content in spec]
    assert _read(framing.content_type, body) == whole
    assert len(body) == framing.length((ct, len(data)) for ct, data in whole)
    assert framing.body(whole) == body


def test_work_after_the_last_part_happens_before_the_close_delimiter() -> None:
    framing = Framing()
    sent: list[bytes] = []

    async def parts() -> AsyncGenerator[Part, None]:
        yield "application/dicom", [b"one"]
        yield "application/dicom", [b"two"]
        sent.append(b"<audit>")  # the exchange owner makes its audit event durable here

    async def send() -> None:
        async for piece in stream_parts(framing, parts()):
            sent.append(piece)

    asyncio.run(send())
    audit = sent.index(b"<audit>")
    assert b"".join(sent[:audit]).endswith(b"two\r\n")
    assert sent[audit + 1 :] == [framing.close()]


def test_closing_the_body_midway_closes_its_parts() -> None:
    closed: list[bool] = []

    async def parts() -> AsyncGenerator[Part, None]:
        try:
            yield "application/dicom", [b"one"]
            yield "application/dicom", [b"two"]
        finally:
            closed.append(True)  # the exchange owner records the failed transfer here

    framing = Framing()

    async def client_goes_away() -> None:
        stream = stream_parts(framing, parts())
        assert await anext(stream) == framing.head("application/dicom")
        assert closed == []
        await stream.aclose()
        assert closed == [True]

    asyncio.run(client_goes_away())
