"""Where a site's images come from: one record list per source, opened by ``open_source``.

A source string is one of
  ``PATH`` or ``folder:PATH`` — a folder of DICOM files with a ``labels.csv`` (the synth layout);
  ``nih:PATH``                — NIH ChestX-ray14 (PNG + ``Data_Entry_2017.csv``);
  ``chexpert:PATH``           — CheXpert (JPG + ``train.csv``/``valid.csv``);
  ``dicomweb:URL``            — a DICOMweb server (the hospital's own node), labels from a CSV.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from federated.task import FINDINGS


class SourceError(ValueError):
    """A data source is missing, malformed or unreachable; the message says which and why."""


@dataclass(frozen=True)
class Record:
    """One labelled image of a source, loaded lazily.

    ``key`` identifies the image inside its source (file name or SOP Instance UID, never a
    patient name); ``group`` is the unit a train/validation split must not cut (the patient);
    ``load`` returns the image in presentation space: 2-D float32 in [0, 1], 1 = bright.
    """

    key: str
    group: str
    labels: np.ndarray
    load: Callable[[], np.ndarray] = field(compare=False, repr=False)


@dataclass(frozen=True)
class SourceOptions:
    """Options some sources need; each source ignores those it does not use."""

    token: str | None = None  # DICOMweb bearer token (the site's training credential)
    cache_dir: Path | None = None  # DICOMweb: the hospital's own cache of decoded images
    labels: Path | None = None  # DICOMweb: labels CSV keyed by SOP Instance UID
    uncertainty: str = "ignore"  # CheXpert -1 labels: "ignore" (unknown) | "ones" | "zeros"
    timeout_s: float = 30.0  # DICOMweb per-request timeout


def parse_label(value: str | None) -> float:
    """CSV cell to label: "1"/"1.0" -> 1, "0" -> 0, blank or missing -> NaN (unknown)."""
    if value is None or value.strip() == "":
        return math.nan
    try:
        number = float(value)
    except ValueError:
        raise SourceError(f"label value {value!r} is not a number") from None
    if number not in (0.0, 1.0):
        raise SourceError(f"label value {value!r} must be 0, 1 or blank")
    return number


def labels_from_row(row: dict[str, str]) -> np.ndarray:
    """The nine labels of a labels.csv row (a missing finding column is unknown)."""
    return np.array([parse_label(row.get(name)) for name in FINDINGS], dtype=np.float32)


def open_source(source: str, options: SourceOptions | None = None) -> list[Record]:
    """All labelled records of a source string (see the module docstring for the forms)."""
    options = options or SourceOptions()
    kind, _, rest = source.partition(":")
    # A bare path may contain ":" (rare, but e.g. "C:\\data"): only known prefixes dispatch.
    if kind == "nih":
        from federated.sources.nih import nih_records

        return nih_records(Path(rest))
    if kind == "chexpert":
        from federated.sources.chexpert import chexpert_records

        return chexpert_records(Path(rest), uncertainty=options.uncertainty)
    if kind == "dicomweb":
        from federated.sources.dicomweb import dicomweb_records

        return dicomweb_records(rest, options)
    from federated.sources.folder import folder_records

    return folder_records(Path(rest if kind == "folder" else source))
