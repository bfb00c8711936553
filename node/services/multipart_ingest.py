"""Store every instance of a multipart/related body read from another archive, as it streams.

The importer (a hospital's old PACS) and the exchange requester (a peer's transfer) both read a
study this way: each part's bytes flow into the one ingest path (`InstanceIngest`) while the
body arrives, so memory holds one piece and the headers of the instances being stored, never
the study. When the stream breaks, a part that arrived whole before the break is still stored
and reported; a part cut off midway is discarded, nothing of it kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final

from node.dicom.multipart import MultipartParser, PartData, PartEnd, PartStart
from node.services.archive import Archive
from node.services.store import InstanceIngest

# A TLS connection hands over one record (<= 16 KiB) per read: parsing and storing in pieces of
# this size made a 100-instance study's 3,501 parser and store calls about 200
# (benchmarks/RESULTS.md, network retrieval).
PIECE_BYTES: Final = 256 << 10


def ingest_multipart(
    archive: Archive,
    chunks: Iterable[bytes],
    boundary: bytes,
    study_uid: str,
    commit: Callable[[InstanceIngest], None],
    *,
    match_orders: bool = True,
) -> None:
    """Feed each part of the body in `chunks` to an ingest of its own; hand each ingest whose
    part arrived whole to `commit`, which finishes it (and owns its StoreFailure).

    Raises what broke the stream (after the parts whole before it were committed), or
    InvalidRequestError for a body that is not well-formed multipart or lacks its end.
    """
    parser = MultipartParser(boundary)
    ingest: InstanceIngest | None = None
    try:
        for piece in _pieces(chunks):
            for event in parser.feed(piece):
                if isinstance(event, PartData):
                    if ingest is not None:
                        ingest.feed(event.data)
                elif isinstance(event, PartStart):
                    ingest = InstanceIngest(archive, study_uid, match_orders=match_orders)
                elif isinstance(event, PartEnd) and ingest is not None:
                    current, ingest = ingest, None
                    commit(current)
        parser.close()
    finally:
        if ingest is not None:
            ingest.abort()  # a part cut off midway: nothing of it is kept


def _pieces(chunks: Iterable[bytes]) -> Iterator[bytearray]:
    """The stream regrouped into pieces of at least PIECE_BYTES; when reading fails, what was
    read before is yielded first, then the failure is raised."""
    buffer = bytearray()
    try:
        for chunk in chunks:
            buffer += chunk
            if len(buffer) >= PIECE_BYTES:
                piece, buffer = buffer, bytearray()
                yield piece
    except Exception:
        if buffer:
            yield buffer
        raise
    if buffer:
        yield buffer
