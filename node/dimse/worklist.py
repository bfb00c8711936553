"""Modality Worklist C-FIND SCP (PS3.4 Annex K) over the worklist service.

Matching keys read from the request (PS3.4 K.6.1.2.2, Table K.6-1): in the Scheduled Procedure
Step Sequence item, Modality, Scheduled Station AE Title and Scheduled Procedure Step Start Date
(single date or range); at the top level Patient ID, Patient's Name (wildcards) and Accession
Number. Every other key is a return key. The full entry is built from the order and its patient
and then cut down to the keys the request named (`identifiers.project`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Final

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.events import Event

from node.dimse import identifiers
from node.dimse.status import failure
from node.errors import NodeError
from node.services.archive import Archive
from node.services.worklist import (
    SPS_STATUS,
    WorklistEntry,
    WorklistQuery,
    parse_date_range,
    search_worklist,
)

log = logging.getLogger("pacsmesh.dimse")

PENDING: Final = 0xFF00
CANCELLED: Final = 0xFE00
IDENTIFIER_DOES_NOT_MATCH: Final = 0xA900
UNABLE_TO_PROCESS: Final = 0xC000


def _text(ds: Dataset, keyword: str) -> str | None:
    element = ds.get(keyword)
    if element is None:
        return None
    value = identifiers.text_value(ds[keyword])
    return value or None


def worklist_query(request: Dataset) -> WorklistQuery:
    """The matching keys of an MWL identifier."""
    step = Dataset()
    steps = request.get("ScheduledProcedureStepSequence")
    if steps:
        step = steps[0]
    date = _text(step, "ScheduledProcedureStepStartDate")
    return WorklistQuery(
        modality=_text(step, "Modality"),
        station_ae=_text(step, "ScheduledStationAETitle"),
        date_range=parse_date_range(date) if date else None,
        patient_id=_text(request, "PatientID"),
        patient_name=_text(request, "PatientName"),
        accession_number=_text(request, "AccessionNumber"),
    )


def _code_item(entry: WorklistEntry) -> Dataset:
    code = Dataset()
    code.CodeValue = entry.procedure_code
    code.CodingSchemeDesignator = entry.procedure_code_system or "L"
    code.CodeMeaning = entry.procedure_code_meaning or entry.requested_procedure_description
    return code


def entry_dataset(entry: WorklistEntry) -> Dataset:
    """Every worklist attribute this node holds for an entry (PS3.4 Table K.6-1)."""
    step = Dataset()
    step.Modality = entry.modality
    step.ScheduledStationAETitle = entry.station_ae
    step.ScheduledProcedureStepStartDate = entry.scheduled_date
    step.ScheduledProcedureStepStartTime = entry.scheduled_time
    # One requested procedure, one step: the step is named after the accession number.
    step.ScheduledProcedureStepID = entry.accession_number
    step.ScheduledProcedureStepDescription = entry.requested_procedure_description
    step.ScheduledProcedureStepStatus = SPS_STATUS.get(entry.status, "SCHEDULED")
    step.ScheduledPerformingPhysicianName = None
    if entry.procedure_code:
        step.ScheduledProtocolCodeSequence = Sequence([_code_item(entry)])

    ds = Dataset()
    ds.AccessionNumber = entry.accession_number
    ds.ReferringPhysicianName = entry.referring_physician
    ds.PatientName = entry.patient_name
    ds.PatientID = entry.patient_id
    ds.IssuerOfPatientID = entry.patient_issuer or None
    ds.PatientBirthDate = entry.patient_birth_date
    ds.PatientSex = entry.patient_sex
    ds.StudyInstanceUID = entry.study_uid
    ds.RequestedProcedureID = entry.requested_procedure_id or entry.accession_number
    ds.RequestedProcedureDescription = entry.requested_procedure_description
    ds.RequestedProcedurePriority = (entry.priority or "").upper() or None
    ds.ReasonForTheRequestedProcedure = entry.reason
    if entry.procedure_code:
        ds.RequestedProcedureCodeSequence = Sequence([_code_item(entry)])
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def handle_worklist(
    event: Event, archive: Archive
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """EVT_C_FIND for the Modality Worklist Information Model - FIND."""
    request = event.identifier
    try:
        query = worklist_query(request)
        with archive.engine.connect() as conn:
            entries = search_worklist(conn, query)
    except NodeError as exc:
        yield failure(IDENTIFIER_DOES_NOT_MATCH, exc.message), None
        return
    except Exception as exc:
        log.error("worklist C-FIND failed: %s", type(exc).__name__, exc_info=exc)
        yield failure(UNABLE_TO_PROCESS, "the worklist query could not be processed"), None
        return
    for entry in entries:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        yield PENDING, identifiers.response(entry_dataset(entry), request, None)
