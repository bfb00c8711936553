"""Import every study of an existing DICOMweb archive (the hospital's current PACS) into the node.

Studies are found with QIDO-RS (PS3.18 §10.6, paged with `limit`/`offset`) through
dicomweb-client; each study is then retrieved with WADO-RS (PS3.18 §10.4.1.1.1) asking for the
stored transfer syntax (`transfer-syntax=*`, PS3.18 §8.7.3.5.2), and the multipart reply is
parsed as it streams (`ingest_multipart`): every part's bytes flow straight into the one ingest
path (`InstanceIngest`), so a study of any size is copied in bounded memory and every instance
arrives byte-identical. A reply that breaks off keeps (and counts) the instances that arrived
whole and reports the study as failed. Re-running an import is safe: the store's duplicate
policy turns an identical instance into a no-op, counted as "already present".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from node.dicom.multipart import parse_media_type, related_boundary
from node.errors import NodeError
from node.services.archive import Archive
from node.services.multipart_ingest import ingest_multipart
from node.services.store import InstanceIngest, StoreFailure

PAGE = 100
STUDY_UID_TAG = "0020000D"
ORIGINAL_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DEFAULT_SYNTAX = 'multipart/related; type="application/dicom"'


@dataclass(frozen=True)
class ImportFailure:
    """One study or instance that did not come across, and why (no personal data)."""

    study_uid: str | None
    sop_instance_uid: str | None
    reason: str

    def as_dict(self) -> dict[str, str | None]:
        """JSON form."""
        return {
            "study_uid": self.study_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "reason": self.reason,
        }


@dataclass
class ImportReport:
    """What an import found, copied, skipped and could not copy."""

    source: str
    studies_found: int = 0
    studies_complete: int = 0
    instances_stored: int = 0
    instances_already_present: int = 0
    failures: list[ImportFailure] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """How many studies or instances failed (0 when the import is complete)."""
        return len(self.failures)

    def as_dict(self) -> dict[str, Any]:
        """JSON form, as `pacsmesh node import` prints it."""
        return {
            "source": self.source,
            "studies_found": self.studies_found,
            "studies_complete": self.studies_complete,
            "instances_stored": self.instances_stored,
            "instances_already_present": self.instances_already_present,
            "failed": self.failed,
            "failures": [f.as_dict() for f in self.failures],
        }


class ImportSourceError(NodeError):
    """The source archive could not be searched or read."""

    http_status = 502
    fhir_code = "transient"


def import_from_dicomweb(archive: Archive, url: str, token: str | None = None) -> ImportReport:
    """Copy every study the DICOMweb root `url` lists into `archive`."""
    root = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    report = ImportReport(source=root)
    try:
        study_uids = list(_search_studies(root, headers))
    except ImportSourceError as exc:
        report.failures.append(ImportFailure(None, None, exc.message))
        return report
    report.studies_found = len(study_uids)
    with httpx.Client(headers=headers, timeout=httpx.Timeout(60.0, connect=10.0)) as client:
        for study_uid in study_uids:
            before = report.failed
            try:
                _import_study(archive, client, root, study_uid, report)
            except (ImportSourceError, NodeError) as exc:
                report.failures.append(ImportFailure(study_uid, None, exc.message))
            except httpx.HTTPError as exc:
                report.failures.append(
                    ImportFailure(study_uid, None, f"retrieving the study failed: {_what(exc)}")
                )
            if report.failed == before:
                report.studies_complete += 1
    return report


def _search_studies(root: str, headers: dict[str, str]) -> Iterator[str]:
    """Every Study Instance UID the source lists, page by page."""
    import requests
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(root, headers=headers or None, timeout=60)
    # A few quick retries for a busy source (429/503...), not dicomweb-client's 30-second ladder.
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=200)
    seen: set[str] = set()
    offset = 0
    while True:
        try:
            page = client.search_for_studies(offset=offset, limit=PAGE, fields=["StudyInstanceUID"])
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise ImportSourceError(f"searching the source failed: HTTP {status}") from exc
        except requests.RequestException as exc:
            raise ImportSourceError(f"searching the source failed: {type(exc).__name__}") from exc
        fresh = []
        for study in page:
            values = study.get(STUDY_UID_TAG, {}).get("Value") or []
            if values and values[0] not in seen:
                seen.add(values[0])
                fresh.append(values[0])
        yield from fresh
        # A source that ignores `offset` repeats its first page: stop when nothing is new.
        if len(page) < PAGE or not fresh:
            return
        offset += len(page)


def _import_study(
    archive: Archive, client: httpx.Client, root: str, study_uid: str, report: ImportReport
) -> None:
    """Retrieve one study as stored and feed each part through the store path as it streams."""
    url = f"{root}/studies/{study_uid}"
    for accept in (ORIGINAL_SYNTAX, DEFAULT_SYNTAX):
        with client.stream("GET", url, headers={"Accept": accept}) as response:
            if response.status_code in (400, 406) and accept == ORIGINAL_SYNTAX:
                continue  # the source cannot send "as stored"; take its default syntax
            if response.status_code != 200:
                raise ImportSourceError(f"retrieving the study failed: HTTP {response.status_code}")
            content_type = response.headers.get("content-type")
            boundary = related_boundary(content_type)
            if boundary is None:
                media = parse_media_type(content_type or "")[0]
                raise ImportSourceError(f"the source answered {media or 'nothing'}, not multipart")
            # iter_bytes() without a chunk size buffers nothing of its own: every byte read
            # before a break reaches the parser, and an instance whole by then is kept.
            ingest_multipart(
                archive,
                response.iter_bytes(),
                boundary,
                study_uid,
                lambda ingest: _finish(ingest, study_uid, report),
            )
            return


def _finish(ingest: InstanceIngest, study_uid: str, report: ImportReport) -> None:
    try:
        stored = ingest.finish()
    except StoreFailure as failure:
        report.failures.append(
            ImportFailure(
                study_uid, failure.sop_instance_uid, f"{failure.code:04X} {failure.reason}"
            )
        )
        return
    if stored.created:
        report.instances_stored += 1
    else:
        report.instances_already_present += 1


def _what(exc: httpx.HTTPError) -> str:
    return type(exc).__name__
