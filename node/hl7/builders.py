"""Messages to the order system, rendered from outbox payloads (schemas in WORKFLOW.md).

- "order-status" → ORM^O01 with ORC-1 SC (status changed) and ORC-5 CM (order completed),
  v2.5 §4.4.1. ORM^O01 is what the IHE Scheduled Workflow "procedure status update" uses and
  what order systems in the field accept; v2.5 keeps it for backward compatibility. OMG/OMI
  carry no status-change semantics an OCS would act on, so they were not chosen.
- "report" → ORU^R01 (v2.5 §7.3.1): ORC-1 RE, OBR-25 F (final) or C (corrected/amended), one
  OBX (TX) per line of the findings text (LOINC 18782-3) and of the impression (19005-8).
Both add the IHE ZDS segment (IHE RAD TF-2 §4.4.4.1.2.1) with the Study Instance UID, so the
OCS can link back to the images. MSH-10 is derived from the outbox key, so a message resent
after a lost ACK keeps its control ID and the receiver can drop the duplicate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from node.hl7.ack import hl7_timestamp
from node.hl7.message import escape
from node.settings import NodeSettings

LOINC_FINDINGS = "18782-3^Radiology Study observation (narrative)^LN"
LOINC_IMPRESSION = "19005-8^Radiology Imaging study [Impression] (narrative)^LN"


def message_control_id(message_key: int) -> str:
    """MSH-10 of an outbox message: stable across retries."""
    return f"PMO{message_key}"


def _msh(settings: NodeSettings, message_type: str, message_key: int) -> str:
    return "|".join(
        [
            "MSH",
            "^~\\&",
            escape(settings.hl7_application),
            escape(settings.hl7_facility),
            escape(settings.ocs_application),
            escape(settings.ocs_facility),
            hl7_timestamp(),
            "",
            message_type,
            message_control_id(message_key),
            "P",
            "2.5",
        ]
    )


def _xpn(pn: str | None) -> str:
    """A DICOM PN (family^given^middle^prefix^suffix) as an HL7 XPN (…^suffix^prefix)."""
    if not pn:
        return ""
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    return "^".join(escape(p) for p in (family, given, middle, suffix, prefix)).rstrip("^")


def _pid(patient: dict[str, Any]) -> str:
    ident = f"{escape(patient.get('mrn') or '')}^^^{escape(patient.get('issuer') or '')}^MR"
    return "|".join(
        [
            "PID",
            "1",
            "",
            ident,
            "",
            _xpn(patient.get("name")),
            "",
            escape(patient.get("birth_date") or ""),
            escape(patient.get("sex") or ""),
        ]
    )


def _fields(name: str, values: dict[int, str]) -> str:
    """A segment from {field number: encoded value}."""
    last = max(values)
    return "|".join([name, *(values.get(i, "") for i in range(1, last + 1))])


def _service(order: dict[str, Any]) -> str:
    code = order.get("procedure_code") or ""
    meaning = order.get("procedure_code_meaning") or order.get("requested_procedure_description")
    system = order.get("procedure_code_system") or ""
    return "^".join(escape(v) for v in (code, meaning or "", system)).rstrip("^")


def _when(iso: str | None) -> str:
    return hl7_timestamp(datetime.fromisoformat(iso)) if iso else hl7_timestamp()


def _zds(study_uid: str, application: str) -> str:
    return f"ZDS|{escape(study_uid)}^{escape(application)}^Application^DICOM"


def order_status_message(settings: NodeSettings, message_key: int, payload: dict[str, Any]) -> str:
    """ORM^O01, ORC-1 SC / ORC-5 CM: the study for this order has arrived and matched."""
    order = payload.get("order") or {}
    placer = escape(order.get("placer_order_number") or "")
    filler = escape(order.get("filler_order_number") or "")
    orc = _fields(
        "ORC", {1: "SC", 2: placer, 3: filler, 5: "CM", 9: _when(payload.get("matched_at"))}
    )
    obr = _fields(
        "OBR",
        {
            1: "1",
            2: placer,
            3: filler,
            4: _service(order),
            18: escape(payload["accession_number"]),
            24: escape(order.get("modality") or ""),
        },
    )
    segments = [
        _msh(settings, "ORM^O01^ORM_O01", message_key),
        _pid(payload.get("patient") or {}),
        orc,
        obr,
        _zds(payload["study_uid"], settings.hl7_application),
    ]
    return "\r".join(segments) + "\r"


def report_message(settings: NodeSettings, message_key: int, payload: dict[str, Any]) -> str:
    """ORU^R01 with the report's text; OBR-25/OBX-11 F for final, C for amended."""
    order = payload.get("order") or {}
    report = payload["report"]
    status = {"final": "F", "amended": "C"}.get(report.get("status", ""), "")
    if not status:
        raise ValueError("only final and amended reports are sent")
    placer = escape(order.get("placer_order_number") or "")
    filler = escape(order.get("filler_order_number") or "")
    issued = _when(report.get("issued"))
    author = report.get("author") or ""
    # OBR-32 principal result interpreter (NDL): its first component is a CNN, whose
    # components are subcomponents here: ID&family&given.
    interpreter = "&" + "&".join(escape(p) for p in author.split("^")[:2]) if author else ""
    obr = _fields(
        "OBR",
        {
            1: "1",
            2: placer,
            3: filler,
            4: _service(order),
            18: escape(payload.get("accession_number") or ""),
            22: issued,
            24: escape(order.get("modality") or ""),
            25: status,
            32: interpreter,
        },
    )
    segments = [
        _msh(settings, "ORU^R01^ORU_R01", message_key),
        _pid(payload.get("patient") or {}),
        _fields("ORC", {1: "RE", 2: placer, 3: filler, 5: "CM"}),
        obr,
    ]
    n = 0
    for code, text in (
        (LOINC_FINDINGS, report.get("text")),
        (LOINC_IMPRESSION, report.get("conclusion")),
    ):
        if not text:
            continue
        for sub_id, line in enumerate(str(text).splitlines() or [""], start=1):
            n += 1
            obx = {
                1: str(n),
                2: "TX",
                3: code,
                4: str(sub_id),
                5: escape(line),
                11: status,
                14: issued,
            }
            segments.append(_fields("OBX", obx))
    segments.append(_zds(payload["study_uid"], settings.hl7_application))
    return "\r".join(segments) + "\r"


def render(settings: NodeSettings, kind: str, message_key: int, payload: dict[str, Any]) -> str:
    """The HL7 text of one outbox message. Raises ValueError/KeyError for a payload it cannot
    render (the message is then marked rejected for the admin, never retried forever)."""
    if kind == "order-status":
        return order_status_message(settings, message_key, payload)
    if kind == "report":
        return report_message(settings, message_key, payload)
    raise ValueError(f"unknown outbound message kind {kind}")
