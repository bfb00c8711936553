"""FHIR Consent (R4 §9.5 http://hl7.org/fhir/R4/consent.html) from the ledger's grants.

A Consent is one grant key of the ConsentRegistry (patient, grantee, purpose, study) for an
address linked to a local patient; its id is the grant's consentRef (keccak256, 64 hex
digits), the same value a cross-hospital access records on chain. Status `active` while the
grant exists and has not expired, `inactive` once it is revoked or expired. The grant's
validity window is `provision.period`; the grantee member is `provision.actor` (role IRCP);
the purpose is a v3-ActReason code; a one-study grant names the study in `provision.data`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, select

from ledger.consent import ALL_MEMBERS, ALL_STUDIES, ConsentCache, GrantState, Purpose, study_hash
from node.errors import InvalidRequestError, NotFoundError
from node.fhir.patients import patient_mrn, patient_reference
from node.fhir.search import (
    Page,
    SearchRequest,
    reference_id,
    split_or,
    token,
)
from node.services.patient_links import LinkedPatient, active_links, linked_record
from node.storage.index import Study

STUDY_T: Final = cast(Table, Study.__table__)  # type: ignore[attr-defined]
SEARCH_PARAMS: Final = frozenset({"_id", "patient", "actor", "purpose", "status", "period"})
V3_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
MEMBER_SYSTEM: Final = "urn:pacsmesh:member-account"
CONSORTIUM_SYSTEM: Final = "urn:pacsmesh:consortium"
STUDY_HASH_SYSTEM: Final = "urn:pacsmesh:study-hash"
CONSENT_REF_SYSTEM: Final = "urn:pacsmesh:consent-ref"
PATIENT_ADDRESS_SYSTEM: Final = "urn:pacsmesh:patient-address"
# v3-ActReason purposes of use: TREAT (treatment), HRESCH (healthcare research), MLTRAINING
# (machine learning training, added to HL7 Terminology for AI training uses).
PURPOSE_CODES: Final[dict[Purpose, tuple[str, str]]] = {
    Purpose.TREATMENT: ("TREAT", "treatment"),
    Purpose.RESEARCH: ("HRESCH", "healthcare research"),
    Purpose.AI_TRAINING: ("MLTRAINING", "machine learning training"),
}
_PURPOSE_BY_CODE: Final = {code: p for p, (code, _) in PURPOSE_CODES.items()}

MemberName = Callable[[str], str]
Record = tuple[str, str]  # (MRN, issuer) of a local patient


def instant(seconds: int) -> str:
    """Unix seconds as a FHIR dateTime (UTC)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def grant_status(state: GrantState, now: float) -> str:
    """active, or inactive once revoked or expired."""
    g = state.grant
    if state.revoked or (g.expires_at and now >= g.expires_at):
        return "inactive"
    return "active"


def _actor(grantee: str, member_name: MemberName) -> dict[str, Any]:
    if grantee == ALL_MEMBERS or grantee.lower() == ALL_MEMBERS:
        return {
            "type": "Organization",
            "identifier": {"system": CONSORTIUM_SYSTEM, "value": "all-members"},
            "display": "every active consortium member",
        }
    ref: dict[str, Any] = {
        "type": "Organization",
        "identifier": {"system": MEMBER_SYSTEM, "value": grantee},
    }
    name = member_name(grantee)
    if name:
        ref["display"] = name
    return ref


def _study_uids(conn: Connection, mrn: str) -> dict[bytes, str]:
    """keccak256(StudyInstanceUID) → UID for this patient's local studies."""
    stmt = select(STUDY_T.c.study_uid).where(STUDY_T.c.patient_id == mrn)
    uids: list[str] = list(conn.execute(stmt).scalars())
    return {study_hash(uid): uid for uid in uids}


def consent_resource(
    conn: Connection,
    state: GrantState,
    record: LinkedPatient,
    *,
    member_name: MemberName,
    registry: str,
    chain_id: int,
    now: float,
    studies: dict[bytes, str] | None = None,
) -> dict[str, Any]:
    """One grant as a FHIR Consent."""
    g = state.grant
    code, display = PURPOSE_CODES[g.purpose]
    provision: dict[str, Any] = {
        "type": "permit",
        "actor": [
            {
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "reference": _actor(g.grantee, member_name),
            }
        ],
        "purpose": [{"system": V3_ACT_REASON, "code": code, "display": display}],
    }
    period: dict[str, str] = {}
    if g.valid_from:
        period["start"] = instant(g.valid_from)
    if g.expires_at:
        period["end"] = instant(g.expires_at)
    if period:
        provision["period"] = period
    if g.study_hash != ALL_STUDIES:
        studies = _study_uids(conn, record.mrn) if studies is None else studies
        uid = studies.get(g.study_hash)
        study_ref: dict[str, Any] = (
            {"reference": f"ImagingStudy/{uid}", "type": "ImagingStudy"}
            if uid
            else {
                "type": "ImagingStudy",
                "identifier": {"system": STUDY_HASH_SYSTEM, "value": "0x" + g.study_hash.hex()},
            }
        )
        provision["data"] = [{"meaning": "instance", "reference": study_ref}]
    patient = patient_reference(conn, record.mrn, record.issuer)
    return {
        "resourceType": "Consent",
        "id": state.ref.hex(),
        "identifier": [{"system": CONSENT_REF_SYSTEM, "value": "0x" + state.ref.hex()}],
        "status": grant_status(state, now),
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                    "display": "Privacy Consent",
                }
            ]
        },
        "category": [
            {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Consent"}]}
        ],
        "patient": patient,
        "performer": [
            {
                **patient,
                "identifier": {"system": PATIENT_ADDRESS_SYSTEM, "value": g.patient},
            }
        ],
        # The rule lives on chain: the consortium's ConsentRegistry on this chain.
        "policy": [
            {
                "authority": f"urn:pacsmesh:chain:{chain_id}",
                "uri": f"urn:pacsmesh:consent-registry:{registry}",
            }
        ],
        "provision": provision,
    }


class ConsentView:
    """Builds Consent resources for the node's linked patients from the consent index."""

    def __init__(
        self, index: ConsentCache, member_name: MemberName, registry: str, chain_id: int
    ) -> None:
        self.index = index
        self.member_name = member_name
        self.registry = registry
        self.chain_id = chain_id

    def _all(self, conn: Connection, links: list[LinkedPatient]) -> list[dict[str, Any]]:
        self.index.require_fresh()
        now = max(time.time(), float(self.index.synced_block_time))
        out = []
        for record in links:
            studies: dict[bytes, str] | None = None
            for state in self.index.states_of(record.address):
                if state.grant.study_hash != ALL_STUDIES and studies is None:
                    studies = _study_uids(conn, record.mrn)
                out.append(
                    consent_resource(
                        conn,
                        state,
                        record,
                        member_name=self.member_name,
                        registry=self.registry,
                        chain_id=self.chain_id,
                        now=now,
                        studies=studies,
                    )
                )
        return out

    def read(self, conn: Connection, consent_id: str, only: Record | None = None) -> dict[str, Any]:
        """The Consent with this id (a consentRef in hex), or NotFoundError.

        `only` limits the answer to one patient record (a patient's own compartment).
        """
        self.index.require_fresh()
        wanted = consent_id.lower().removeprefix("0x")
        now = max(time.time(), float(self.index.synced_block_time))
        for record in _only(active_links(conn), only):
            for state in self.index.states_of(record.address):
                if state.ref.hex() == wanted:  # build only the one asked for
                    return consent_resource(
                        conn, state, record, member_name=self.member_name,
                        registry=self.registry, chain_id=self.chain_id, now=now,
                    )  # fmt: skip
        raise NotFoundError(f"no Consent with id {consent_id}")

    def resource_for(self, conn: Connection, state: GrantState) -> dict[str, Any]:
        """The Consent for one grant state of a linked address (e.g. one just relayed)."""
        record = linked_record(conn, state.grant.patient)
        if record is None:
            raise NotFoundError("the patient of this grant is not linked at this node")
        now = max(time.time(), float(self.index.synced_block_time))
        return consent_resource(
            conn, state, record, member_name=self.member_name,
            registry=self.registry, chain_id=self.chain_id, now=now,
        )  # fmt: skip

    def search(self, conn: Connection, search: SearchRequest, only: Record | None = None) -> Page:
        """Consents matching the search, one page (of one patient record, with `only`)."""
        links = _only(active_links(conn), only)
        for values in split_or(search.values("patient")):
            records: set[tuple[str, str]] = set()
            for v in values:
                found = patient_mrn(conn, reference_id(v, "Patient", "patient"))
                if found is not None:
                    records.add(found)
            links = [lk for lk in links if (lk.mrn, lk.issuer) in records]
        resources = self._all(conn, links)
        for values in split_or(search.values("_id")):
            ids = {v.lower().removeprefix("0x") for v in values}
            resources = [r for r in resources if r["id"] in ids]
        for values in split_or(search.values("status")):
            resources = [r for r in resources if r["status"] in values]
        for values in split_or(search.values("purpose")):
            codes = {_purpose_code(v) for v in values}
            resources = [r for r in resources if r["provision"]["purpose"][0]["code"] in codes]
        for values in split_or(search.values("actor")):
            resources = [r for r in resources if any(_actor_matches(r, v) for v in values)]
        for values in split_or(search.values("period")):
            resources = [r for r in resources if any(_period_matches(r, v) for v in values)]
        page = resources[search.offset : search.offset + search.count]
        return Page(len(resources), page)


def _only(links: list[LinkedPatient], only: Record | None) -> list[LinkedPatient]:
    if only is None:
        return links
    return [lk for lk in links if (lk.mrn, lk.issuer) == only]


def _purpose_code(value: str) -> str:
    system, code = token(value)
    if system not in (None, V3_ACT_REASON) or code not in _PURPOSE_BY_CODE:
        known = ", ".join(_PURPOSE_BY_CODE)
        raise InvalidRequestError(f"purpose must be a v3-ActReason code: {known}")
    return code


def _actor_matches(resource: dict[str, Any], value: str) -> bool:
    """actor= takes a member account, its hospital id, `all`, or `system|value`."""
    ref = resource["provision"]["actor"][0]["reference"]
    system, code = token(value)
    ident = ref["identifier"]
    if system is not None:
        return bool(system == ident["system"] and code.lower() == ident["value"].lower())
    if code.lower() in ("all", "all-members"):
        return bool(ident["system"] == CONSORTIUM_SYSTEM)
    code = code.removeprefix("Organization/")
    return bool(code.lower() == str(ident["value"]).lower() or code == ref.get("display"))


def _period_matches(resource: dict[str, Any], value: str) -> bool:
    """R4 date search on the grant's period (§3.1.1.4.4.5: prefixes eq, ge, gt, le, lt)."""
    has_prefix = value[:2] in ("eq", "ge", "gt", "le", "lt", "ne", "sa", "eb")
    prefix, text = (value[:2], value[2:]) if has_prefix else ("eq", value)
    low, high = _date_range(text)
    period = resource["provision"].get("period", {})
    start = _parse_instant(period["start"]) if "start" in period else float("-inf")
    end = _parse_instant(period["end"]) if "end" in period else float("inf")
    if prefix == "eq":
        return start < high and end > low  # the grant applies at some time on that date
    if prefix == "ne":
        return not (start < high and end > low)
    if prefix in ("gt", "sa"):
        return end > high
    if prefix in ("lt", "eb"):
        return start < low
    if prefix == "ge":
        return end > low
    return start < high  # le


def _date_range(text: str) -> tuple[float, float]:
    """[low, high) in Unix seconds for a FHIR date of year, month, day or instant precision."""
    try:
        if "T" in text:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp(), moment.timestamp() + 1
        parts = [int(p) for p in text.split("-")]
        if len(parts) == 1:
            start, stop = (
                datetime(parts[0], 1, 1, tzinfo=UTC),
                datetime(parts[0] + 1, 1, 1, tzinfo=UTC),
            )
        elif len(parts) == 2:
            start = datetime(parts[0], parts[1], 1, tzinfo=UTC)
            stop = datetime(parts[0] + parts[1] // 12, parts[1] % 12 + 1, 1, tzinfo=UTC)
        elif len(parts) == 3:
            start = datetime(parts[0], parts[1], parts[2], tzinfo=UTC)
            stop = datetime.fromtimestamp(start.timestamp() + 86400, UTC)
        else:
            raise ValueError(text)
    except ValueError:
        raise InvalidRequestError(
            "period must be a FHIR date like 2026-01-15 (optional prefix)"
        ) from None
    return start.timestamp(), stop.timestamp()


def _parse_instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
