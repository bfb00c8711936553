"""Rendered images for WADO-RS `rendered` and `thumbnail` (PS3.18 §8.3.5.1, §8.3.3.1).

Greyscale goes through the Modality LUT (rescale or LUT sequence), the VOI (the query's window,
else the image's first window, else its VOI LUT, else the frame's min/max) and MONOCHROME1
inversion, as one 8-bit lookup table indexed by the stored values. Colour is RGB (YBR converted
by the decoder), PALETTE COLOR through its palette. Pillow scales and encodes JPEG or PNG.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi

from node.errors import InvalidRequestError, NotAcceptableError
from node.services.pixels import (
    DECODE_ERRORS_ALL,
    check_frame_numbers,
    decode,
    has_pixel_data,
    short_reason,
)
from node.services.render_params import (
    VOI_FUNCTIONS,
    RenderingOptions,
    Viewport,
    Window,
    parse_quality,
    parse_rendering_query,
    parse_viewport,
    parse_window,
)
from node.services.syntaxes import IMAGE_JPEG, IMAGE_PNG

__all__ = [
    "RenderingOptions",
    "Viewport",
    "Window",
    "parse_quality",
    "parse_rendering_query",
    "parse_viewport",
    "parse_window",
    "render",
    "thumbnail",
    "voi_window",
]

NDArray = np.ndarray[Any, Any]

DEFAULT_JPEG_QUALITY = 90
# A lookup table over every stored value is cheap up to this many entries (4 MiB of float64).
_MAX_TABLE = 1 << 19


def voi_window(values: NDArray, window: Window) -> NDArray:
    """Apply a VOI window to modality values, giving 0..255 floats (PS3.3 C.11.2.1.2)."""
    x = values.astype(np.float64, copy=False)
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        with np.errstate(over="ignore"):
            return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == "LINEAR_EXACT":
        y = ((x - c) / w + 0.5) * 255.0
        return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 255.0, y))
    if w <= 1:
        return np.where(x <= c - 0.5, 0.0, 255.0)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    lower, upper = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    return np.where(x <= lower, 0.0, np.where(x > upper, 255.0, y))


def _to_uint8(y: NDArray) -> NDArray:
    # Round half up, so a value exactly between two grey levels goes to the brighter one.
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def _frame_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The functional group `sequence` item for frame `index` (per-frame, else shared)."""
    for groups, i in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(groups)
        if items is not None and len(items) > i and sequence in items[i]:
            inner = items[i][sequence]
            if len(inner):
                return inner[0]
    return None


def _first(value: Any) -> float:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _image_window(ds: Dataset, index: int) -> Window | None:
    source = ds if "WindowCenter" in ds else _frame_item(ds, index, "FrameVOILUTSequence")
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    try:
        center, width = _first(source.WindowCenter), _first(source.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None  # an unusable stored window falls back to the next VOI source
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function not in VOI_FUNCTIONS:
        function = "LINEAR"
    if width <= 0 or (function == "LINEAR" and width < 1):
        return None
    return Window(center, width, function)


def _modality(ds: Dataset, index: int, values: NDArray) -> NDArray:
    """Stored values to modality values: rescale, or the Modality LUT Sequence (PS3.3 C.11.1)."""
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        return np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
    source: Dataset | None = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else None
    if source is None:
        source = _frame_item(ds, index, "PixelValueTransformationSequence")
    slope = float(source.get("RescaleSlope", 1) or 1) if source is not None else 1.0
    intercept = float(source.get("RescaleIntercept", 0) or 0) if source is not None else 0.0
    return values.astype(np.float64) * slope + intercept


def _grey_table(ds: Dataset, index: int, values: NDArray, window: Window | None) -> NDArray:
    """Map stored values to 0..255 floats through the modality and VOI transforms."""
    modality = _modality(ds, index, values)
    chosen = window or _image_window(ds, index)
    if chosen is not None:
        return voi_window(modality, chosen)
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        out = np.asarray(apply_voi(modality, ds, 0), dtype=np.float64)
        return out * (255.0 / ((1 << bits) - 1))
    lo, hi = float(modality.min()), float(modality.max())
    if hi <= lo:
        return np.zeros_like(modality)
    return (modality - lo) * (255.0 / (hi - lo))


def _grey(
    ds: Dataset,
    index: int,
    arr: NDArray,
    window: Window | None,
    invert: bool,
    viewport: Viewport | None,
) -> NDArray:
    """8-bit greyscale of one frame; integer frames go through one lookup table.

    Min/max of the whole frame define the default window; only the viewport region is mapped.
    """
    shown = _region(arr, viewport) if viewport is not None else arr
    if arr.dtype.kind in "iu" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo < _MAX_TABLE:
            table = _to_uint8(_grey_table(ds, index, np.arange(lo, hi + 1), window))
            if invert:
                table = 255 - table
            if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
                # Index with the stored values themselves: no widened copy of the frame.
                direct = np.zeros(hi + 1, dtype=np.uint8)
                direct[lo:] = table
                return direct[shown]
            return table[shown.astype(np.int64, copy=False) - lo]
    if window is None and _image_window(ds, index) is None and "VOILUTSequence" not in ds:
        # Min/max windowing must see the whole frame, not just the region.
        out = _to_uint8(_grey_table(ds, index, arr, window))
        out = _region(out, viewport) if viewport is not None else out
    else:
        out = _to_uint8(_grey_table(ds, index, shown, window))
    return 255 - out if invert else out


def _colour(ds: Dataset, arr: NDArray, photometric: str, bits_stored: int) -> NDArray:
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(arr, ds))
        if rgb.dtype.itemsize > 1:
            # 16-bit palette entries; a few writers put 8-bit values in them.
            return (rgb >> 8 if rgb.max() > 255 else rgb).astype(np.uint8)
        return rgb
    if arr.dtype.itemsize > 1 or bits_stored > 8:
        shift = max(bits_stored - 8, 0)
        return (arr.astype(np.uint32) >> shift).clip(0, 255).astype(np.uint8)
    return arr.astype(np.uint8, copy=False)


def _region(arr: NDArray, viewport: Viewport) -> NDArray:
    """Crop (and flip, for a negative sw or sh) the source region of a viewport."""
    rows, columns = arr.shape[0], arr.shape[1]
    sw = viewport.sw if viewport.sw is not None else columns - viewport.sx
    sh = viewport.sh if viewport.sh is not None else rows - viewport.sy
    x0, y0 = viewport.sx, viewport.sy
    x1, y1 = min(x0 + abs(sw), columns), min(y0 + abs(sh), rows)
    if x0 >= columns or y0 >= rows or x1 <= x0 or y1 <= y0:
        raise InvalidRequestError("the viewport region lies outside the image")
    out = arr[y0:y1, x0:x1]
    if sw < 0:
        out = out[:, ::-1]
    if sh < 0:
        out = out[::-1]
    return out


def _fit(image: Image.Image, viewport: Viewport) -> Image.Image:
    """Scale to fit inside the viewport, keeping the aspect ratio."""
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode(image: Image.Image, media_type: str, quality: int | None) -> bytes:
    buffer = io.BytesIO()
    if media_type == IMAGE_JPEG:
        image.save(buffer, "JPEG", quality=quality or DEFAULT_JPEG_QUALITY)
    elif media_type == IMAGE_PNG:
        # Level 1: a rendered frame is sent once; speed beats a few percent of size.
        image.save(buffer, "PNG", compress_level=1)
    else:
        raise NotAcceptableError(f"rendered images are not available as {media_type}")
    return buffer.getvalue()


def render(
    ds: Dataset,
    *,
    frame: int = 1,
    media_type: str = IMAGE_JPEG,
    window: Window | tuple[float, float, str] | None = None,
    viewport: Viewport | tuple[int, ...] | None = None,
    quality: int | None = None,
    annotation: Iterable[str] = (),
) -> bytes:
    """One frame rendered to 8-bit JPEG or PNG (PS3.18 §8.3.5.1); annotation is not burnt in."""
    del annotation  # PS3.18 lets the origin server omit annotations; this node does.
    if media_type not in (IMAGE_JPEG, IMAGE_PNG):
        raise NotAcceptableError(f"rendered images are not available as {media_type}")
    if not has_pixel_data(ds):
        raise NotAcceptableError("the instance has no pixel data to render")
    if isinstance(window, tuple):
        window = Window(float(window[0]), float(window[1]), str(window[2]).upper())
    if isinstance(viewport, tuple):
        viewport = Viewport(*viewport)
    check_frame_numbers(ds, [frame])
    decoded = decode(ds, frame - 1)
    arr = decoded.array
    photometric = decoded.photometric_interpretation
    try:
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            # PS3.3 C.8.11.6.1.2: DX-family MONOCHROME1 images also carry Presentation LUT
            # Shape INVERSE; both say the same thing, so they must not cancel out.
            invert = photometric == "MONOCHROME1" or ds.get("PresentationLUTShape") == "INVERSE"
            pixels = _grey(ds, frame - 1, arr, window, invert, viewport)
            image = Image.fromarray(np.ascontiguousarray(pixels), mode="L")
        elif photometric in ("RGB", "PALETTE COLOR"):
            pixels = _colour(ds, arr, photometric, decoded.bits_stored)
            if viewport is not None:
                pixels = _region(pixels, viewport)
            image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
        else:
            raise NotAcceptableError(f"photometric interpretation {photometric} is not rendered")
    except DECODE_ERRORS_ALL as exc:
        raise NotAcceptableError(f"the frame cannot be rendered: {short_reason(exc)}") from exc
    if viewport is not None:
        image = _fit(image, viewport)
    return _encode(image, media_type, quality)


def thumbnail(
    ds: Dataset, size: tuple[int, int] = (128, 128), media_type: str = IMAGE_JPEG
) -> bytes:
    """A small rendering of the first frame fitting inside `size` (PS3.18 §8.3.5.1.5)."""
    return render(ds, frame=1, media_type=media_type, viewport=Viewport(size[0], size[1]))
