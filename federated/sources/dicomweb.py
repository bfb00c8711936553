"""The hospital's own archive over DICOMweb (PS3.18): QIDO-RS for chest radiographs, WADO-RS.

Query: series with Modality CR or DX and BodyPartExamined CHEST (PS3.18 §10.6, attribute
matching), then their instances. Only instances with a row in the labels CSV (keyed by
``sop_instance_uid``, same columns as the synth ``labels.csv``) become records; FHIR
DiagnosticReports will replace the CSV once the node serves them. A pacsmesh node serves the
training credential de-identified UIDs, so its labels CSV comes from ``pacsmesh node training
labels`` (keyed by the UIDs the credential sees; docs/federated-data.md).

Privacy: retrieved instances are decoded in memory. The only thing ever written to disk is the
decoded, downsampled image (float16 ``.npy``) under ``cache_dir`` — a folder the hospital owns,
created 0700, files 0600, named by a hash of the SOP Instance UID. Without ``cache_dir`` nothing
is written at all. The bearer token goes in the Authorization header only, never in messages.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests
from dicomweb_client.api import DICOMwebClient

from federated.preprocess import ImageDecodeError, presentation_array, resize
from federated.sources import Record, SourceError, SourceOptions, labels_from_row
from federated.sources.folder import read_labels_csv

CHEST_MODALITIES = ("CR", "DX")
CACHE_MAX_SIZE = 1024  # cached images are capped to this size: ample for 224 px models
_TAG = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "SOPInstanceUID": "00080018",
    "PatientID": "00100020",
}


def _value(item: dict[str, Any], keyword: str) -> str | None:
    """First value of an attribute in a DICOM JSON object (PS3.18 F.2), or None."""
    element = item.get(_TAG[keyword]) or {}
    values = element.get("Value") or []
    return str(values[0]) if values else None


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


@contextlib.contextmanager
def _translate_errors(url: str) -> Iterator[None]:
    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = " (check the training token)" if status in (401, 403) else ""
        raise SourceError(f"DICOMweb server {_where(url)} answered HTTP {status}{hint}") from None
    except requests.RequestException as exc:
        raise SourceError(
            f"cannot reach DICOMweb server {_where(url)}: {type(exc).__name__}"
        ) from None


def make_client(url: str, options: SourceOptions) -> DICOMwebClient:
    """A dicomweb-client for the server, with the bearer token if one is given."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise SourceError("a DICOMweb source must be dicomweb:http(s)://host/path")
    headers = {"Authorization": f"Bearer {options.token}"} if options.token else None
    client = DICOMwebClient(url=url, headers=headers, timeout=options.timeout_s)
    # The library's default (5 attempts, 1 s exponential back-off, also on refused
    # connections) takes 30 s to report a site whose node is down; 3 quick tries suffice.
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=250)
    return client


def query_chest_instances(client: DICOMwebClient) -> list[tuple[str, str, str, str | None]]:
    """(study, series, SOP instance UID, patient ID) of every CR/DX chest instance."""
    found = []
    for modality in CHEST_MODALITIES:
        series_list = client.search_for_series(
            search_filters={"Modality": modality, "BodyPartExamined": "CHEST"},
            fields=["PatientID"],
            get_remaining=True,
        )
        for series in series_list:
            study_uid = _value(series, "StudyInstanceUID")
            series_uid = _value(series, "SeriesInstanceUID")
            if not study_uid or not series_uid:
                continue
            patient = _value(series, "PatientID")
            for instance in client.search_for_instances(study_uid, series_uid, get_remaining=True):
                sop_uid = _value(instance, "SOPInstanceUID")
                if sop_uid:
                    found.append((study_uid, series_uid, sop_uid, patient))
    return found


def cache_path(cache_dir: Path, sop_instance_uid: str) -> Path:
    """Where an instance's decoded image lives in the hospital's cache."""
    return cache_dir / f"{hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:40]}.npy"


def _write_cache(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Atomic: a reader never sees half a file; the temp file lives in the cache dir too.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, image)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_instance(
    client: DICOMwebClient,
    url: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    cache_dir: Path | None,
) -> np.ndarray:
    """One instance's presentation-space image, from the cache or by WADO-RS retrieve."""
    cached = cache_path(cache_dir, sop_uid) if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return np.load(cached).astype(np.float32)
    with _translate_errors(url):
        ds = client.retrieve_instance(study_uid, series_uid, sop_uid)
    try:
        image = presentation_array(ds)
    except ImageDecodeError as exc:
        raise SourceError(f"instance from {_where(url)}: {exc}") from exc
    if max(image.shape) > CACHE_MAX_SIZE:
        image = resize(image, CACHE_MAX_SIZE)
    # Quantise like the cache does, so a cached and a fresh load give identical inputs.
    image = image.astype(np.float16)
    if cached is not None:
        _write_cache(cached, image)
    return image.astype(np.float32)


def dicomweb_records(url: str, options: SourceOptions) -> list[Record]:
    """Records for every labelled chest radiograph the server lets this credential see."""
    if options.labels is None:
        raise SourceError("a DICOMweb source needs a labels CSV keyed by sop_instance_uid")
    rows = read_labels_csv(options.labels)
    labels = {
        (row.get("sop_instance_uid") or "").strip(): labels_from_row(row)
        for row in rows
        if (row.get("sop_instance_uid") or "").strip()
    }
    if not labels:
        raise SourceError(f"{options.labels.name} has no sop_instance_uid values")
    client = make_client(url, options)
    with _translate_errors(url):
        instances = query_chest_instances(client)
    records = [
        Record(
            key=sop_uid,
            group=patient or study_uid,
            labels=labels[sop_uid],
            load=functools.partial(
                load_instance, client, url, study_uid, series_uid, sop_uid, options.cache_dir
            ),
        )
        for study_uid, series_uid, sop_uid, patient in instances
        if sop_uid in labels
    ]
    if not records:
        raise SourceError(f"no labelled chest radiograph found at {_where(url)}")
    return records
