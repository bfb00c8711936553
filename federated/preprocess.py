"""From stored pixels to model input: modality/VOI LUT, MONOCHROME1 inversion, resize, normalise.

Every source (DICOM, PNG, JPG) ends in ``to_model_input``, so a model sees the same scale no
matter which hospital or public dataset the image came from.
"""

from __future__ import annotations

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut


class ImageDecodeError(ValueError):
    """Raised when an image cannot be turned into a 2-D greyscale array."""


def presentation_array(ds: pydicom.Dataset) -> np.ndarray:
    """Return the image as displayed: float32 in [0, 1] with 1 = bright (bone, MONOCHROME2 sense).

    Applies the modality LUT / rescale (PS3.3 C.11.1), then the VOI LUT or the first Window
    Center/Width (PS3.3 C.11.2), and inverts MONOCHROME1 (PS3.3 C.7.6.3.1.2: minimum value is
    white) so every site's images share one polarity.
    """
    if "PixelData" not in ds:
        raise ImageDecodeError("the dataset has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageDecodeError(f"expected a greyscale image, got {photometric}")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing decoders and bad data
        raise ImageDecodeError(f"cannot decode pixel data: {type(exc).__name__}") from exc
    if raw.ndim == 3:  # multi-frame: a chest radiograph is one frame; take the first
        raw = raw[0]
    if raw.ndim != 2:
        raise ImageDecodeError(f"expected a 2-D image, got shape {raw.shape}")
    values = apply_modality_lut(raw, ds)
    if "VOILUTSequence" in ds:
        # A VOI LUT is indexed by the (integer) modality output; pydicom refuses floats.
        values = np.round(values).astype(np.int64) if values.dtype.kind == "f" else values
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values.astype(np.float64), ds, index=0)
    values = np.asarray(values, dtype=np.float64)
    out = _rescale01(values)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window (PS3.3 C.11.2.1.2.1) mapped to [0, 1]; pixels outside are clipped."""
    if width < 1:
        raise ImageDecodeError(f"window width must be at least 1, got {width}")
    low = center - 0.5 - (width - 1) / 2
    return np.clip((values - low) / (width - 1), 0.0, 1.0).astype(np.float32)


def image_array(img: Image.Image) -> np.ndarray:
    """A PIL image (PNG/JPG from a public dataset) as float32 greyscale in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        maxval = 65535.0 if arr.max() > 255 else 255.0
        return (arr / maxval).astype(np.float32)
    if img.mode != "L":
        img = img.convert("L")
    return (np.asarray(img, dtype=np.float32) / 255.0).astype(np.float32)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D float array to size x size (area-averaging when shrinking)."""
    if img.ndim != 2:
        raise ImageDecodeError(f"expected a 2-D image, got shape {img.shape}")
    if img.shape == (size, size):
        return img.astype(np.float32, copy=False)
    pil = Image.fromarray(img.astype(np.float32), mode="F")
    shrinking = img.shape[0] > size or img.shape[1] > size
    # BOX averages every source pixel when shrinking, so small dense findings are not aliased.
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(pil.resize((size, size), method), dtype=np.float32)


def normalize(img: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation per image (a flat image becomes all zeros)."""
    img = img.astype(np.float32)
    std = float(img.std())
    if std < 1e-6:
        return np.zeros_like(img)
    return ((img - float(img.mean())) / std).astype(np.float32)


def to_model_input(img: np.ndarray, size: int) -> np.ndarray:
    """Resize then normalise a presentation-space image: the model's (size, size) float32 input."""
    return normalize(resize(img, size))


def dataset_to_input(ds: pydicom.Dataset, size: int) -> np.ndarray:
    """A DICOM dataset straight to model input (size, size)."""
    return to_model_input(presentation_array(ds), size)


def _rescale01(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return np.zeros_like(values)
    return (values - low) / (high - low)
