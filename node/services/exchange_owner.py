"""The owner's side of the exchange: what a member may see of a patient, and the transfer.

A peer (an active member, identified by its client certificate) asks for a patient by the
address the patient's key controls. This node answers only about its own studies (never copies
it received from others) of the local patient linked to that address, and only those the
patient's consent covers for that member, purpose and study at the chain's head.
Nothing is said of other studies, not even how many there are.

A transfer streams one study's instances, straight from the sealed blobs, after the same check
per study or a verified break-glass record on chain; the network API frames them as
multipart/related (as WADO-RS does, `node.dicom.multipart.stream_parts`). Its one audit event
is durable before the close delimiter leaves: a requester never holds a complete transfer the
owner's log lacks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, select

from ledger.audit_events import AuditEvent, Outcome
from ledger.audit_transfers import owner_event
from ledger.break_glass import break_glass_record
from ledger.consent import ALL_STUDIES, Purpose, study_hash
from ledger.consortium import Member
from node.dicom.multipart import Part
from node.ledger_link import LedgerLink
from node.services import retrieve
from node.services.archive import Archive
from node.services.audit import NodeAudit
from node.services.consent_decisions import ConsentDecisions
from node.services.consent_errors import ledger_errors
from node.services.exchange import (
    PEER_STUDIES_PATH,
    TransferRefusedError,
    audit_purpose,
    consent_basis,
)
from node.services.metadata import metadata_loader
from node.services.patient_links import linked_record
from node.services.provenance import copies_filter
from node.services.query import QueryLevel, parse_query, search
from node.services.syntaxes import APPLICATION_DICOM
from node.storage import records
from node.storage.index import Study
from node.storage.records import InstanceRow

STUDY_T: Final = cast(Table, Study.__table__)  # type: ignore[attr-defined]
RETRIEVE_URL: Final = "00081190"
# Patient-identifying study attributes: answered for treatment only. A research or AI-training
# requester learns which studies it may use, not whose they are.
_IDENTIFYING_TAGS: Final = frozenset(
    {
        "00080050",  # Accession Number
        "00080090",  # Referring Physician's Name
        "00100010",  # Patient's Name
        "00100020",  # Patient ID
        "00100021",  # Issuer of Patient ID
        "00100030",  # Patient's Birth Date
        "00100040",  # Patient's Sex
        "00200010",  # Study ID
    }
)
# The one refusal a peer gets for a study it may not have, whatever the cause (no such study,
# another patient's, no consent): anything finer would tell it which studies exist here.
NOT_COVERED: Final = (
    "no consent in force covers this study of this patient for your hospital and purpose"
)


@dataclass(frozen=True)
class PeerCaller:
    """The member calling (from its certificate) and where it called from."""

    member: Member
    host: str | None

    @property
    def account(self) -> str:
        """The member's account in lower case."""
        return self.member.account.lower()


@dataclass(frozen=True)
class TransferPlan:
    """An authorized transfer: what will be sent, to whom, on which consent basis."""

    caller: PeerCaller
    transfer_id: str
    study_uid: str
    patient: str
    purpose: Purpose
    consent: str | None  # consentRef or break-glass:<tx>; None for own-hospital care
    rows: list[InstanceRow]

    def part_sizes(self) -> list[tuple[str, int]]:
        """Each part's Content-Type and size, as `instances` yields them (for Content-Length)."""
        return [(APPLICATION_DICOM, row.size_bytes) for row in self.rows]


class ExchangeOwner:
    """The owner's rules: consented studies for a peer, and authorized transfers."""

    def __init__(
        self,
        archive: Archive,
        audit: NodeAudit,
        link: LedgerLink,
        break_glass_max_age: int,
    ) -> None:
        self.archive = archive
        self.audit = audit
        self.link = link
        self.break_glass_max_age = break_glass_max_age

    # -- search ------------------------------------------------------------------------------

    def consented_studies(
        self, caller: PeerCaller, patient: str, purpose: Purpose
    ) -> dict[str, Any]:
        """The caller's view of a patient here: covered studies with their consentRef."""
        decisions = ConsentDecisions(self.link).at_head()
        with self.archive.engine.connect() as conn:
            own = _patient_studies(conn, patient)
        covered: dict[str, str | None] = {}
        block = self.link.cache.synced_block
        for study_uid in own:
            decision = decisions.decide(caller.account, patient, purpose, study_uid)
            block = decision.block
            if decision.permitted:
                covered[study_uid] = decision.consent_ref
        studies: list[dict[str, Any]] = []
        if covered:
            base = self.archive.settings.base_url
            query = parse_query(QueryLevel.STUDY, [("StudyInstanceUID", ",".join(covered))])
            with self.archive.engine.connect() as conn:
                found = search(
                    conn,
                    query,
                    base_url=base + "/dicom-web",
                    load_metadata=metadata_loader(self.archive, base + "/dicom-web"),
                )
            for dataset in found:
                study_uid = str(dataset["0020000D"]["Value"][0])
                dataset[RETRIEVE_URL] = {
                    "vr": "UR",
                    "Value": [f"{base}{PEER_STUDIES_PATH}/{study_uid}"],
                }
                if purpose is not Purpose.TREATMENT:
                    dataset = {k: v for k, v in dataset.items() if k not in _IDENTIFYING_TAGS}
                studies.append({"study": dataset, "consentRef": covered[study_uid]})
        return {
            "patient": patient,
            "purpose": purpose.label,
            "hospitalId": self.link.hospital_id(),
            "block": block,
            "studies": studies,
        }

    # -- transfer ----------------------------------------------------------------------------

    def authorize(
        self,
        caller: PeerCaller,
        transfer_id: str,
        study_uid: str,
        patient: str,
        purpose: Purpose,
        break_glass_tx: str | None,
    ) -> TransferPlan:
        """Check one transfer; a refusal is audited (with the transfer id) and raised as 403."""
        try:
            consent = self._basis(caller, study_uid, patient, purpose, break_glass_tx)
            with self.archive.engine.connect() as conn:
                rows = records.list_instances(conn, study_uid)
            if not rows:
                raise TransferRefusedError(NOT_COVERED)
        except TransferRefusedError:
            self._record(
                caller, transfer_id, study_uid, patient, purpose, None, Outcome.MINOR_FAILURE
            )
            raise
        return TransferPlan(caller, transfer_id, study_uid, patient, purpose, consent, rows)

    def _basis(
        self,
        caller: PeerCaller,
        study_uid: str,
        patient: str,
        purpose: Purpose,
        break_glass_tx: str | None,
    ) -> str | None:
        if purpose is not Purpose.TREATMENT:
            # Identified studies leave a hospital for treatment only; research and AI training
            # read de-identified data through the training path (docs/deidentification.md).
            raise TransferRefusedError(
                "studies are transferred between hospitals for treatment only"
            )
        with self.archive.engine.connect() as conn:
            if study_uid not in _patient_studies(conn, patient, study_uid):
                raise TransferRefusedError(NOT_COVERED)
        if break_glass_tx is not None:
            self._check_break_glass(caller, study_uid, patient, break_glass_tx)
            return consent_basis(None, break_glass_tx)
        # At the head: a grant revoked in the block just mined no longer lets the study out.
        decisions = ConsentDecisions(self.link).at_head()
        decision = decisions.decide(caller.account, patient, purpose, study_uid)
        if not decision.permitted:
            raise TransferRefusedError(NOT_COVERED)
        return decision.consent_ref

    def _check_break_glass(
        self, caller: PeerCaller, study_uid: str, patient: str, tx_hash: str
    ) -> None:
        with ledger_errors():
            record = break_glass_record(self.link.chain, self.link.deployment, tx_hash)
            head_time = self.link.chain.block_timestamp("latest") if record else 0
        if record is None:
            raise TransferRefusedError(
                "the break-glass transaction holds no BreakGlass record of the ConsentRegistry"
            )
        if record.member.lower() != caller.account:
            raise TransferRefusedError("the break-glass record was made by another member")
        if record.patient.lower() != patient:
            raise TransferRefusedError("the break-glass record names another patient")
        if record.study_hash not in (study_hash(study_uid), ALL_STUDIES):
            raise TransferRefusedError("the break-glass record names another study")
        now = max(time.time(), head_time)
        if now - record.block_time > self.break_glass_max_age:
            raise TransferRefusedError(
                f"the break-glass record is older than {self.break_glass_max_age} s: "
                "break the glass again"
            )

    async def instances(self, plan: TransferPlan) -> AsyncGenerator[Part, None]:
        """The study's instances as stored, one part each; once the last has been sent (the
        caller asks for the next part), the audit event is made durable before this ends."""
        finished = False
        try:
            for row in plan.rows:
                yield APPLICATION_DICOM, retrieve.iter_instance(self.archive, row)
            await self.audit.record_async(self._event(plan, Outcome.SUCCESS))
            finished = True
        finally:
            if not finished:
                # The requester went away or a blob failed: the transfer did not happen in
                # full. Queued without waiting: a cancelled task cannot await here.
                self.audit.recorder.record_async(self._event(plan, Outcome.SERIOUS_FAILURE))

    # -- audit -------------------------------------------------------------------------------

    def _event(self, plan: TransferPlan, outcome: Outcome) -> AuditEvent:
        return self._build(
            plan.caller,
            plan.transfer_id,
            plan.study_uid,
            plan.patient,
            plan.purpose,
            plan.consent,
            outcome,
        )

    def _record(
        self,
        caller: PeerCaller,
        transfer_id: str,
        study_uid: str,
        patient: str,
        purpose: Purpose,
        consent: str | None,
        outcome: Outcome,
    ) -> None:
        event = self._build(caller, transfer_id, study_uid, patient, purpose, consent, outcome)
        self.audit.record(event)

    def _build(
        self,
        caller: PeerCaller,
        transfer_id: str,
        study_uid: str,
        patient: str,
        purpose: Purpose,
        consent: str | None,
        outcome: Outcome,
    ) -> AuditEvent:
        return owner_event(
            source=self.audit.source,
            owner=self.link.account,
            requester=caller.account,
            requester_host=caller.host,
            patient=patient,
            study_uid=study_uid,
            transfer_id=transfer_id,
            consent=consent,
            purpose=audit_purpose(purpose),
            outcome=outcome,
        )


def _patient_studies(conn: Connection, patient: str, study_uid: str | None = None) -> list[str]:
    """This node's own studies of the local patient linked to the address (none: no link)."""
    record = linked_record(conn, patient)
    if record is None:
        return []
    # The index keeps no issuer per study: the MRN alone names the patient's studies, as the
    # FHIR ImagingStudy search does.
    stmt = select(STUDY_T.c.study_uid).where(
        STUDY_T.c.patient_id == record.mrn, copies_filter(STUDY_T.c.study_uid)
    )
    if study_uid is not None:
        stmt = stmt.where(STUDY_T.c.study_uid == study_uid)
    uids: list[str] = list(conn.execute(stmt.order_by(STUDY_T.c.study_uid)).scalars())
    return uids
