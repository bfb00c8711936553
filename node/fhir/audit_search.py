"""Searching the node's audit log: a derived index beside the log, rebuilt from it on demand.

The log itself stores only canonical event bytes by leaf index. Searches (by patient, agent,
date, action, type, entity) read two small tables in the same database, ``audit_search_event``
(one row per leaf: time, type, action, outcome) and ``audit_search_ref`` (one row per agent,
role and entity reference of a leaf). They are filled lazily, before each search, from the
entries past the last indexed one: nothing is written on a request's path, and a crash loses
nothing, since the index is only ever a function of the log.

A patient is searched by every reference that denotes them: their pseudonyms (MRN with and
without issuer, FHIR Patient id), their ledger address, and the hashes of their studies and
orders in the index (an access to a study names the study, not the patient: resolving it would
cost a query on every request).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from ledger.audit_events import EventType, uid_hash
from node.errors import InvalidRequestError
from node.fhir.orders import order_id
from node.fhir.search import SearchRequest, split_or, token
from node.services.audit import NodeAudit, fhir_entities
from node.storage.index import Study
from node.storage.workflow_index import ImagingOrder, Patient

SEARCH_PARAMS: Final = frozenset(
    {
        "_id",
        "action",
        "agent",
        "agent-role",
        "date",
        "entity",
        "outcome",
        "patient",
        "type",
        "subtype",
    }
)
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
_QUERY_TYPES: Final = (EventType.QUERY.value, EventType.AUDIT_LOG_USED.value)
# FHIR restful-interaction code of an event, from its action (and for E, its type).
SUBTYPES: Final = {"C": "create", "R": "read", "U": "update", "D": "delete"}
_BATCH: Final = 5000
_DATE: Final = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_PREFIXES: Final = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


def subtype_of(event_type: str, action: str) -> str:
    """The restful-interaction code an event is reported with in ``AuditEvent.subtype``."""
    if action == "E":
        return "search-type" if event_type in _QUERY_TYPES else "operation"
    return SUBTYPES[action]


@dataclass(frozen=True)
class Hit:
    """One matching event: its leaf index and canonical bytes."""

    leaf_index: int
    body: bytes


class AuditIndex:
    """The search tables over one ``AuditLog``, and the searches on them."""

    def __init__(self, audit: NodeAudit) -> None:
        self.audit = audit
        self.engine: Engine = audit.log.engine
        md = sa.MetaData()
        self.events = sa.Table(
            "audit_search_event",
            md,
            sa.Column("leaf_index", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("recorded", sa.String(32), nullable=False, index=True),
            sa.Column("event_type", sa.String(8), nullable=False),
            sa.Column("action", sa.String(1), nullable=False),
            sa.Column("outcome", sa.Integer, nullable=False),
        )
        self.refs = sa.Table(
            "audit_search_ref",
            md,
            sa.Column("ref", sa.String(300), primary_key=True),
            sa.Column("leaf_index", sa.BigInteger, primary_key=True, autoincrement=False),
        )
        # The log's own entries table (ledger/audit_log.py, prefix "audit_"): read only.
        self.entries = sa.table(
            "audit_entries",
            sa.column("leaf_index", sa.BigInteger),
            sa.column("body", sa.LargeBinary),
        )
        md.create_all(self.engine, checkfirst=True)
        self._lock = threading.Lock()

    # -- keeping up with the log -----------------------------------------------------------------

    def catch_up(self) -> int:
        """Index every entry appended since the last call; returns the log size indexed."""
        with self._lock:
            size = self.audit.log.size()
            with self.engine.connect() as conn:
                done = conn.execute(sa.select(sa.func.max(self.events.c.leaf_index))).scalar()
            start = 0 if done is None else int(done) + 1
            while start < size:
                end = min(size, start + _BATCH)
                self._index_range(start, end)
                start = end
            return size

    def _index_range(self, start: int, end: int) -> None:
        e = self.entries
        event_rows: list[dict[str, Any]] = []
        ref_rows: set[tuple[str, int]] = set()
        with self.engine.begin() as conn:
            rows: Any = conn.execute(
                sa.select(e.c.leaf_index, e.c.body)
                .where(e.c.leaf_index >= start, e.c.leaf_index < end)
                .order_by(e.c.leaf_index)
            )
            for raw_index, body in rows:
                index = int(raw_index)
                event = json.loads(bytes(body))
                event_rows.append(
                    {
                        "leaf_index": index,
                        "recorded": event["recorded"],
                        "event_type": event["event_type"],
                        "action": event["action"],
                        "outcome": int(event["outcome"]),
                    }
                )
                for agent in event.get("agents", []):
                    ref_rows.add((f"agent:{agent['who']}", index))
                    ref_rows.add((f"role:{agent['role']}", index))
                for entity in event.get("entities", []):
                    ref_rows.add((entity["ref"], index))
            if event_rows:
                conn.execute(sa.insert(self.events), event_rows)
            if ref_rows:
                conn.execute(
                    sa.insert(self.refs), [{"ref": r, "leaf_index": i} for r, i in ref_rows]
                )

    # -- patients ----------------------------------------------------------------------------------

    def patient_refs(
        self,
        index_conn: Connection,
        *,
        patient_id: str | None = None,
        mrn: str | None = None,
        issuer: str = "",
        address: str | None = None,
    ) -> set[str]:
        """Every reference under which events about one patient, or by them, are recorded."""
        refs: set[str] = set()
        pt = Patient.__table__  # type: ignore[attr-defined]
        identities: set[tuple[str, str]] = set()
        keys: set[str] = set()
        if patient_id is not None:
            keys.add(patient_id)
            if patient_id.isdigit():
                row = index_conn.execute(
                    sa.select(pt.c.mrn, pt.c.issuer).where(pt.c.patient_key == int(patient_id))
                ).first()
                if row is not None:
                    identities.add((row.mrn, row.issuer or ""))
        if mrn is not None:
            identities.add((mrn, issuer))
            rows = index_conn.execute(
                sa.select(pt.c.patient_key).where(pt.c.mrn == mrn, pt.c.issuer == issuer)
            )
            keys.update(str(r.patient_key) for r in rows)
        if address:
            refs.update((address.lower(), f"agent:{address.lower()}"))
        refs.update(self.audit.patient_resource_ref(k) for k in keys)
        for mrn_value, issuer_value in identities:
            own = self.audit.patient_ref(mrn_value, issuer_value)
            # What the patient did themselves is recorded under them as the agent.
            refs.update((own, f"agent:{own}"))
            # DICOM queries rarely carry IssuerOfPatientID, and the study index does not keep it.
            refs.add(self.audit.patient_ref(mrn_value, ""))
            refs.update(self._record_refs(index_conn, mrn_value))
        return refs

    def _record_refs(self, conn: Connection, mrn: str) -> set[str]:
        st = Study.__table__  # type: ignore[attr-defined]
        io = ImagingOrder.__table__  # type: ignore[attr-defined]
        refs: set[str] = set()
        for row in conn.execute(
            sa.select(st.c.study_uid, st.c.accession_number).where(st.c.patient_id == mrn)
        ):
            refs.add(uid_hash(row.study_uid))
            if row.accession_number:
                refs.add(uid_hash(row.accession_number))
        for row in conn.execute(
            sa.select(io.c.accession_number, io.c.study_uid).where(io.c.patient_mrn == mrn)
        ):
            refs.add(uid_hash(row.accession_number))
            refs.add(uid_hash(f"ServiceRequest/{order_id(row.accession_number)}"))
            if row.study_uid:
                refs.add(uid_hash(row.study_uid))
        return refs

    # -- searching ---------------------------------------------------------------------------------

    def search(
        self, index_conn: Connection, search: SearchRequest, restrict_to: set[str] | None
    ) -> tuple[int, list[Hit]]:
        """The total and one page of events matching a FHIR search, newest first.

        ``restrict_to``: only events naming one of these references (a patient's own view).
        """
        self.catch_up()
        ev = self.events
        where: list[sa.ColumnElement[bool]] = []
        if restrict_to is not None:
            where.append(self._naming(restrict_to))
        for name, values in search.params.items():
            for alternatives in split_or(values):
                where.append(self._condition(index_conn, name, alternatives))
        with self.engine.connect() as conn:
            total = int(
                conn.execute(sa.select(sa.func.count()).select_from(ev).where(*where)).scalar_one()
            )
            if search.count == 0:
                return total, []
            page = (
                sa.select(ev.c.leaf_index)
                .where(*where)
                .order_by(ev.c.leaf_index.desc())
                .limit(search.count)
                .offset(search.offset)
            )
            found: Any = conn.execute(page).scalars()
            indices = [int(i) for i in found]
            return total, self._bodies(conn, indices)

    def read(self, leaf_index: int, restrict_to: set[str] | None) -> Hit | None:
        """One event by leaf index (None when absent or outside ``restrict_to``)."""
        if restrict_to is not None:
            self.catch_up()
            with self.engine.connect() as conn:
                allowed = conn.execute(
                    sa.select(self.refs.c.leaf_index).where(
                        self.refs.c.leaf_index == leaf_index, self.refs.c.ref.in_(restrict_to)
                    )
                ).first()
            if allowed is None:
                return None
        with self.engine.connect() as conn:
            hits = self._bodies(conn, [leaf_index])
        return hits[0] if hits else None

    def _bodies(self, conn: Connection, indices: Sequence[int]) -> list[Hit]:
        if not indices:
            return []
        e = self.entries
        rows: Any = conn.execute(
            sa.select(e.c.leaf_index, e.c.body).where(e.c.leaf_index.in_(indices))
        )
        found = {int(i): bytes(b) for i, b in rows}
        return [Hit(i, found[i]) for i in indices if i in found]

    def _naming(self, refs: Iterable[str]) -> sa.ColumnElement[bool]:
        wanted = sorted(set(refs))
        if not wanted:
            return sa.false()
        return self.events.c.leaf_index.in_(
            sa.select(self.refs.c.leaf_index).where(self.refs.c.ref.in_(wanted))
        )

    def _condition(
        self, index_conn: Connection, name: str, alternatives: list[str]
    ) -> sa.ColumnElement[bool]:
        ev = self.events
        if name == "_id":
            ids = [int(a) for a in alternatives if a.isdigit()]
            return ev.c.leaf_index.in_(ids)
        if name == "action":
            return ev.c.action.in_([a.upper() for a in alternatives])
        if name == "outcome":
            return ev.c.outcome.in_([int(a) for a in alternatives if a.isdigit()])
        if name == "type":
            return ev.c.event_type.in_([_type_code(a) for a in alternatives])
        if name == "subtype":
            return sa.or_(*(_subtype_condition(ev, token(a)[1]) for a in alternatives))
        if name == "date":
            return sa.or_(*(_date_condition(ev.c.recorded, a) for a in alternatives))
        if name == "agent":
            return self._naming(f"agent:{w}" for a in alternatives for w in (a, f"user:{a}"))
        if name == "agent-role":
            return self._naming(f"role:{token(a)[1]}" for a in alternatives)
        if name == "entity":
            return self._naming(r for a in alternatives for r in self._entity_refs(a))
        if name == "patient":
            refs: set[str] = set()
            for a in alternatives:
                if re.fullmatch(r"0x[0-9a-fA-F]{40}", a):
                    refs |= self.patient_refs(index_conn, address=a)
                else:
                    refs |= self.patient_refs(index_conn, patient_id=a.rstrip("/").split("/")[-1])
            return self._naming(refs)
        raise InvalidRequestError(f"unsupported search parameter {name}")

    def _entity_refs(self, value: str) -> list[str]:
        # A reference as recorded (sha256:…, 0x…) or a FHIR reference (ImagingStudy/<uid>).
        if re.fullmatch(r"sha256:[0-9a-f]{64}|0x[0-9a-fA-F]{40}|0x[0-9a-fA-F]{64}", value):
            return [value.lower()]
        parts = value.rstrip("/").split("/")
        if len(parts) >= 2:
            return [ref for _, ref in fhir_entities(self.audit, parts[-2], parts[-1])]
        return [value]


def _type_code(value: str) -> str:
    system, code = token(value)
    if system not in (None, "", DCM):
        return ""
    return code


def _subtype_condition(ev: sa.Table, code: str) -> sa.ColumnElement[bool]:
    actions = {v: k for k, v in SUBTYPES.items()}
    if code in actions:
        return ev.c.action == actions[code]
    if code == "search-type":
        return sa.and_(ev.c.action == "E", ev.c.event_type.in_(_QUERY_TYPES))
    if code == "operation":
        return sa.and_(ev.c.action == "E", ev.c.event_type.not_in(_QUERY_TYPES))
    return sa.false()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def date_range(value: str) -> tuple[str, datetime, datetime]:
    """A FHIR date search value as (prefix, start, end): the instants its precision covers."""
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    body = value[2:] if value[:2] in _PREFIXES else value
    m = _DATE.fullmatch(body)
    if m is None:
        raise InvalidRequestError("date must be a FHIR date or dateTime like 2026-11-24T10:00:00Z")
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    if hour is not None and zone is None:
        raise InvalidRequestError("a date with a time must carry a time zone (Z or +hh:mm)")
    tz: timezone = UTC
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        tz = timezone(sign * offset)
    try:
        start = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:
        raise InvalidRequestError("date is not a valid calendar date") from None
    if month is None:
        end = start.replace(year=start.year + 1)
    elif day is None:
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    elif hour is None:
        end = start + timedelta(days=1)
    elif second is None:
        end = start + timedelta(minutes=1)
    elif fraction is None:
        end = start + timedelta(seconds=1)
    else:
        end = start + timedelta(microseconds=1)
    return prefix, start, end


def _date_condition(col: sa.ColumnElement[Any], value: str) -> sa.ColumnElement[bool]:
    # FHIR R4 §3.1.1.4.4.5: the value covers a range at its precision; recorded is an instant.
    prefix, start, end = date_range(value)
    low, high = _iso(start), _iso(end)
    if prefix == "eq":
        return sa.and_(col >= low, col < high)
    if prefix == "ne":
        return sa.or_(col < low, col >= high)
    if prefix in ("gt", "sa"):
        return col >= high
    if prefix in ("lt", "eb"):
        return col < low
    if prefix == "ge":
        return col >= low
    return col < high  # le
