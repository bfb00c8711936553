"""HL7 v2 message syntax: segments, fields, repetitions, components, escape sequences.

HL7 v2.5 Chapter 2 §2.5-2.7. The separators come from MSH-1 and MSH-2 of each message, so a
sender using other characters is understood. Values are decoded on access: \\F\\ \\S\\ \\T\\ \\R\\
\\E\\ become the separators they stand for, \\Xhh..\\ hexadecimal data its bytes, \\.br\\ a line
break; highlighting (\\H\\ \\N\\) and character-set switches (\\C..\\ \\M..\\) are dropped.
Segments may end in CR (the standard) or LF/CRLF (what some interface engines send).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class HL7SyntaxError(ValueError):
    """The bytes are not an HL7 v2 message (no MSH, bad separators)."""


@dataclass(frozen=True)
class Encoding:
    """The separators declared in MSH-1 and MSH-2 (§2.5.4)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


DEFAULT_ENCODING = Encoding()
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def decode_escapes(text: str, enc: Encoding) -> str:
    """Decode the escape sequences of §2.7 in one value."""
    e = enc.escape
    if not e or e not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        end = text.find(e, i + 1) if ch == e else -1
        if end < 0:
            out.append(ch)
            i += 1
            continue
        seq = text[i + 1 : end]
        i = end + 1
        simple = {"F": enc.field, "S": enc.component, "T": enc.subcomponent}
        simple.update({"R": enc.repetition, "E": enc.escape})
        if seq in simple:
            out.append(simple[seq])
        elif seq.startswith("X") and len(seq) % 2 == 1:
            try:
                raw = bytes.fromhex(seq[1:])
            except ValueError:
                out.append(e + seq + e)
                continue
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(raw.decode("latin-1"))
        elif seq == ".br":
            out.append("\n")
        elif seq in ("H", "N") or seq[:1] in ("C", "M") or seq.startswith("."):
            continue  # highlighting, character sets and formatting commands carry no text
        else:
            out.append(e + seq + e)  # not an escape sequence: keep what was sent
    return "".join(out)


def escape(text: str, enc: Encoding = DEFAULT_ENCODING) -> str:
    """Encode a value for sending: separators become escape sequences, line breaks \\.br\\."""
    e = enc.escape
    out = text.replace(e, f"{e}E{e}")
    for ch, code in (
        (enc.field, "F"),
        (enc.component, "S"),
        (enc.subcomponent, "T"),
        (enc.repetition, "R"),
    ):
        out = out.replace(ch, f"{e}{code}{e}")
    out = out.replace("\r\n", "\n").replace("\r", "\n")
    return out.replace("\n", f"{e}.br{e}")


class Segment:
    """One segment; fields are numbered as in the standard (MSH-1 is the field separator)."""

    def __init__(self, text: str, enc: Encoding) -> None:
        self.enc = enc
        parts = text.split(enc.field)
        self.name = parts[0]
        if self.name == "MSH":
            # MSH-1 is the field separator itself, MSH-2 the encoding characters.
            self._fields = ["MSH", enc.field, *parts[1:]]
        else:
            self._fields = parts

    def raw(self, n: int) -> str:
        """Field n as sent (undecoded, all repetitions)."""
        return self._fields[n] if 0 < n < len(self._fields) else ""

    def repetitions(self, n: int) -> list[str]:
        """The repetitions of field n, raw; MSH-2 never repeats."""
        raw = self.raw(n)
        if not raw:
            return []
        if self.name == "MSH" and n <= 2:
            return [raw]
        return raw.split(self.enc.repetition)

    def value(self, n: int, component: int = 1, sub: int = 1, rep: int = 0) -> str:
        """One decoded value: field n, repetition rep, component, subcomponent (1-based)."""
        reps = self.repetitions(n)
        if rep >= len(reps):
            return ""
        return component_of(reps[rep], self.enc, component, sub)

    def has(self, n: int) -> bool:
        """Field n has a value (HL7's "" null counts as present)."""
        return bool(self.raw(n))


def component_of(rep: str, enc: Encoding, component: int = 1, sub: int = 1) -> str:
    """A decoded component (and subcomponent) of one field repetition."""
    if rep == '""':
        return ""  # §2.5.3: "" is an explicit null
    comps = rep.split(enc.component)
    if component > len(comps):
        return ""
    subs = comps[component - 1].split(enc.subcomponent)
    if sub > len(subs):
        return ""
    return decode_escapes(subs[sub - 1], enc).strip()


class Message:
    """A parsed HL7 v2 message."""

    def __init__(self, segments: list[Segment], enc: Encoding) -> None:
        self.segments = segments
        self.enc = enc

    @property
    def msh(self) -> Segment:
        """The header segment."""
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        """The first segment with this name."""
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        """Every segment with this name, in order."""
        return [s for s in self.segments if s.name == name]


def parse(text: str) -> Message:
    """Parse one message; raises HL7SyntaxError when it is not HL7 v2."""
    text = text.strip("\r\n\x00 \t\ufeff")
    if not text.startswith("MSH") or len(text) < 8:
        raise HL7SyntaxError("the message does not start with an MSH segment")
    field_sep = text[3]
    specials = text[4:9].split(field_sep, 1)[0]
    if len(specials) < 4 or len(set(specials[:4] + field_sep)) != 5 or field_sep.isalnum():
        raise HL7SyntaxError("MSH-1/MSH-2 do not declare five distinct separators")
    enc = Encoding(field_sep, specials[0], specials[1], specials[2], specials[3])
    # CR ends a segment (§2.5); only a message with no CR at all is split on LF, so a line
    # break a sender left inside a field (NTE, OBX text) does not start a bogus segment.
    raw_lines = text.split("\r") if "\r" in text else text.split("\n")
    lines = [line.strip("\n") for line in raw_lines if line.strip()]
    segments: list[Segment] = []
    for line in lines:
        seg = Segment(line, enc)
        if not _SEGMENT_ID.match(seg.name):
            raise HL7SyntaxError(f"segment {len(segments) + 1} has no valid segment ID")
        segments.append(seg)
    return Message(segments, enc)
