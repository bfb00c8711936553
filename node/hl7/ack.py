"""Acknowledgements (HL7 v2.5 §2.9 original acknowledgement mode) and their error segment.

MSA-1 is AA (accepted and stored), AE (application error: the content is wrong, nothing was
stored) or AR (rejected: the message itself is unsupported — type, event, version, processing
ID, or a broken header). The ERR segment (§2.15.5) carries ERR-2 the location (segment ID,
sequence, field), ERR-3 the HL7 table 0357 code, ERR-4 the severity and ERR-8 a message for a
person. ERR-8 names fields, never their values: acknowledgements travel through interface
engines and their logs, and must carry no personal data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count

from node.hl7.message import Encoding, escape

# HL7 table 0357, message error condition codes.
ERROR_TEXT = {
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


class HL7Error(Exception):
    """A message is not accepted; carries what the ACK must say."""

    def __init__(
        self,
        code: int,
        message: str,
        location: tuple[str, int, int] | None = None,
        ack_code: str = "AE",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.location = location
        self.ack_code = ack_code


def rejected(code: int, message: str, location: tuple[str, int, int] | None = None) -> HL7Error:
    """An AR: the message itself (its type, event, version or header) is not acceptable."""
    return HL7Error(code, message, location, ack_code="AR")


_control_ids = count(1)


def control_id(prefix: str = "ACK") -> str:
    """A message control ID for messages this node originates (MSH-10, ST up to 20)."""
    return f"{prefix}{datetime.now(UTC):%y%m%d%H%M%S}{next(_control_ids) % 100000:05d}"


def hl7_timestamp(at: datetime | None = None) -> str:
    """DTM with a UTC offset (§2.A.22)."""
    return f"{(at or datetime.now(UTC)).astimezone(UTC):%Y%m%d%H%M%S}+0000"


@dataclass(frozen=True)
class AckContext:
    """What an ACK copies from the message it answers (zero values when it was unreadable)."""

    sending_application: str = ""
    sending_facility: str = ""
    trigger: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = "2.5"


def build_ack(
    ctx: AckContext,
    application: str,
    facility: str,
    ack_code: str = "AA",
    error: HL7Error | None = None,
) -> str:
    """The ACK message text (segments joined by CR), answering ctx."""
    enc = Encoding()
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            escape(application),
            escape(facility),
            escape(ctx.sending_application),
            escape(ctx.sending_facility),
            hl7_timestamp(),
            "",
            f"ACK^{escape(ctx.trigger)}^ACK" if ctx.trigger else "ACK",
            control_id(),
            escape(ctx.processing_id or "P"),
            escape(ctx.version or "2.5"),
        ]
    )
    segments = [msh, f"MSA|{ack_code}|{escape(ctx.control_id)}"]
    if error is not None:
        location = ""
        if error.location is not None:
            seg, seq, field = error.location
            location = f"{seg}^{seq}^{field}"
        code = f"{error.code}^{ERROR_TEXT.get(error.code, 'Error')}^HL70357"
        # ERR-1 (deprecated) empty; ERR-4 severity E; ERR-8 the user message.
        err = ["ERR", "", location, code, "E", "", "", "", escape(error.message, enc)]
        segments.append("|".join(err))
    return "\r".join(segments) + "\r"
