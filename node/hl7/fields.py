"""Reading patients and orders out of HL7 v2 segments, validating each field used.

Profiles (docs/workflow.md lists them): PID (v2.5 §3.4.2), MRG (§3.4.3), ORC (§4.5.1),
OBR (§4.5.3 / §7.4.1), TQ1 (§4.5.4) and IPC (§4.5.6, OMI^O23). Field values become DICOM value
forms (PN, DA, TM, CS) because the worklist hands them to modalities. Errors name the field,
never its value.
"""

from __future__ import annotations

import re
from datetime import date

from node.hl7.ack import HL7Error
from node.hl7.message import Segment
from node.services.orders import OrderData
from node.services.patients import PatientData

_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2}(?:\.\d{1,4})?)?([+-]\d{4})?$")
_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_SEX = {"M": "M", "F": "F", "O": "O", "U": "U", "A": "O", "N": "O"}
_PRIORITY = {"S": "stat", "A": "asap", "R": "routine", "P": "preop", "C": "callback", "T": "timing"}


def _loc(seg: Segment, field: int) -> tuple[str, int, int]:
    return (seg.name, 1, field)


def required(seg: Segment, field: int, what: str, component: int = 1) -> str:
    """A value that must be present (AE 101 otherwise)."""
    value = seg.value(field, component)
    if not value:
        raise HL7Error(101, f"{seg.name}-{field} ({what}) is missing", _loc(seg, field))
    return value


def limited(seg: Segment, field: int, value: str, what: str, limit: int) -> str:
    """A value that must fit the DICOM/database column it goes to (AE 102 otherwise)."""
    if len(value) > limit:
        raise HL7Error(
            102, f"{seg.name}-{field} ({what}) is longer than {limit} characters", _loc(seg, field)
        )
    return value


def parse_dtm(seg: Segment, field: int, what: str, component: int = 1) -> tuple[str, str] | None:
    """A DTM/TS value as (DICOM DA, DICOM TM); None when empty. AE 102 when not a real date.

    §2.A.22: YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]. A time missing its minutes or seconds
    is padded with zeros; a date without a day has no DA form and reads as None."""
    raw = seg.value(field, component)
    if not raw:
        return None
    m = _DTM.match(raw)
    bad = HL7Error(
        102, f"{seg.name}-{field} ({what}) is not a valid HL7 date/time", _loc(seg, field)
    )
    if m is None:
        raise bad
    year, month, day, hour, minute, second = m.group(1, 2, 3, 4, 5, 6)
    try:
        date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        raise bad from None
    if (hour and int(hour) > 23) or (minute and int(minute) > 59):
        raise bad
    if second and float(second) >= 61:
        raise bad
    if not day:
        return None
    tm = ""
    if hour:
        tm = f"{hour}{minute or '00'}{(second or '00')[:2]}"
    return f"{year}{month}{day}", tm


def patient_from_pid(pid: Segment) -> PatientData:
    """PID-3 (MRN and issuer), PID-5 (name), PID-7 (birth date), PID-8 (sex)."""
    reps = pid.repetitions(3)
    if not reps or not any(r.split(pid.enc.component)[0] for r in reps):
        raise HL7Error(101, "PID-3 (patient identifier list) is missing", _loc(pid, 3))
    # PID-3 repeats (MRN, national ID, insurance number ...): the MR-typed one is the MRN.
    index = 0
    for i in range(len(reps)):
        if pid.value(3, 5, rep=i).upper() == "MR" and pid.value(3, 1, rep=i):
            index = i
            break
    else:
        index = next(i for i in range(len(reps)) if pid.value(3, 1, rep=i))
    mrn = limited(pid, 3, pid.value(3, 1, rep=index), "patient identifier", 64)
    issuer = limited(pid, 3, pid.value(3, 4, rep=index), "assigning authority", 64)
    return PatientData(
        mrn=mrn,
        issuer=issuer,
        name=person_name(pid, 5),
        birth_date=_birth_date(pid),
        sex=_sex(pid),
    )


def _birth_date(pid: Segment) -> str | None:
    parsed = parse_dtm(pid, 7, "date of birth")
    return parsed[0] if parsed else None


def _sex(pid: Segment) -> str | None:
    raw = pid.value(8).upper()
    if not raw:
        return None
    if raw not in _SEX:
        raise HL7Error(103, "PID-8 (administrative sex) is not in HL7 table 0001", _loc(pid, 8))
    return _SEX[raw]


def person_name(seg: Segment, field: int, offset: int = 0) -> str | None:
    """An XPN (offset 0) or XCN (offset 1: the ID comes first) as a DICOM PN.

    The legal name (XPN-7 = L) is preferred among repetitions. XPN orders family, given,
    middle, suffix, prefix; DICOM PN (PS3.5 §6.2.1.1) family, given, middle, prefix, suffix."""
    reps = seg.repetitions(field)
    if not reps:
        return None
    chosen = 0
    for i in range(len(reps)):
        if seg.value(field, 7 + offset, rep=i).upper() == "L":
            chosen = i
            break
    # A decoded \S\ or \R\ inside a name part must not become PN structure.
    parts = [
        re.sub(r"[\^=\\]", " ", seg.value(field, offset + c, rep=chosen)) for c in (1, 2, 3, 5, 4)
    ]
    name = "^".join(parts).rstrip("^")
    return limited(seg, field, name, "name", 320) or None


def order_from_segments(
    orc: Segment, obr: Segment | None, tq1: Segment | None, ipc: Segment | None, pid: PatientData
) -> OrderData:
    """An order from one ORC group: IHE Scheduled Workflow field placement (IHE RAD TF-2).

    Accession number: IPC-1 (OMI) or OBR-18; requested procedure ID IPC-2 or OBR-19; modality
    IPC-5 or OBR-24; scheduled start TQ1-7, else ORC-7.4 / OBR-27.4 (TQ, retained for
    v2.3-2.4 senders), else OBR-36."""
    if obr is None:
        raise HL7Error(100, "the ORC group has no OBR segment", (orc.name, 1, 0))
    if ipc is not None and ipc.value(1):
        accession = limited(ipc, 1, ipc.value(1), "accession identifier", 16)
    else:
        accession = limited(obr, 18, required(obr, 18, "accession number"), "accession number", 16)
    modality = (ipc.value(5) if ipc is not None else "") or obr.value(24)
    if modality and not _CS.match(modality.upper()):
        where = ipc if ipc is not None and ipc.value(5) else obr
        field = 5 if where is ipc else 24
        raise HL7Error(
            102, f"{where.name}-{field} (modality) is not a DICOM code string", _loc(where, field)
        )
    scheduled = _scheduled(orc, obr, tq1)
    procedure_id = (ipc.value(2) if ipc is not None else "") or obr.value(19)
    station_ae = ipc.value(9) if ipc is not None else ""
    study_uid = ipc.value(3) if ipc is not None else ""
    if (study_uid and not re.match(r"^[0-9]+(\.[0-9]+)*$", study_uid)) or len(study_uid) > 64:
        raise HL7Error(102, "IPC-3 (study instance UID) is not a valid UID", ("IPC", 1, 3))
    priority_code = (tq1.value(9) if tq1 is not None else "") or orc.value(7, 6) or obr.value(27, 6)
    return OrderData(
        accession_number=accession,
        patient_mrn=pid.mrn,
        patient_issuer=pid.issuer,
        placer_order_number=limited(orc, 2, orc.value(2) or obr.value(2), "placer order number", 64)
        or None,
        filler_order_number=limited(orc, 3, orc.value(3) or obr.value(3), "filler order number", 64)
        or None,
        priority=_PRIORITY.get(priority_code.upper()) if priority_code else None,
        modality=modality.upper() or None,
        requested_procedure_id=limited(obr, 19, procedure_id, "requested procedure ID", 16) or None,
        requested_procedure_description=obr.value(4, 2) or obr.value(44, 2) or None,
        procedure_code=limited(obr, 4, obr.value(4, 1), "universal service identifier", 64) or None,
        procedure_code_system=limited(obr, 4, obr.value(4, 3), "coding system", 64) or None,
        procedure_code_meaning=obr.value(4, 2) or None,
        scheduled_station_ae=limited(ipc, 9, station_ae, "scheduled AE title", 16) or None
        if ipc is not None
        else None,
        scheduled_date=scheduled[0] if scheduled else None,
        scheduled_time=scheduled[1] or None if scheduled else None,
        referring_physician=person_name(orc, 12, offset=1) or person_name(obr, 16, offset=1),
        reason=obr.value(31, 2) or obr.value(31, 1) or obr.value(13) or None,
        study_uid=study_uid or None,
    )


def _scheduled(orc: Segment, obr: Segment, tq1: Segment | None) -> tuple[str, str] | None:
    if tq1 is not None and tq1.value(7):
        return parse_dtm(tq1, 7, "start date/time")
    if orc.value(7, 4):
        return parse_dtm(orc, 7, "quantity/timing start", component=4)
    if obr.value(27, 4):
        return parse_dtm(obr, 27, "quantity/timing start", component=4)
    if obr.value(36):
        return parse_dtm(obr, 36, "scheduled date/time")
    return None
