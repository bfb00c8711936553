"""Streaming structural validation of DICOM Part-10 files (PS3.10 §7, PS3.5 §7).

The store path never holds a whole object in memory, yet must reject a truncated or malformed
file before acknowledging it. `Part10Scanner` consumes the byte stream once: it reads the File
Meta Information (always Explicit VR Little Endian, PS3.10 §7.1), then walks the data set's
element headers in the negotiated encoding, skipping value bytes by count. It records where
Pixel Data starts (everything before it is the header the index needs) and, at the end, says
whether the stream stopped exactly on an element boundary with every sequence closed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

PREAMBLE = 128
# PS3.5 §7.1.2: VRs with a 2-byte reserved field and a 4-byte length.
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
UNDEFINED = 0xFFFFFFFF


class Part10Error(Exception):
    """The stream is not a well-formed DICOM Part-10 file; `reason` says why."""

    def __init__(self, reason: str, truncated: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.truncated = truncated


@dataclass
class _Context:
    kind: str  # "dataset" (top level or an undefined-length item), "seq", "encaps"
    explicit: bool


@dataclass
class Part10Scanner:
    """Feed bytes in order; ask for the header boundary; call `finish` at the end."""

    max_header_bytes: int = 64 << 20
    transfer_syntax: str | None = None
    dataset_offset: int | None = None  # where the data set starts (after the meta group)
    pixel_offset: int | None = None  # where the first top-level Pixel Data element starts
    _buf: bytearray = field(default_factory=bytearray)
    _buf_start: int = 0  # absolute offset of _buf[0]
    _pos: int = 0  # absolute offset of the next unparsed byte
    _skip: int = 0  # value bytes still to skip
    _stack: list[_Context] = field(default_factory=list)
    _little: bool = True
    _deflated: bool = False

    @property
    def deflated(self) -> bool:
        """Deflated data sets cannot be walked as they stream; the caller buffers them."""
        return self._deflated

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next bytes of the stream."""
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            self._pos += n
            # A pending skip means every buffered byte was consumed: the buffer is empty.
            self._buf_start = self._pos
            data = memoryview(data)[n:]
            if not len(data):
                return
        self._buf += data
        self._parse()

    def finish(self) -> None:
        """Raise `Part10Error` unless the stream ended cleanly."""
        if self.dataset_offset is None:
            raise Part10Error("file ends inside the File Meta Information", truncated=True)
        if self._deflated:
            return
        if self._skip or self._pos != self._buf_start + len(self._buf):
            raise Part10Error("file is truncated: it ends inside a data element", truncated=True)
        if len(self._stack) > 1:
            raise Part10Error("file is truncated: a sequence or item is not closed", truncated=True)

    # -- parsing -----------------------------------------------------------------------------

    def _avail(self) -> memoryview:
        return memoryview(self._buf)[self._pos - self._buf_start :]

    def _compact(self) -> None:
        used = self._pos - self._buf_start
        if used:
            del self._buf[:used]
            self._buf_start = self._pos

    def _parse(self) -> None:
        if self.dataset_offset is None and not self._parse_meta():
            return
        if self._deflated:
            self._buf.clear()
            self._buf_start = self._pos = 0
            return
        while True:
            if self._skip:
                n = min(self._skip, len(self._avail()))
                self._skip -= n
                self._pos += n
                if self._skip:
                    break
            if not self._step():
                break
        self._compact()
        if self.pixel_offset is None and self._pos > self.max_header_bytes:
            raise Part10Error(f"header exceeds {self.max_header_bytes} bytes before Pixel Data")

    def _parse_meta(self) -> bool:
        buf = self._buf
        if len(buf) < PREAMBLE + 4:
            return False
        if bytes(buf[PREAMBLE : PREAMBLE + 4]) != b"DICM":
            raise Part10Error("not a DICOM Part 10 file: no 'DICM' prefix after the preamble")
        pos = PREAMBLE + 4
        ts: str | None = None
        while True:
            if len(buf) < pos + 8:
                return False
            group, elem = struct.unpack_from("<HH", buf, pos)
            if group != 0x0002:
                break
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in LONG_VRS:
                if len(buf) < pos + 12:
                    return False
                length = struct.unpack_from("<I", buf, pos + 8)[0]
                start = pos + 12
            else:
                length = struct.unpack_from("<H", buf, pos + 6)[0]
                start = pos + 8
            if length == UNDEFINED or length > 1 << 16:
                raise Part10Error("malformed File Meta Information")
            if len(buf) < start + length:
                return False
            if elem == 0x0010:
                ts = bytes(buf[start : start + length]).rstrip(b"\x00 ").decode("ascii", "replace")
            pos = start + length
        if not ts:
            raise Part10Error("File Meta Information has no Transfer Syntax UID (0002,0010)")
        self.transfer_syntax = ts
        self.dataset_offset = self._pos = pos
        self._little = ts != ExplicitVRBigEndian
        self._deflated = ts == DeflatedExplicitVRLittleEndian
        self._stack = [_Context("dataset", ts != ImplicitVRLittleEndian)]
        return True

    def _step(self) -> bool:
        """Parse one element or item header; False when more bytes are needed."""
        avail = self._avail()
        if len(avail) < 8:
            return False
        ctx = self._stack[-1]
        end = "<" if self._little else ">"
        group, elem = struct.unpack_from(end + "HH", avail, 0)
        tag = (group << 16) | elem
        if ctx.kind in ("seq", "encaps"):
            length = struct.unpack_from(end + "I", avail, 4)[0]
            self._pos += 8
            if tag == SEQ_END:
                self._stack.pop()
            elif tag != ITEM:
                raise Part10Error(f"malformed sequence: unexpected tag {tag:08X} inside it")
            elif length != UNDEFINED:
                self._skip = length
            elif ctx.kind == "encaps":
                raise Part10Error("malformed encapsulated Pixel Data: item of undefined length")
            else:
                self._stack.append(_Context("dataset", ctx.explicit))
            return True
        if tag == ITEM_END:
            if len(self._stack) == 1:
                raise Part10Error("malformed data set: item delimiter at top level")
            self._pos += 8
            self._stack.pop()
            return True
        if ctx.explicit and self._pos == self.dataset_offset and not bytes(avail[4:6]).isalpha():
            # Some writers label Implicit VR data with an explicit syntax; like pydicom, trust
            # the bytes of the first element over the label.
            ctx.explicit = False
        if ctx.explicit:
            vr = bytes(avail[4:6])
            if vr in LONG_VRS:
                if len(avail) < 12:
                    return False
                length = struct.unpack_from(end + "I", avail, 8)[0]
                header = 12
            elif vr.isalpha() and vr.isupper():
                length = struct.unpack_from(end + "H", avail, 6)[0]
                header = 8
            else:
                raise Part10Error(f"malformed element {tag:08X}: invalid VR")
        else:
            vr = b"SQ"
            length = struct.unpack_from(end + "I", avail, 4)[0]
            header = 8
        if len(self._stack) == 1 and tag in PIXEL_TAGS and self.pixel_offset is None:
            self.pixel_offset = self._pos
        self._pos += header
        if length != UNDEFINED:
            self._skip = length
        elif tag == 0x7FE00010 and len(self._stack) == 1 and vr in (b"OB", b"OW"):
            self._stack.append(_Context("encaps", ctx.explicit))
        elif vr == b"SQ":
            self._stack.append(_Context("seq", ctx.explicit))
        elif vr == b"UN":
            # PS3.5 §6.2.2: an undefined-length UN holds an Implicit VR Little Endian sequence.
            self._stack.append(_Context("seq", False))
        else:
            raise Part10Error(f"malformed element {tag:08X}: undefined length on a non-sequence")
        return True
