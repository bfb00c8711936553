"""Decoding the capture gateway's inputs: JPEG and PNG files become frames of raw pixels.

Every input is decoded to the pixel formats the multi-frame Secondary Capture IODs hold
(PS3.3 A.8.3-A.8.5): 8-bit grayscale, 16-bit grayscale, or 8-bit RGB. Alpha is dropped (it has
no place in an SC image), palettes are expanded to RGB, 1-bit images become 0/255 grayscale.
Sizes are checked from the file headers before anything is decoded, so an image that would
decode to more than the limit is refused without spending the memory.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageSequence, UnidentifiedImageError

from node.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

# Raw pixel data one capture may decode to. An SC instance is held in memory while it is built
# and stored (a few copies of this), so the limit bounds the gateway's memory per request.
MAX_DECODED_BYTES = 512 << 20

# One frame: (rows, columns) of uint8/uint16, or (rows, columns, 3) of uint8 for RGB.
Pixels = npt.NDArray[Any]
PixelKind = Literal["gray8", "gray16", "rgb"]
_ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG"}
# What Pillow raises on damaged or truncated image data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)


@dataclass(frozen=True)
class DecodedImage:
    """One input file's frames, all of one pixel kind."""

    kind: PixelKind
    frames: list[Pixels]
    source_format: str  # "JPEG" | "PNG"
    encoded_bytes: int
    dpi: float | None  # the resolution the file declares, if any (for digitized film)

    @property
    def rows(self) -> int:
        return int(self.frames[0].shape[0])

    @property
    def columns(self) -> int:
        return int(self.frames[0].shape[1])


def decode_image(data: bytes, position: int) -> DecodedImage:
    """Decode one JPEG or PNG file; `position` (1-based) names it in error messages."""
    label = f"file {position}"
    if not data:
        raise InvalidRequestError(f"{label} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaTypeError(f"{label} is not a JPEG or PNG image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(f"{label} has too many pixels") from exc
    except _DECODE_ERRORS as exc:
        raise InvalidRequestError(
            f"{label} is corrupt or truncated ({type(exc).__name__})"
        ) from exc
    source = _ACCEPTED_FORMATS.get(image.format or "")
    if source is None:
        raise UnsupportedMediaTypeError(
            f"{label} is a {image.format} image; the gateway accepts JPEG and PNG"
        )
    if source == "PNG" and _png_is_deep_colour(data):
        raise UnsupportedMediaTypeError(
            f"{label} is a 16-bit colour PNG; Secondary Capture colour images are 8-bit "
            "(send 8-bit RGB or 16-bit grayscale)"
        )
    # JPEG (and MPO's second view) is one picture; an animated PNG is a sequence of frames.
    count = int(getattr(image, "n_frames", 1)) if source == "PNG" else 1
    width, height = image.size
    if width * height * count * _bytes_per_pixel(image.mode) > MAX_DECODED_BYTES:
        raise PayloadTooLargeError(f"{label} decodes to more than {MAX_DECODED_BYTES} bytes")
    frames: list[Pixels] = []
    kind: PixelKind | None = None
    try:
        for index, frame in enumerate(ImageSequence.Iterator(image)):
            if index >= count:
                break
            frame_kind, pixels = _pixels(frame, label)
            if kind is not None and frame_kind != kind:
                # Animated PNG frames share one colour type, so this is a converter's oddity.
                raise UnsupportedMediaTypeError(f"{label} mixes pixel formats between frames")
            kind = frame_kind
            frames.append(pixels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(f"{label} has too many pixels") from exc
    except _DECODE_ERRORS as exc:
        raise InvalidRequestError(
            f"{label} is corrupt or truncated ({type(exc).__name__})"
        ) from exc
    assert kind is not None
    return DecodedImage(kind, frames, source, len(data), _dpi(image))


def _pixels(frame: Image.Image, label: str) -> tuple[PixelKind, Pixels]:
    mode = frame.mode
    if mode == "L":
        return "gray8", np.asarray(frame, dtype=np.uint8)
    if mode in ("1", "LA", "La"):
        return "gray8", np.asarray(frame.convert("L"), dtype=np.uint8)
    if mode.startswith("I;16"):
        return "gray16", np.asarray(frame).astype("<u2")
    if mode == "I":
        values = np.asarray(frame)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 0xFFFF):
            raise UnsupportedMediaTypeError(f"{label} has grayscale values beyond 16 bits")
        return "gray16", values.astype("<u2")
    if mode in ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        # Alpha is dropped, not composited: the colour channels are what the device captured.
        rgb = frame if mode == "RGB" else frame.convert("RGB")
        return "rgb", np.asarray(rgb, dtype=np.uint8)
    raise UnsupportedMediaTypeError(f"{label} has an unsupported pixel format ({mode})")


def _bytes_per_pixel(mode: str) -> int:
    if mode.startswith("I"):
        return 2
    return 1 if mode in ("1", "L", "LA", "La") else 3


def _png_is_deep_colour(data: bytes) -> bool:
    """True for 16-bit RGB(A) PNGs, which Pillow would silently reduce to 8 bits."""
    # PNG §11.2.2: IHDR is the first chunk; bit depth at byte 24, colour type at byte 25.
    if len(data) < 26 or data[12:16] != b"IHDR":
        return False
    return data[24] == 16 and data[25] in (2, 6)


def _dpi(image: Image.Image) -> float | None:
    dpi = image.info.get("dpi")
    try:
        value = float(dpi[0]) if isinstance(dpi, tuple) else None
    except (TypeError, ValueError):
        return None
    return value if value and value > 1 else None
