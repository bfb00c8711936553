"""FHIR DiagnosticReport (R4 §9.4.2): reports as resources, and resources as report content.

Incoming resources are validated against the R4B models of `fhir.resources` (identical to R4
for DiagnosticReport) before anything is read from them; the validation problems are named by
their location only, never with the submitted values (they may be personal data).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError
from sqlalchemy import ColumnElement, Connection, or_, select

from node.errors import InvalidRequestError, NotFoundError
from node.fhir.imaging import STUDY_T
from node.fhir.orders import accession_of, order_id
from node.fhir.patients import patient_condition, patient_mrn, patient_reference
from node.fhir.search import (
    Page,
    SearchRequest,
    date_condition,
    fhir_datetime,
    fhir_instant,
    reference_id,
    run_page,
    split_or,
    token,
)
from node.services.reports import DEFAULT_CODE, REPORT_T, VERSION_T, ReportContent
from node.storage.workflow_index import Observation

OBSERVATION_T: Final = Observation.__table__  # type: ignore[attr-defined]
LOINC: Final = "http://loinc.org"
SEARCH_PARAMS: Final = frozenset(
    {"_id", "patient", "subject", "status", "date", "based-on", "code", "result", "accession"}
)
# R4 value set diagnostic-report-status (required binding).
REPORT_STATUSES: Final = frozenset(
    {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended"}
    | {"cancelled", "entered-in-error", "unknown"}
)
_V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"


def report_resource(conn: Connection, report: Any, version: Any | None = None) -> dict[str, Any]:
    """A report as a DiagnosticReport: its current version, or `version` (a report_version
    row) for vread and history."""
    v = version or report
    number = v.version
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": str(report.report_key),
        "meta": {
            "versionId": str(number),
            "lastUpdated": fhir_instant(v.issued or report.updated_at),
        },
        "status": v.status,
        "category": [{"coding": [{"system": _V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": _code(report.code),
        "subject": patient_reference(conn, report.patient_mrn, None),
        "imagingStudy": [{"reference": f"ImagingStudy/{report.study_uid}"}],
    }
    if report.accession_number:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{order_id(report.accession_number)}"}]
    study = conn.execute(
        select(STUDY_T.c.study_date, STUDY_T.c.study_time).where(
            STUDY_T.c.study_uid == report.study_uid
        )
    ).first()
    effective = fhir_datetime(study.study_date, study.study_time) if study else None
    if effective:
        resource["effectiveDateTime"] = effective
    issued = fhir_instant(v.issued)
    if issued:
        resource["issued"] = issued
    if v.author:
        resource["resultsInterpreter"] = [{"display": v.author}]
    results: list[int] = list(
        conn.execute(
            select(OBSERVATION_T.c.observation_key)
            .where(OBSERVATION_T.c.report_key == report.report_key)
            .order_by(OBSERVATION_T.c.observation_key)
        ).scalars()
    )
    refs = [{"reference": f"Observation/{key}"} for key in results]
    if refs:
        resource["result"] = refs
    if v.conclusion:
        resource["conclusion"] = v.conclusion
    if v.text:
        resource["presentedForm"] = [
            {
                "contentType": "text/plain; charset=utf-8",
                "data": base64.b64encode(v.text.encode()).decode("ascii"),
                "title": "Report",
            }
        ]
    return resource


def _code(code: str | None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": LOINC, "code": code or DEFAULT_CODE}
    if (code or DEFAULT_CODE) == DEFAULT_CODE:
        coding["display"] = "Diagnostic imaging study"
    return {"coding": [coding]}


def _report_row(conn: Connection, resource_id: str) -> Any:
    row = None
    if resource_id.isdigit():
        row = conn.execute(
            select(REPORT_T).where(REPORT_T.c.report_key == int(resource_id))
        ).first()
    if row is None:
        raise NotFoundError(f"no DiagnosticReport with id {resource_id}")
    return row


def read_report(conn: Connection, resource_id: str) -> dict[str, Any]:
    """The current version of a report, or NotFoundError."""
    return report_resource(conn, _report_row(conn, resource_id))


def read_version(conn: Connection, resource_id: str, version_id: str) -> dict[str, Any]:
    """One version of a report (vread), or NotFoundError."""
    report = _report_row(conn, resource_id)
    row = None
    if version_id.isdigit():
        row = conn.execute(
            select(VERSION_T).where(
                VERSION_T.c.report_key == report.report_key,
                VERSION_T.c.version == int(version_id),
            )
        ).first()
    if row is None:
        raise NotFoundError(f"DiagnosticReport {resource_id} has no version {version_id}")
    return report_resource(conn, report, row)


def history(conn: Connection, resource_id: str, fhir_base: str) -> dict[str, Any]:
    """Every version of a report, newest first, as a history Bundle (R4 §3.1.0.10)."""
    report = _report_row(conn, resource_id)
    rows = conn.execute(
        select(VERSION_T)
        .where(VERSION_T.c.report_key == report.report_key)
        .order_by(VERSION_T.c.version.desc())
    ).all()
    url = f"{fhir_base}/DiagnosticReport/{report.report_key}"
    entries = []
    for row in rows:
        resource = report_resource(conn, report, row)
        entries.append(
            {
                "fullUrl": url,
                "resource": resource,
                "request": {
                    "method": "POST" if row.version == 1 else "PUT",
                    "url": (
                        "DiagnosticReport"
                        if row.version == 1
                        else f"DiagnosticReport/{report.report_key}"
                    ),
                },
                "response": {
                    "status": "201 Created" if row.version == 1 else "200 OK",
                    "etag": f'W/"{row.version}"',
                    "lastModified": resource["meta"]["lastUpdated"],
                },
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "history",
        "total": len(entries),
        "link": [{"relation": "self", "url": f"{url}/_history"}],
        "entry": entries,
    }


def search_reports(conn: Connection, search: SearchRequest) -> Page:
    """DiagnosticReports matching the search, one page."""
    t = REPORT_T
    where: list[ColumnElement[bool]] = []
    for values in split_or(search.values("_id")):
        where.append(t.c.report_key.in_([int(v) for v in values if v.isdigit()]))
    for param in ("patient", "subject"):
        for values in split_or(search.values(param)):
            where.append(patient_condition(conn, values, param, t.c.patient_mrn, None))
    for values in split_or(search.values("status")):
        where.append(t.c.status.in_(values))
    for values in split_or(search.values("date")):
        col = STUDY_T.c.study_date
        dated = select(STUDY_T.c.study_uid).where(
            or_(*(date_condition(col, v, "date") for v in values))
        )
        where.append(t.c.study_uid.in_(dated))
    for values in split_or(search.values("based-on")):
        accessions = [accession_of(reference_id(v, "ServiceRequest", "based-on")) for v in values]
        where.append(t.c.accession_number.in_([a for a in accessions if a]))
    for values in split_or(search.values("accession")):
        where.append(t.c.accession_number.in_([token(v)[1] for v in values]))
    for values in split_or(search.values("code")):
        where.append(t.c.code.in_([token(v)[1] for v in values]))
    for values in split_or(search.values("result")):
        keys = [reference_id(v, "Observation", "result") for v in values]
        where.append(
            t.c.report_key.in_(
                select(OBSERVATION_T.c.report_key).where(
                    OBSERVATION_T.c.observation_key.in_([int(k) for k in keys if k.isdigit()])
                )
            )
        )
    order = [t.c.report_key]
    total, rows = run_page(conn, t, where, order, search)
    return Page(total, [report_resource(conn, row) for row in rows])


def parse_report(conn: Connection, body: bytes, resource_id: str | None) -> ReportContent:
    """Validate a DiagnosticReport body (R4B model) and take the report content from it."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError("the body is not valid JSON") from exc
    if not isinstance(data, dict) or data.get("resourceType") != "DiagnosticReport":
        raise InvalidRequestError("the body must be a DiagnosticReport resource")
    try:
        model = DiagnosticReport.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'resource'}: "
            f"{str(e.get('msg')).split(' [')[0]}"
            for e in exc.errors(include_input=False)
        )
        raise InvalidRequestError(f"invalid DiagnosticReport: {problems}") from exc
    if model.status not in REPORT_STATUSES:
        # The R4B models do not check required code bindings; R4 binds this one (required).
        allowed = ", ".join(sorted(REPORT_STATUSES))
        raise InvalidRequestError(f"invalid DiagnosticReport: status must be one of {allowed}")
    if resource_id is not None and model.id != resource_id:
        # R4 §3.1.0.4 update: the body's id must be the id in the URL.
        raise InvalidRequestError("the resource id in the body must match the id in the URL")
    study_uid = _single_ref(model.imagingStudy, "ImagingStudy", "imagingStudy")
    order = _single_ref(model.basedOn, "ServiceRequest", "basedOn")
    accession = None
    if order is not None:
        accession = accession_of(order)
        if accession is None:
            raise InvalidRequestError("basedOn does not reference a valid ServiceRequest id")
    mrn = None
    if model.subject is not None and model.subject.reference:
        patient_id = reference_id(model.subject.reference, "Patient", "subject")
        found = patient_mrn(conn, patient_id)
        if found is None:
            raise InvalidRequestError("subject references a Patient this node does not hold")
        mrn = found[0]
    code = None
    for coding in model.code.coding or []:
        if coding.system == LOINC and coding.code:
            code = str(coding.code)[:64]
    author = None
    for ref in [*(model.resultsInterpreter or []), *(model.performer or [])]:
        if ref.display:
            author = str(ref.display)
            break
    return ReportContent(
        status=str(model.status),
        conclusion=model.conclusion,
        text=_narrative(data),
        author=author,
        code=code,
        study_uid=study_uid,
        accession_number=accession,
        patient_mrn=mrn,
    )


def _single_ref(refs: Any, resource_type: str, field: str) -> str | None:
    if not refs:
        return None
    if len(refs) > 1:
        raise InvalidRequestError(f"{field} may name one {resource_type}, not {len(refs)}")
    if not refs[0].reference:
        raise InvalidRequestError(f"{field} must be a literal reference {resource_type}/id")
    return reference_id(str(refs[0].reference), resource_type, field)


def _narrative(data: dict[str, Any]) -> str | None:
    """The report text: the first text/plain presentedForm (read from the validated JSON)."""
    for form in data.get("presentedForm") or []:
        content_type = str(form.get("contentType") or "")
        if content_type.startswith("text/plain") and form.get("data"):
            try:
                return base64.b64decode(str(form["data"]), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
                raise InvalidRequestError(
                    "presentedForm.data must be base64 of UTF-8 text"
                ) from exc
    return None
