"""Modality Worklist C-FIND with DCMTK's `findscu -W` against a real node, from orders in the DB.

The orders are written straight into the node's index (the HL7 listener that creates them is
another component); the worklist is what a modality sees of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import create_engine
from sqlmodel import Session

from node.storage.workflow_index import ImagingOrder, Patient
from tests.node.dimse_helpers import MODALITY_AE, DimseNode, dimse_node, findscu, storescu
from tests.node.factories import make_ct, to_bytes

__all__ = ["dimse_node"]

SPS = "ScheduledProcedureStepSequence[0]"
RETURN_KEYS = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence", "ReferringPhysicianName",
    f"{SPS}.Modality", f"{SPS}.ScheduledStationAETitle", f"{SPS}.ScheduledProcedureStepStartDate",
    f"{SPS}.ScheduledProcedureStepStartTime", f"{SPS}.ScheduledProcedureStepID",
    f"{SPS}.ScheduledProcedureStepDescription",
]  # fmt: skip


def _order(accession: str, mrn: str, **fields: object) -> ImagingOrder:
    values: dict[str, object] = {
        "accession_number": accession,
        "patient_mrn": mrn,
        "status": "scheduled",
        "modality": "CT",
        "scheduled_station_ae": "CT01",
        "scheduled_date": "20261124",
        "scheduled_time": "093000",
        "requested_procedure_id": f"RP-{accession}",
        "requested_procedure_description": "CT chest without contrast",
        "procedure_code": "24627-2",
        "procedure_code_system": "LN",
        "procedure_code_meaning": "CT Chest",
        "referring_physician": "Ref^Rita",
        "study_uid": f"1.2.826.0.1.3680043.10.1.{int.from_bytes(accession.encode())}",
    }
    values.update(fields)
    return ImagingOrder(**values)  # type: ignore[arg-type]


@pytest.fixture
def orders(dimse_node: DimseNode) -> dict[str, ImagingOrder]:
    """Patients and orders in every state, as the order system would have sent them."""
    engine = create_engine(dimse_node.node.database_url or "")
    made = {
        "ACC100": _order("ACC100", "MRN1"),
        "ACC101": _order("ACC101", "MRN1", scheduled_date="20261125", status="in-progress"),
        "ACC102": _order("ACC102", "MRN2", modality="MR", scheduled_station_ae="MR01"),
        "ACC103": _order("ACC103", "MRN2", status="completed"),
        "ACC104": _order("ACC104", "MRN1", status="cancelled"),
        "ACC105": _order("ACC105", "MRN1", scheduled_date="20261201"),
    }
    with Session(engine) as session:
        session.add(Patient(mrn="MRN1", name="Müller^Anna", name_search="MÜLLER^ANNA",
                            birth_date="19800214", sex="F"))  # fmt: skip
        session.add(Patient(mrn="MRN2", name="Okafor^Ben", name_search="OKAFOR^BEN",
                            birth_date="19751103", sex="M"))  # fmt: skip
        session.add_all(made.values())
        session.commit()
        for order in made.values():
            session.refresh(order)
            session.expunge(order)
    engine.dispose()
    return made


def _accessions(found: list[Dataset]) -> list[str]:
    return [str(ds.AccessionNumber) for ds in found]


def test_worklist_matches_modality_station_and_date_range(
    dimse_node: DimseNode, orders: dict[str, ImagingOrder], tmp_path: Path
) -> None:
    keys = [
        *RETURN_KEYS,
        f"{SPS}.Modality=CT",
        f"{SPS}.ScheduledProcedureStepStartDate=20261124-20261130",
    ]
    found, out = findscu(dimse_node, "-W", keys, tmp_path / "w1", calling=MODALITY_AE)
    # Completed and cancelled orders are off the worklist; ACC105 is outside the range.
    assert _accessions(found) == ["ACC100", "ACC101"], out

    entry = found[0]
    order = orders["ACC100"]
    assert str(entry.PatientName) == "Müller^Anna"  # the UTF-8 response keeps the umlaut
    assert entry.PatientID == "MRN1" and entry.PatientBirthDate == "19800214"
    assert entry.PatientSex == "F"
    assert entry.StudyInstanceUID == order.study_uid
    assert entry.RequestedProcedureID == "RP-ACC100"
    assert entry.RequestedProcedureDescription == "CT chest without contrast"
    code = entry.RequestedProcedureCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "24627-2", "LN", "CT Chest"
    )  # fmt: skip
    assert str(entry.ReferringPhysicianName) == "Ref^Rita"
    step = entry.ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT" and step.ScheduledStationAETitle == "CT01"
    assert step.ScheduledProcedureStepStartDate == "20261124"
    assert step.ScheduledProcedureStepStartTime == "093000"
    assert step.ScheduledProcedureStepID == "ACC100"
    assert step.ScheduledProcedureStepDescription == "CT chest without contrast"
    # Only the keys asked for come back (PS3.4 C.2.2.1.2).
    assert "ReasonForTheRequestedProcedure" not in entry


def test_worklist_matches_patient_keys_and_accession(
    dimse_node: DimseNode, orders: dict[str, ImagingOrder], tmp_path: Path
) -> None:
    by_name, out = findscu(
        dimse_node, "-W", [*RETURN_KEYS, "PatientName=oka*"], tmp_path / "w2", MODALITY_AE
    )
    assert _accessions(by_name) == ["ACC102"], out
    assert by_name[0].ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "MR01"

    by_station, out = findscu(
        dimse_node, "-W", [*RETURN_KEYS, f"{SPS}.ScheduledStationAETitle=MR01"],
        tmp_path / "w3", MODALITY_AE,
    )  # fmt: skip
    assert _accessions(by_station) == ["ACC102"], out

    by_id, out = findscu(
        dimse_node, "-W", [*RETURN_KEYS, "PatientID=MRN1", "AccessionNumber=ACC10?"],
        tmp_path / "w4", MODALITY_AE,
    )  # fmt: skip
    assert _accessions(by_id) == ["ACC100", "ACC101", "ACC105"], out

    nothing, out = findscu(
        dimse_node, "-W", [*RETURN_KEYS, "AccessionNumber=ACC103"], tmp_path / "w5", MODALITY_AE
    )
    assert nothing == [], out  # completed: no longer on the worklist

    bad, out = findscu(
        dimse_node, "-W", [*RETURN_KEYS, f"{SPS}.ScheduledProcedureStepStartDate=tomorrow"],
        tmp_path / "w6", MODALITY_AE,
    )  # fmt: skip
    assert bad == [] and "Error: DataSetDoesNotMatchSOPClass" in out, out


def test_acquisition_from_a_worklist_entry_completes_its_order(
    dimse_node: DimseNode, orders: dict[str, ImagingOrder], tmp_path: Path
) -> None:
    """The modality's loop: take the entry, acquire with its attributes, C-STORE; the study
    matches its order, which leaves the worklist."""
    (entry,), out = findscu(
        dimse_node, "-W", [*RETURN_KEYS, "AccessionNumber=ACC102"], tmp_path / "w7", MODALITY_AE
    )
    image = make_ct(
        study_uid=str(entry.StudyInstanceUID),
        patient_id=str(entry.PatientID),
        patient_name=str(entry.PatientName),
        seed=11,
    )
    image.AccessionNumber = entry.AccessionNumber
    image.Modality = entry.ScheduledProcedureStepSequence[0].Modality
    path = tmp_path / "acquired.dcm"
    path.write_bytes(to_bytes(image))
    assert "Error" not in storescu(dimse_node, MODALITY_AE, [path])

    engine = create_engine(dimse_node.node.database_url or "")
    try:
        with Session(engine) as session:
            order = session.get(ImagingOrder, "ACC102")
            assert order is not None
            assert order.status == "completed"
            assert order.matched_study_uid == entry.StudyInstanceUID
    finally:
        engine.dispose()
    after, out = findscu(
        dimse_node, "-W", [*RETURN_KEYS, "AccessionNumber=ACC102"], tmp_path / "w8", MODALITY_AE
    )
    assert after == [], out
