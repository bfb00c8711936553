"""C-FIND SCP, Patient Root and Study Root Query/Retrieve (PS3.4 C.4.1), answered by the
archive's one query service (the same search QIDO-RS runs).

A DICOM identifier becomes QIDO-style query parameters: each key with a value is a matching key,
each empty key a return key. Keys the index cannot match on are optional keys the SCP does not
support; PS3.4 C.2.2.1.3 lets it ignore their matching value, so they are returned but not
matched (values then come from the stored headers, as QIDO's includefield does).
The PATIENT level has no QIDO equivalent: it is a study search folded by Patient ID.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Final

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from node.dimse import identifiers
from node.dimse.status import failure
from node.errors import InvalidRequestError, NodeError
from node.services.archive import Archive
from node.services.metadata import metadata_loader
from node.services.query import MAX_RESULTS, QueryLevel, parse_query, search
from node.services.query_keys import INDEXED, LEVEL_RANK

log = logging.getLogger("pacsmesh.dimse")

# PS3.4 C.4.1.1.4 / Annex C.6: status of the C-FIND responses.
PENDING: Final = 0xFF00
CANCELLED: Final = 0xFE00
IDENTIFIER_DOES_NOT_MATCH: Final = 0xA900
UNABLE_TO_PROCESS: Final = 0xC000

_LEVELS: Final = {
    "STUDY": QueryLevel.STUDY,
    "SERIES": QueryLevel.SERIES,
    "IMAGE": QueryLevel.INSTANCE,
}
PATIENT_ROOT_LEVELS: Final = ("PATIENT", "STUDY", "SERIES", "IMAGE")
STUDY_ROOT_LEVELS: Final = ("STUDY", "SERIES", "IMAGE")
_PATIENT_KEYS: Final = frozenset({"PatientID", "PatientName", "PatientBirthDate", "PatientSex"})
# NumberOfStudyRelatedSeries and NumberOfStudyRelatedInstances, summed per patient.
_STUDY_COUNT_TAGS: Final = ("00201206", "00201208")


def query_params(identifier: Dataset, level: QueryLevel) -> list[tuple[str, str]]:
    """The identifier's keys as QIDO query parameters (tag hex, matching value)."""
    params: list[tuple[str, str]] = []
    for element in identifiers.keys(identifier):
        if element.VR == "SQ" or element.tag.is_private:
            continue  # sequence matching is not supported: returned empty by `project`
        tag = f"{int(element.tag):08X}"
        value = identifiers.text_value(element)
        attr = INDEXED.get(tag)
        if attr is None or not attr.matchable or LEVEL_RANK[attr.level] > LEVEL_RANK[level]:
            value = ""  # C.2.2.1.3: an optional key the SCP does not match on
        params.append((tag, value))
    return params


def find_matches(
    archive: Archive, identifier: Dataset, level_name: str, root_levels: tuple[str, ...]
) -> Iterator[Dataset]:
    """Matches for a Q/R identifier as datasets holding (at least) the requested keys.

    Raises NodeError for a request the service refuses.
    """
    if level_name not in root_levels:
        raise InvalidRequestError(
            f"QueryRetrieveLevel must be one of {', '.join(root_levels)} for this SOP class"
        )
    if level_name == "PATIENT":
        yield from _patients(archive, identifier)
        return
    level = _LEVELS[level_name]
    for result in _pages(archive, level, query_params(identifier, level)):
        yield Dataset.from_json(result)


def _pages(archive: Archive, level: QueryLevel, params: list[tuple[str, str]]) -> Iterator[Any]:
    """Every result of the search, one bounded page at a time."""
    query = parse_query(level, params)
    root = archive.settings.base_url + "/dicom-web"
    offset = 0
    while True:
        page = replace(query, limit=MAX_RESULTS, offset=offset)
        with archive.engine.connect() as conn:
            results = search(
                conn, page, base_url=root, load_metadata=metadata_loader(archive, root)
            )
        yield from results
        if len(results) < MAX_RESULTS:
            return
        offset += MAX_RESULTS


def _patients(archive: Archive, identifier: Dataset) -> Iterator[Dataset]:
    """PATIENT level: studies matching the patient keys, one result per Patient ID."""
    params = [
        (tag, value)
        for tag, value in query_params(identifier, QueryLevel.STUDY)
        if (attr := INDEXED.get(tag)) is not None and attr.keyword in _PATIENT_KEYS
    ]
    params += [(tag, "") for tag in _STUDY_COUNT_TAGS]
    patients: dict[str, Dataset] = {}
    for result in _pages(archive, QueryLevel.STUDY, params):
        ds = Dataset.from_json(result)
        patient_id = str(ds.get("PatientID", ""))
        seen = patients.get(patient_id)
        if seen is None:
            ds.NumberOfPatientRelatedStudies = 1
            ds.NumberOfPatientRelatedSeries = int(ds.get("NumberOfStudyRelatedSeries") or 0)
            ds.NumberOfPatientRelatedInstances = int(ds.get("NumberOfStudyRelatedInstances") or 0)
            patients[patient_id] = ds
        else:
            seen.NumberOfPatientRelatedStudies += 1
            seen.NumberOfPatientRelatedSeries += int(ds.get("NumberOfStudyRelatedSeries") or 0)
            seen.NumberOfPatientRelatedInstances += int(
                ds.get("NumberOfStudyRelatedInstances") or 0
            )
    yield from patients.values()


def handle_find(
    event: Event, archive: Archive, ae_title: str, root_levels: tuple[str, ...]
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """EVT_C_FIND for the Q/R information models."""
    request = event.identifier
    level = str(request.get("QueryRetrieveLevel", "")).strip().upper()
    try:
        for match in find_matches(archive, request, level, root_levels):
            if event.is_cancelled:
                yield CANCELLED, None
                return
            match.RetrieveAETitle = ae_title
            yield PENDING, identifiers.response(match, request, level)
    except NodeError as exc:
        yield failure(IDENTIFIER_DOES_NOT_MATCH, exc.message), None
    except Exception as exc:  # a DIMSE peer gets a status, never a dropped association
        log.error("C-FIND failed: %s", type(exc).__name__, exc_info=exc)
        yield failure(UNABLE_TO_PROCESS, "the query could not be processed"), None
