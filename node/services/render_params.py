"""Rendering parameters of WADO-RS rendered resources (PS3.18 §8.3.5.1, Table 8.3.5-1).

The query parameters `window`, `viewport`, `quality`, `annotation` and `iccprofile`, parsed
into values `render` takes. Pure: every malformed value is an InvalidRequestError (400).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from node.errors import InvalidRequestError

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
MAX_VIEWPORT_SIDE = 8192


@dataclass(frozen=True)
class Window:
    """A VOI window: center, width and function (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    """Viewport size and optional source region (PS3.18 §8.3.5.1.3 `viewport`)."""

    width: int
    height: int
    sx: int = 0
    sy: int = 0
    sw: int | None = None
    sh: int | None = None


@dataclass(frozen=True)
class RenderingOptions:
    """The parsed rendering query parameters (PS3.18 Table 8.3.5-1)."""

    window: Window | None = None
    viewport: Viewport | None = None
    quality: int | None = None
    annotation: tuple[str, ...] = ()


_QUERY_KEYS = frozenset({"window", "viewport", "quality", "annotation", "iccprofile", "charset"})
_ICC_VALUES = frozenset({"no", "yes", "srgb", "adobergb", "rommrgb"})


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequestError(f"{what} {text[:20]!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidRequestError(f"{what} must be finite")
    return value


def _integer(text: str, what: str) -> int:
    text = text.strip()
    body = text[1:] if text[:1] in "+-" else text
    if not body.isdigit() or not body.isascii() or len(body) > 9:
        raise InvalidRequestError(f"{what} {text[:20]!r} is not an integer")
    return int(text)


def parse_window(text: str) -> Window:
    """Parse `window=center,width[,function]` (PS3.18 §8.3.5.1.4)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 3):
        raise InvalidRequestError("window must be center,width,function")
    center = _number(parts[0], "window center")
    width = _number(parts[1], "window width")
    function = parts[2].upper().replace("-", "_") if len(parts) == 3 and parts[2] else "LINEAR"
    if function not in VOI_FUNCTIONS:
        raise InvalidRequestError("window function must be linear, linear-exact or sigmoid")
    if (function == "LINEAR" and width < 1) or width <= 0:
        # PS3.3 C.11.2.1.2.1: LINEAR needs a width of at least 1, the others a positive one.
        raise InvalidRequestError("window width is too small for its function")
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    """Parse `viewport=vw,vh[,sx,sy,sw,sh]` (PS3.18 §8.3.5.1.3); empty region values default."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 6):
        raise InvalidRequestError("viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
    vw, vh = (_integer(part, "viewport size") for part in parts[:2])
    if not (0 < vw <= MAX_VIEWPORT_SIDE and 0 < vh <= MAX_VIEWPORT_SIDE):
        raise InvalidRequestError(f"viewport width and height must be 1 to {MAX_VIEWPORT_SIDE}")
    if len(parts) == 2:
        return Viewport(vw, vh)
    sx, sy, sw, sh = (_integer(p, "viewport region") if p else None for p in parts[2:])
    if (sx is not None and sx < 0) or (sy is not None and sy < 0) or sw == 0 or sh == 0:
        raise InvalidRequestError("viewport region must start inside the image and not be empty")
    return Viewport(vw, vh, sx or 0, sy or 0, sw, sh)


def parse_quality(text: str) -> int:
    """Parse `quality=1..100` (PS3.18 §8.3.5.1.2)."""
    quality = _integer(text, "quality")
    if not 1 <= quality <= 100:
        raise InvalidRequestError("quality must be 1 to 100")
    return quality


def parse_rendering_query(
    params: Mapping[str, str] | Iterable[tuple[str, str]],
) -> RenderingOptions:
    """Parse the query of a rendered or thumbnail request; unknown or repeated keys are 400."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    seen: dict[str, str] = {}
    for key, value in items:
        if key not in _QUERY_KEYS:
            raise InvalidRequestError(f"unknown query parameter {key[:40]!r} for rendered images")
        if key in seen:
            raise InvalidRequestError(f"query parameter {key!r} is repeated")
        seen[key] = value
    iccprofile = seen.get("iccprofile", "no").lower()
    if iccprofile not in _ICC_VALUES:
        raise InvalidRequestError("iccprofile must be no, yes, srgb, adobergb or rommrgb")
    annotation = tuple(a.strip().lower() for a in seen.get("annotation", "").split(",") if a)
    if any(a not in ("patient", "technique") for a in annotation):
        raise InvalidRequestError("annotation must be patient and/or technique")
    return RenderingOptions(
        window=parse_window(seen["window"]) if "window" in seen else None,
        viewport=parse_viewport(seen["viewport"]) if "viewport" in seen else None,
        quality=parse_quality(seen["quality"]) if "quality" in seen else None,
        annotation=annotation,
    )
