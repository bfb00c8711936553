"""AI-training access: which studies a training credential sees, and its UIDs.

A training principal (role `trainer`, purpose ai-training: node.auth.policy) sees a study only
when all of these hold at the consent cache's synced block:
- the study's Patient ID is the MRN of a local patient linked to a ledger address
  (node.services.patient_links), and the study names no other issuer for it
  (IssuerOfPatientID absent or equal to the link's; absent with two linked issuers for the
  same MRN is ambiguous, so invisible);
- that address has an AI-training grant in force for this node's member account or for all
  members, for this study or for all studies (ConsentCache.check).
Below study level it sees only images (instances with pixel rows) of series whose modality does
not commonly carry text burned into the pixels, and never an instance that declares burned-in
annotation: the Basic Profile does not clean pixels (docs/deidentification.md). The index
records each instance's declaration at store time, so searches filter in SQL, before limit and
offset (an older instance's is recorded when its study is first served: node.services.burned_in).

Everything else does not exist for it: searches leave it out and retrieves answer 404 with the
message an unknown UID gets. A stale cache or a node without a ledger answers 503, never an
empty list.

UIDs: the credential sees only de-identified UIDs (UidMapper under this node's training key).
The mapping is one-way, so a de-identified UID is resolved by mapping each candidate and
comparing: there is no table of pairs to keep current or to leak. A study UID is looked up among
the linked patients' stored studies (the index alone); consent is then checked for that study
only, so a WADO request costs one consent check, not one per linked study.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Final

from pydicom.dataset import Dataset
from sqlalchemy import Connection, func, select

from ledger.audit_events import EntityKind, uid_hash
from ledger.consent import ConsentCache, Purpose, study_hash
from node.errors import InvalidRequestError, NotFoundError
from node.services import retrieve
from node.services.archive import Archive
from node.services.burned_in import record_unrecorded
from node.services.consent_errors import ledger_errors
from node.services.deid import DeidOptions, UidMapper, effective_action
from node.services.patient_links import LinkedPatient, active_links
from node.services.query import Query, SearchScope
from node.services.query_keys import MatchKind, uid_is_valid
from node.services.store import declares_burned_in
from node.storage import records
from node.storage.crypto import load_or_create_secret
from node.storage.records import InstanceRow

# Modalities whose images often carry patient text in their pixels (ultrasound, secondary
# capture, photographs, endoscopy, other): never served for training, whatever they declare.
BURNED_IN_MODALITIES: Final = frozenset({"US", "SC", "XC", "ES", "OT"})
_UID_KEYS: Final = {"0020000D": "study", "0020000E": "series", "00080018": "instance"}
_CHUNK: Final = 500


def load_uid_key(path: Path) -> bytes:
    """The node's training UID secret (32 random bytes, made on first use, mode 0600).

    It must not change while a consortium trains: labels and caches are keyed by the UIDs it
    produces (`pacsmesh node training labels`).
    """
    return load_or_create_secret(path, "training UID key", min_bytes=16)


def refusal(header: Dataset) -> str | None:
    """Why an instance is never served for training (None: it may be)."""
    if declares_burned_in(header):
        return "declares burned-in annotation"
    if str(header.get("Modality", "") or "").strip().upper() in BURNED_IN_MODALITIES:
        return "is of a modality that often burns text into pixels"
    return None


@dataclass(frozen=True)
class VisibleStudy:
    """A study the training credential may see, with what an auditor needs to check it."""

    study_uid: str
    patient: str  # the patient's ledger address, lower case
    consent_ref: str  # 0x-hex consentRef of the permitting AI-training grant


def audit_entities(studies: Iterable[VisibleStudy]) -> list[tuple[EntityKind, str]]:
    """The entities a training access names: the stored studies, patients and grants."""
    out: list[tuple[EntityKind, str]] = []
    for s in studies:
        out += [
            (EntityKind.STUDY, uid_hash(s.study_uid)),
            (EntityKind.PATIENT, s.patient),
            (EntityKind.CONSENT, s.consent_ref),
        ]
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Resolved:
    """What a de-identified WADO URL addresses: its study, and its servable instances."""

    study: VisibleStudy
    rows: list[InstanceRow]


@dataclass(frozen=True)
class _Permitted:
    """A study some linked patient's AI-training grant covers (its owner not yet settled)."""

    mrn: str
    refs: dict[str, str]  # patient address (lower) -> consentRef of their grant


# Issuer per representative instance, keyed by (SOP Instance UID, content SHA-256): the header
# those name never changes, so reading it once per process is enough. Bounded: cleared whole.
IssuerCache = dict[tuple[str, str], str]
_ISSUER_CACHE_MAX: Final = 200_000


class TrainingView:
    """The archive as one training request may see it (build one per request)."""

    def __init__(
        self,
        archive: Archive,
        cache: ConsentCache,
        member: str,
        secret: bytes,
        options: DeidOptions,
        issuer_cache: IssuerCache | None = None,
    ) -> None:
        self.archive = archive
        self.cache = cache
        self.member = member.lower()
        self.secret = secret
        self.options = options
        self.mapper = UidMapper(secret)
        self._issuer_cache: IssuerCache = {} if issuer_cache is None else issuer_cache

    # -- visibility ------------------------------------------------------------------------

    @cached_property
    def _links(self) -> dict[str, list[LinkedPatient]]:
        """Active patient links by MRN."""
        by_mrn: dict[str, list[LinkedPatient]] = defaultdict(list)
        with self.archive.engine.connect() as conn:
            for link in active_links(conn):
                by_mrn[link.mrn].append(link)
        return by_mrn

    @cached_property
    def _candidates(self) -> dict[str, str]:
        """Stored Study Instance UID -> Patient ID, for every study of a linked MRN."""
        with self.archive.engine.connect() as conn:
            return dict(_studies_of(conn, sorted(self._links)))

    def _permit(self, study_uids: list[str]) -> dict[str, _Permitted]:
        """Those of these candidates with servable images that a linked patient's grant
        covers (consent only)."""
        with ledger_errors():
            self.cache.require_fresh()  # a stale cache answers 503, not an empty list
        with self.archive.engine.connect() as conn:
            # A study with nothing servable (only reports, or only ultrasound) is not listed.
            with_images = records.holding_images(conn, "study", study_uids, BURNED_IN_MODALITIES)
        out: dict[str, _Permitted] = {}
        for study_uid in study_uids:
            if study_uid not in with_images:
                continue
            mrn = self._candidates[study_uid]
            refs = {}
            for link in self._links[mrn]:
                ref = self._grant(link.address, study_uid)
                if ref is not None:
                    refs[link.address.lower()] = ref
            if refs:
                out[study_uid] = _Permitted(mrn, refs)
        return out

    def _settle(self, permitted: dict[str, _Permitted]) -> dict[str, VisibleStudy]:
        """Those permitted studies whose owner (by IssuerOfPatientID) holds the grant, their
        images' burned-in declarations recorded (for instances stored before the index
        held them) so that SQL can filter on them."""
        study_uids = sorted(permitted)
        issuers = self._issuers(study_uids)
        out: dict[str, VisibleStudy] = {}
        for study_uid in study_uids:
            owner = _owner(self._links[permitted[study_uid].mrn], issuers.get(study_uid, ""))
            refs = permitted[study_uid].refs
            if owner is not None and owner.address.lower() in refs:
                address = owner.address.lower()
                out[study_uid] = VisibleStudy(study_uid, address, refs[address])
        record_unrecorded(self.archive, sorted(out))
        # Now that every image's declaration is recorded: a study whose images all declare
        # burned-in annotation has nothing servable and is not listed.
        with self.archive.engine.connect() as conn:
            clean = records.holding_images(
                conn, "study", sorted(out), BURNED_IN_MODALITIES, declared_clean=True
            )
        return {uid: study for uid, study in out.items() if uid in clean}

    @cached_property
    def visible(self) -> dict[str, VisibleStudy]:
        """Stored Study Instance UID -> the visible study, for every study this view sees."""
        return self._settle(self._permit(sorted(self._candidates)))

    def _grant(self, address: str, study_uid: str) -> str | None:
        """The consentRef of the AI-training grant for this node, or None."""
        with ledger_errors():
            answer = self.cache.check(
                address, self.member, Purpose.AI_TRAINING, study_hash(study_uid)
            )
        if not answer.permitted or answer.consent_ref is None:
            return None
        return "0x" + answer.consent_ref.hex()

    def _issuers(self, study_uids: list[str]) -> dict[str, str]:
        """IssuerOfPatientID per study, from the header of one of its instances."""
        if not study_uids:
            return {}
        with self.archive.engine.connect() as conn:
            rows = records.find_instances(conn, _representatives(conn, study_uids))
        out: dict[str, str] = {}
        missing = []
        for row in rows:
            hit = self._issuer_cache.get((row.sop_instance_uid, row.content_sha256))
            if hit is None:
                missing.append(row)
            else:
                out[row.study_uid] = hit
        headers = retrieve.load_headers(self.archive, missing) if missing else {}
        if len(self._issuer_cache) + len(missing) > _ISSUER_CACHE_MAX:
            self._issuer_cache.clear()
        for row in missing:
            header = headers.get(row.sop_instance_uid)
            if header is None:
                continue  # no readable header: no issuer known, the study stays unseen
            issuer = str(header.get("IssuerOfPatientID", "") or "").strip()
            self._issuer_cache[(row.sop_instance_uid, row.content_sha256)] = issuer
            out[row.study_uid] = issuer
        return out

    @property
    def scope(self) -> SearchScope:
        """The search scope of this view."""
        return SearchScope(
            frozenset(self.visible), BURNED_IN_MODALITIES, images_only=True, declared_clean=True
        )

    # -- UIDs ------------------------------------------------------------------------------

    def deid_uid(self, uid: str) -> str:
        """The de-identified form of a stored UID (the one the credential sees)."""
        return self.mapper(uid)

    @cached_property
    def _study_by_deid(self) -> dict[str, str]:
        return {self.mapper(uid): uid for uid in self._candidates}

    def study(self, deid_study_uid: str) -> VisibleStudy | None:
        """The visible study a de-identified UID names, or None (consent is checked, and
        its issuer read, for that study only)."""
        stored = self._study_by_deid.get(deid_study_uid.strip())
        if stored is None:
            return None
        if "visible" in self.__dict__:  # already settled for the whole view
            return self.visible.get(stored)
        return self._settle(self._permit([stored])).get(stored)

    def _stored_uids(
        self, level: str, deid_uids: Iterable[str], within: str | None = None
    ) -> list[str]:
        """Stored UIDs (of visible studies, or of study `within`) whose de-identified form is
        among `deid_uids`."""
        wanted = {u.strip() for u in deid_uids}
        if level == "study":
            return sorted(
                s for d, s in self._study_by_deid.items() if d in wanted and s in self.visible
            )
        studies = [within] if within is not None else sorted(self.visible)
        with self.archive.engine.connect() as conn:
            found = _uids_below(conn, level, studies)
        return sorted(u for u in found if self.mapper(u) in wanted)

    # -- searches --------------------------------------------------------------------------

    def stored_query(
        self, query: Query, study_uid: str | None, series_uid: str | None
    ) -> tuple[Query, str | None, str | None] | None:
        """The query on stored UIDs, or None when it cannot match anything this view sees.

        Matching on an attribute that de-identification removes or replaces would tell the
        credential which study belongs to whom (PatientName=DOE*): refused, 400.
        """
        for name, uid in (("study", study_uid), ("series", series_uid)):
            if uid is not None and not uid_is_valid(uid):
                raise InvalidRequestError(f"the {name} UID in the path is not a valid UID")
        conditions = []
        for cond in query.conditions:
            attr = cond.attribute
            action = effective_action(int(attr.tag, 16), attr.vr, self.options)
            if cond.kind is MatchKind.UIDS and attr.tag in _UID_KEYS:
                stored = self._stored_uids(_UID_KEYS[attr.tag], cond.values)
                if not stored:
                    return None
                conditions.append(replace(cond, values=tuple(stored)))
            elif action == "K":
                conditions.append(cond)
            else:
                raise InvalidRequestError(
                    f"a training credential cannot match on {attr.keyword}: "
                    "de-identification removes or replaces it"
                )
        stored_study = stored_series = None
        if study_uid is not None:
            found = self.study(study_uid)
            if found is None:
                return None
            stored_study = found.study_uid
        if series_uid is not None:
            series = self._stored_uids("series", [series_uid], within=stored_study)
            if not series:
                return None
            stored_series = series[0]
        return replace(query, conditions=tuple(conditions)), stored_study, stored_series

    # -- retrieves -------------------------------------------------------------------------

    def resolve(
        self, deid_study: str, deid_series: str | None = None, deid_sop: str | None = None
    ) -> Resolved:
        """The instances a de-identified WADO URL addresses; 404 as for an unknown UID."""
        what = "instance" if deid_sop else "series" if deid_series else "study"
        study = self.study(deid_study)
        if study is None:
            raise NotFoundError(f"{what} not found")
        with self.archive.engine.connect() as conn:
            rows = _scoped_instances(conn, study.study_uid)
        rows = [
            r
            for r in rows
            if (deid_series is None or self.mapper(r.series_uid) == deid_series.strip())
            and (deid_sop is None or self.mapper(r.sop_instance_uid) == deid_sop.strip())
        ]
        if not rows:
            raise NotFoundError(f"{what} not found")
        return Resolved(study, rows)


def _owner(links: list[LinkedPatient], issuer: str) -> LinkedPatient | None:
    """The linked patient a study of this MRN belongs to, given the study's issuer."""
    if issuer:
        matching = [link for link in links if link.issuer == issuer]
        return matching[0] if len(matching) == 1 else None
    # No issuer in the study: unambiguous only when one record has this MRN.
    return links[0] if len(links) == 1 else None


def _studies_of(conn: Connection, mrns: list[str]) -> list[tuple[str, str]]:
    """(study UID, Patient ID) of every study whose Patient ID is one of `mrns`."""
    out: list[tuple[str, str]] = []
    for i in range(0, len(mrns), _CHUNK):
        stmt = select(records.STUDY.c.study_uid, records.STUDY.c.patient_id).where(
            records.STUDY.c.patient_id.in_(mrns[i : i + _CHUNK])
        )
        out += [(row[0], row[1]) for row in conn.execute(stmt)]
    return out


def _representatives(conn: Connection, study_uids: list[str]) -> list[str]:
    """One SOP Instance UID per study (the smallest), whose header speaks for the study."""
    inst = records.INSTANCE
    out: list[str] = []
    for i in range(0, len(study_uids), _CHUNK):
        stmt = (
            select(func.min(inst.c.sop_instance_uid))
            .where(inst.c.study_uid.in_(study_uids[i : i + _CHUNK]))
            .group_by(inst.c.study_uid)
        )
        out += [row[0] for row in conn.execute(stmt)]
    return out


def _servable_series(conn: Connection, study_uids: list[str]) -> list[str]:
    """Series holding at least one instance the view serves (an image outside burned-in-prone
    modalities that declares no burned-in annotation)."""
    return sorted(
        records.holding_images(
            conn, "series", study_uids, BURNED_IN_MODALITIES, declared_clean=True
        )
    )


def _uids_below(conn: Connection, level: str, study_uids: list[str]) -> list[str]:
    """Series or SOP Instance UIDs in these studies that a training view may see."""
    if level == "series":
        return _servable_series(conn, study_uids)
    out: list[str] = []
    for i in range(0, len(study_uids), _CHUNK):
        out += [r.sop_instance_uid for r in _scoped_instances(conn, *study_uids[i : i + _CHUNK])]
    return out


def _scoped_instances(conn: Connection, *study_uids: str) -> list[InstanceRow]:
    """Image instances of these studies outside burned-in-prone series that declare no
    burned-in annotation, in retrieve order."""
    return records.list_images(conn, list(study_uids), BURNED_IN_MODALITIES, declared_clean=True)
