"""FHIR ImagingStudy (R4 §5.4) derived from the archive index at request time.

Nothing is copied: every read or search builds the resource from the study, series and
instance tables, so a study is visible through FHIR the moment STOW-RS or C-STORE indexes it,
and gone the moment it is deleted. The id is the Study Instance UID itself: a DICOM UID
(digits and dots, at most 64 characters) is already a valid FHIR id.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Final, cast

from sqlalchemy import ColumnElement, Connection, Table, exists, false, or_, select, true

from node.errors import NotFoundError
from node.fhir.orders import DCM, ORDER_T, accession_of, order_id
from node.fhir.patients import V2_0203, patient_condition, patient_reference
from node.fhir.search import (
    FHIR_ID,
    Page,
    SearchRequest,
    date_condition,
    display_name,
    fhir_datetime,
    reference_id,
    run_page,
    split_or,
    token,
)
from node.storage.index import Instance, Series, Study

STUDY_T: Final = cast(Table, Study.__table__)  # type: ignore[attr-defined]
SERIES_T: Final = cast(Table, Series.__table__)  # type: ignore[attr-defined]
INSTANCE_T: Final = cast(Table, Instance.__table__)  # type: ignore[attr-defined]
SEARCH_PARAMS: Final = frozenset(
    {"_id", "identifier", "patient", "subject", "started", "modality", "status", "basedon"}
    | {"accession"}  # a pacsmesh parameter: the accession number alone
)
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"
ENDPOINT_ID: Final = "dicomweb"


def endpoint_resource(base_url: str) -> dict[str, Any]:
    """The node's DICOMweb service as a FHIR Endpoint (R4 §10.7), WADO-RS connection type."""
    return {
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": "pacsmesh DICOMweb (WADO-RS, QIDO-RS, STOW-RS)",
        "payloadType": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                        "code": "any",
                    }
                ],
                "text": "DICOM",
            }
        ],
        "payloadMimeType": ["application/dicom", "application/dicom+json"],
        "address": f"{base_url.rstrip('/')}/dicom-web",
    }


def study_resources(conn: Connection, studies: list[Any]) -> list[dict[str, Any]]:
    """Study rows as FHIR ImagingStudy resources (series and instances in two queries)."""
    uids = [s.study_uid for s in studies]
    if not uids:
        return []
    series_of: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(
        select(SERIES_T)
        .where(SERIES_T.c.study_uid.in_(uids))
        .order_by(SERIES_T.c.series_number.asc().nulls_last(), SERIES_T.c.series_uid)
    ):
        series_of[row.study_uid].append(row)
    instances_of: dict[str, list[Any]] = defaultdict(list)
    for row in conn.execute(
        select(
            INSTANCE_T.c.series_uid,
            INSTANCE_T.c.sop_instance_uid,
            INSTANCE_T.c.sop_class_uid,
            INSTANCE_T.c.instance_number,
        )
        .where(INSTANCE_T.c.study_uid.in_(uids))
        .order_by(INSTANCE_T.c.instance_number.asc().nulls_last(), INSTANCE_T.c.sop_instance_uid)
    ):
        instances_of[row.series_uid].append(row)
    orders_of: dict[str, list[str]] = defaultdict(list)
    for row in conn.execute(
        select(ORDER_T.c.matched_study_uid, ORDER_T.c.accession_number)
        .where(ORDER_T.c.matched_study_uid.in_(uids))
        .order_by(ORDER_T.c.accession_number)
    ):
        orders_of[row.matched_study_uid].append(row.accession_number)
    return [
        _study(conn, s, series_of[s.study_uid], instances_of, orders_of[s.study_uid])
        for s in studies
    ]


def _study(
    conn: Connection,
    study: Any,
    series: list[Any],
    instances_of: dict[str, list[Any]],
    accessions: list[str],
) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = [
        {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.study_uid}"}
    ]
    if study.accession_number:
        identifiers.append(
            {
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "value": study.accession_number,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": study.study_uid,
        "identifier": identifiers,
        "status": "available",
    }
    modalities = [m for m in (study.modalities_in_study or "").split("\\") if m]
    if modalities:
        resource["modality"] = [{"system": DCM, "code": m} for m in modalities]
    resource["subject"] = patient_reference(conn, study.patient_id, None)
    started = fhir_datetime(study.study_date, study.study_time)
    if started:
        resource["started"] = started
    if accessions:
        resource["basedOn"] = [
            {"reference": f"ServiceRequest/{order_id(a)}", "type": "ServiceRequest"}
            for a in accessions
        ]
    referrer = display_name(study.referring_physician_name)
    if referrer:
        resource["referrer"] = {"display": referrer}
    resource["endpoint"] = [{"reference": f"Endpoint/{ENDPOINT_ID}", "type": "Endpoint"}]
    resource["numberOfSeries"] = study.number_of_series
    resource["numberOfInstances"] = study.number_of_instances
    if study.study_description:
        resource["description"] = study.study_description
    if series:
        resource["series"] = [_series(s, instances_of[s.series_uid]) for s in series]
    return resource


def _series(series: Any, instances: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": series.series_uid,
        # Modality is 1..1 in R4; OT ("other", PS3.3 C.7.3.1.1.1) when the header had none.
        "modality": {"system": DCM, "code": series.modality or "OT"},
        "numberOfInstances": series.number_of_instances,
    }
    if series.series_number is not None:
        out["number"] = series.series_number
    if series.series_description:
        out["description"] = series.series_description
    started = fhir_datetime(series.series_date, series.series_time)
    if started:
        out["started"] = started
    if instances:
        out["instance"] = [_instance(i) for i in instances]
    return out


def _instance(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": row.sop_instance_uid,
        # R4 ImagingStudy.series.instance.sopClass: DICOM UIDs as URNs (RFC 3986 system).
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{row.sop_class_uid}"},
    }
    if row.instance_number is not None:
        out["number"] = row.instance_number
    return out


def read_study(conn: Connection, resource_id: str) -> dict[str, Any]:
    """The ImagingStudy with this id (Study Instance UID), or NotFoundError."""
    row = None
    if FHIR_ID.fullmatch(resource_id):
        row = conn.execute(select(STUDY_T).where(STUDY_T.c.study_uid == resource_id)).first()
    if row is None:
        raise NotFoundError(f"no ImagingStudy with id {resource_id}")
    return study_resources(conn, [row])[0]


def search_studies(conn: Connection, search: SearchRequest) -> Page:
    """ImagingStudies matching the search, one page."""
    t = STUDY_T
    where: list[ColumnElement[bool]] = []
    for values in split_or(search.values("_id")):
        where.append(t.c.study_uid.in_(values))
    for param in ("patient", "subject"):
        for values in split_or(search.values(param)):
            # The index holds no issuer for a study's Patient ID: the MRN alone matches.
            where.append(patient_condition(conn, values, param, STUDY_T.c.patient_id, None))
    for values in split_or(search.values("identifier")):
        where.append(or_(*(_identifier(v) for v in values)))
    for values in split_or(search.values("accession")):
        where.append(t.c.accession_number.in_([token(v)[1] for v in values]))
    for values in split_or(search.values("started")):
        where.append(or_(*(date_condition(t.c.study_date, v, "started") for v in values)))
    for values in split_or(search.values("modality")):
        codes = [token(v)[1] for v in values]
        where.append(
            exists(
                select(SERIES_T.c.series_uid).where(
                    SERIES_T.c.study_uid == t.c.study_uid, SERIES_T.c.modality.in_(codes)
                )
            )
        )
    for values in split_or(search.values("status")):
        where.append(true() if "available" in values else false())
    for values in split_or(search.values("basedon")):
        accessions = [accession_of(reference_id(v, "ServiceRequest", "basedon")) for v in values]
        where.append(
            t.c.study_uid.in_(
                select(ORDER_T.c.matched_study_uid).where(
                    ORDER_T.c.accession_number.in_([a for a in accessions if a])
                )
            )
        )
    order = [t.c.study_date.asc().nulls_last(), t.c.study_time.asc().nulls_last(), t.c.study_uid]
    total, rows = run_page(conn, t, where, order, search)
    return Page(total, study_resources(conn, rows))


def _identifier(value: str) -> ColumnElement[bool]:
    system, code = token(value)
    uid = code.removeprefix("urn:oid:")
    if system == DICOM_UID_SYSTEM or code.startswith("urn:oid:"):
        return STUDY_T.c.study_uid == uid
    return or_(STUDY_T.c.accession_number == code, STUDY_T.c.study_uid == uid)
