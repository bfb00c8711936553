"""The node's persistent, append-only audit log: an RFC 6962 Merkle tree in SQL.

Three tables (prefix ``audit_`` by default) on any SQLAlchemy engine — SQLite or PostgreSQL:

- ``entries``: leaf index → the event's canonical JSON bytes (the source of truth);
- ``nodes``: the hash of every *complete* subtree, ``(level, index)`` covering leaves
  ``[index << level, (index + 1) << level)``; level 0 holds the leaf hashes. That is at most
  2n rows, written once and never changed, and every RFC 6962 root or proof is a fold of
  O(log n) of them (``ledger.merkle.perfect_subtrees``), fetched in one query;
- ``head``: the tree size, one row. Every append starts by updating it, which takes the write
  lock (SQLite) or the row lock (PostgreSQL) first, so writers in any number of processes are
  serialised and indices stay dense.

The log remembers which (size, root) it anchored on chain (``anchors``), but ``verify`` trusts
none of the stored hashes: it recomputes every leaf and subtree from the entries and checks them
against the (size, root) pairs the caller read from the chain.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ledger import merkle
from ledger.audit_events import AuditEvent, parse_event

FindingKind = Literal[
    "edited", "missing", "reordered", "extra", "anchor-mismatch", "inconsistent-anchors", "tree"
]
_ZERO = bytes(merkle.HASH_SIZE)
_INDEX_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class AuditLogError(Exception):
    """The audit log cannot answer: a bad index or size, or storage that is damaged."""


@dataclass(frozen=True)
class AnchorRecord:
    """A (size, root) this log anchored, and the transaction that carried it."""

    size: int
    root: bytes
    tx_hash: str
    block_number: int


@dataclass(frozen=True)
class Finding:
    """One way the stored log fails to match its anchors; ``index`` names the entry if known."""

    kind: FindingKind
    index: int | None
    detail: str

    def __str__(self) -> str:
        where = f"entry {self.index}" if self.index is not None else "log"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class EncodedEvent:
    """An audit event validated and encoded as a leaf: its canonical bytes and leaf hash.

    Made by ``encode_event``, so that callers can do that work in their own threads before the
    commit, instead of inside it (the batching recorder does).
    """

    body: bytes
    leaf_hash: bytes


def encode_event(event: AuditEvent | Mapping[str, Any]) -> EncodedEvent:
    """Validate an event and encode its leaf (raises ``AuditEventError`` when invalid)."""
    body = _leaf_bytes(event)
    return EncodedEvent(body, merkle.leaf_hash(body))


class _Pending:
    """An ``append`` waiting for a group commit, or promoted to commit the queue itself."""

    __slots__ = ("entry", "error", "index", "lead", "wakeup")

    def __init__(self, entry: EncodedEvent) -> None:
        self.entry = entry
        self.index = -1
        self.lead = False
        self.error: BaseException | None = None
        self.wakeup = threading.Event()


class AuditLog:
    """An append-only RFC 6962 log of audit events, persisted through SQLAlchemy."""

    def __init__(self, engine: Engine, table_prefix: str = "audit_") -> None:
        self.engine = engine
        self.metadata = sa.MetaData()
        p = table_prefix
        self._entries = sa.Table(
            f"{p}entries",
            self.metadata,
            # INTEGER PRIMARY KEY on SQLite is the rowid itself: no second index to maintain.
            sa.Column("leaf_index", _INDEX_TYPE, primary_key=True, autoincrement=False),
            sa.Column("body", sa.LargeBinary, nullable=False),
        )
        self._nodes = sa.Table(
            f"{p}nodes",
            self.metadata,
            sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
            sa.Column("node_index", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("hash", sa.LargeBinary(merkle.HASH_SIZE), nullable=False),
            # Clustered on (level, node_index): a node lookup is one B-tree search.
            sqlite_with_rowid=False,
        )
        self._head = sa.Table(
            f"{p}head",
            self.metadata,
            sa.Column("head_id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("tree_size", sa.BigInteger, nullable=False),
        )
        self._anchors = sa.Table(
            f"{p}anchors",
            self.metadata,
            sa.Column("tx_hash", sa.String(80), primary_key=True),
            sa.Column("tree_size", sa.BigInteger, nullable=False, index=True),
            sa.Column("root", sa.LargeBinary(merkle.HASH_SIZE), nullable=False),
            sa.Column("block_number", sa.BigInteger, nullable=False),
        )
        self._create_tables()
        marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}
        if engine.dialect.paramstyle not in marks:
            raise AuditLogError(f"unsupported database driver {engine.dialect.driver!r}")
        mark = marks[engine.dialect.paramstyle]
        quote = engine.dialect.identifier_preparer.quote
        entries, nodes, head_t = (quote(t.name) for t in (self._entries, self._nodes, self._head))
        # The append path talks to the driver directly with these fixed statements rather than
        # building and compiling SQLAlchemy expressions per commit (docs/ledger-audit.md).
        self._insert_entry_sql = f"INSERT INTO {entries} (leaf_index, body) VALUES ({mark}, {mark})"
        self._insert_node_sql = (
            f"INSERT INTO {nodes} (level, node_index, hash) VALUES ({mark}, {mark}, {mark})"
        )
        # Compare-and-set: moves the head from the size this process last wrote, and matches
        # no row when another process appended since (then the head is read under the lock).
        self._advance_head_sql = (
            f"UPDATE {head_t} SET tree_size = {mark} WHERE head_id = 1 AND tree_size = {mark}"
        )
        self._grow_head_sql = (
            f"UPDATE {head_t} SET tree_size = tree_size + {mark} WHERE head_id = 1"
        )
        self._read_head_sql = f"SELECT tree_size FROM {head_t} WHERE head_id = 1"
        self._driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        # In-memory frontier of the tree: its size and the perfect subtrees (level, hash) whose
        # fold is the root. Appends extend it without reading; it is reloaded (O(log n)) when
        # another process has appended meanwhile.
        # One tuple, replaced whole, so readers in other threads never pair a size with
        # another size's peaks.
        self._frontier: tuple[int, list[tuple[int, bytes]]] = (0, [])
        self._commit_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False

    @classmethod
    def open(
        cls, url_or_path: str | Path, table_prefix: str = "audit_", sqlite_sync: str = "FULL"
    ) -> AuditLog:
        """Open a log by database URL, or by file path (SQLite, created if absent).

        `sqlite_sync` is SQLite's `synchronous` in WAL mode: FULL (the default) makes every
        commit survive power loss; NORMAL makes it survive a crash of the process (the OS holds
        the write) and flushes at checkpoints, for a fraction of the cost per commit.
        """
        if sqlite_sync not in ("FULL", "NORMAL"):
            raise ValueError(f"sqlite_sync must be FULL or NORMAL, not {sqlite_sync!r}")
        url = str(url_or_path)
        if "://" not in url:
            path = Path(url).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{path}"
        engine = sa.create_engine(url)
        if engine.dialect.name == "sqlite":

            def pragmas(dbapi_connection: Any, _record: Any) -> None:
                _sqlite_pragmas(dbapi_connection, sqlite_sync)

            sa.event.listen(engine, "connect", pragmas)
        return cls(engine, table_prefix=table_prefix)

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()

    # -- appending ---------------------------------------------------------------------------

    def append(self, event: AuditEvent | Mapping[str, Any]) -> int:
        """Record one event; returns its leaf index once it is committed (durable)."""
        pending = _Pending(encode_event(event))
        # Group commit: one caller at a time (the leader) commits everything queued in one
        # transaction, so concurrent callers share one fsync; the others sleep until their
        # batch is durable, or until they are promoted to lead the next batch.
        with self._queue_lock:
            self._queue.append(pending)
            if not self._leading:
                self._leading = pending.lead = True
        if not pending.lead:
            pending.wakeup.wait()
        if pending.lead:
            self._commit_queue()
        if pending.error is not None:
            raise AuditLogError(
                f"the audit event could not be recorded ({type(pending.error).__name__})"
            ) from pending.error
        return pending.index

    def _commit_queue(self) -> None:
        with self._queue_lock:
            batch, self._queue = self._queue, []
        try:
            with self._commit_lock:
                first = self._commit([p.entry for p in batch])
        except BaseException as exc:
            for p in batch:
                p.error = exc
        else:
            for offset, p in enumerate(batch):
                p.index = first + offset
        finally:
            with self._queue_lock:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].wakeup.set()
                else:
                    self._leading = False
            for p in batch:
                p.lead = False
                p.wakeup.set()

    def append_many(self, events: Iterable[AuditEvent | Mapping[str, Any]]) -> list[int]:
        """Record several events in one transaction; returns their leaf indices."""
        return self.append_encoded([encode_event(e) for e in events])

    def append_encoded(self, entries: Sequence[EncodedEvent]) -> list[int]:
        """Record events already encoded by ``encode_event`` in one transaction."""
        if not entries:
            return []
        with self._commit_lock:
            try:
                first = self._commit(entries)
            except (sa.exc.SQLAlchemyError, self._driver_error) as exc:
                raise AuditLogError(
                    f"the audit events could not be recorded ({type(exc).__name__})"
                ) from exc
        return list(range(first, first + len(entries)))

    def _commit(self, entries: Sequence[EncodedEvent]) -> int:
        n = len(entries)
        cached_size, cached_peaks = self._frontier
        with self.engine.connect() as conn:
            # The driver's own connection runs the fixed statements; the one read that is not
            # fixed (the frontier, after another process wrote) is ``_fetch`` on the same
            # connection, in the same transaction.
            dbapi = conn.connection
            try:
                cursor = dbapi.cursor()
                # Write first: the UPDATE takes the database's write lock (SQLite) or the head
                # row's lock (PostgreSQL) before anything is read, so writers in every process
                # serialise.
                cursor.execute(self._advance_head_sql, (cached_size + n, cached_size))
                if cursor.rowcount == 1:
                    old, peaks = cached_size, list(cached_peaks)
                else:  # another process appended: read where the tree stands now, locked
                    cursor.execute(self._grow_head_sql, (n,))
                    cursor.execute(self._read_head_sql)
                    row = cursor.fetchone()
                    if row is None:
                        raise AuditLogError("the audit log's head row is missing")
                    old = int(row[0]) - n
                    keys = merkle.perfect_subtrees(0, old) if old else []
                    hashes = self._fetch(conn, keys)
                    peaks = [(level, h) for (level, _), h in zip(keys, hashes, strict=True)]
                node_rows: list[tuple[int, int, bytes]] = []
                node_hash = merkle.node_hash
                for offset, entry in enumerate(entries):
                    end = old + offset + 1
                    lh = entry.leaf_hash
                    node_rows.append((0, end - 1, lh))
                    level, acc = 0, lh
                    while peaks and peaks[-1][0] == level:
                        acc = node_hash(peaks.pop()[1], acc)
                        level += 1
                        node_rows.append((level, (end >> level) - 1, acc))
                    peaks.append((level, acc))
                cursor.executemany(
                    self._insert_entry_sql, [(old + k, e.body) for k, e in enumerate(entries)]
                )
                cursor.executemany(self._insert_node_sql, node_rows)
                cursor.close()
                dbapi.commit()
            except BaseException:
                dbapi.rollback()
                raise
        self._frontier = (old + n, peaks)
        return old

    # -- reading -----------------------------------------------------------------------------

    def size(self) -> int:
        """The number of events in the log."""
        with self.engine.connect() as conn:
            return self._db_size(conn)

    def entry(self, index: int) -> bytes:
        """The canonical leaf bytes of entry ``index``."""
        with self.engine.connect() as conn:
            body = conn.execute(
                sa.select(self._entries.c.body).where(self._entries.c.leaf_index == index)
            ).scalar_one_or_none()
            if body is None:
                size = self._db_size(conn)
                if not 0 <= index < size:
                    raise AuditLogError(f"no entry {index}: the log holds {size} entries")
                raise AuditLogError(f"entry {index} is missing from storage; run verify")
        return bytes(body)

    def event(self, index: int) -> AuditEvent:
        """Entry ``index`` decoded as an ``AuditEvent``."""
        return AuditEvent.from_canonical(self.entry(index))

    def root(self, size: int | None = None) -> bytes:
        """The RFC 6962 root of the first ``size`` entries (default: all)."""
        with self.engine.connect() as conn:
            size = self._checked_size(conn, size)
            if size == 0:
                return merkle.EMPTY_ROOT
            cached_size, cached_peaks = self._frontier
            if size == cached_size:
                return merkle.fold_subtrees([h for _, h in cached_peaks])
            keys = merkle.perfect_subtrees(0, size)
            return merkle.fold_subtrees(self._fetch(conn, keys))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of entry ``index`` in the tree of the first ``size`` entries."""
        with self.engine.connect() as conn:
            size = self._checked_size(conn, size)
            try:
                ranges = merkle.inclusion_ranges(index, size)
            except merkle.MerkleError as exc:
                raise AuditLogError(str(exc)) from None
            return self._range_hashes(conn, ranges)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the tree at ``old_size`` is a prefix of the tree at ``new_size``."""
        with self.engine.connect() as conn:
            new_size = self._checked_size(conn, new_size)
            try:
                ranges = merkle.consistency_ranges(old_size, new_size)
            except merkle.MerkleError as exc:
                raise AuditLogError(str(exc)) from None
            return self._range_hashes(conn, ranges)

    def _create_tables(self) -> None:
        # Another process may be creating the same tables or head row at this moment: a lost
        # race is an error from the database, and the next pass finds what the winner made.
        for attempt in range(5):
            try:
                self.metadata.create_all(self.engine, checkfirst=True)
                break
            except sa.exc.DBAPIError:
                if attempt == 4:
                    raise
        try:
            with self.engine.begin() as conn:
                if conn.execute(sa.select(self._head.c.tree_size)).first() is None:
                    conn.execute(sa.insert(self._head).values(head_id=1, tree_size=0))
        except sa.exc.IntegrityError:
            pass

    def _db_size(self, conn: Connection) -> int:
        return int(conn.execute(sa.select(self._head.c.tree_size)).scalar_one())

    def _checked_size(self, conn: Connection, size: int | None) -> int:
        current = self._db_size(conn)
        if size is None:
            return current
        if not 0 <= size <= current:
            raise AuditLogError(f"no tree of size {size}: the log holds {current} entries")
        return size

    def _range_hashes(self, conn: Connection, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        plans = [merkle.perfect_subtrees(s, e) for s, e in ranges]
        keys = sorted({k for plan in plans for k in plan})
        found = dict(zip(keys, self._fetch(conn, keys), strict=True))
        return [merkle.fold_subtrees([found[k] for k in plan]) for plan in plans]

    def _fetch(self, conn: Connection, keys: Sequence[tuple[int, int]]) -> list[bytes]:
        """Stored hashes of the given subtrees, in order, with one query."""
        if not keys:
            return []
        n = self._nodes
        by_level: dict[int, list[int]] = {}
        for level, index in keys:
            by_level.setdefault(level, []).append(index)
        # One index search per level (an OR of per-level IN lists): SQLite scans the whole
        # table for a row-value IN, so the tuple form would be O(n).
        where = sa.or_(
            *(
                sa.and_(n.c.level == level, n.c.node_index.in_(indices))
                for level, indices in by_level.items()
            )
        )
        rows: Any = conn.execute(sa.select(n.c.level, n.c.node_index, n.c.hash).where(where))
        found = {(int(level), int(index)): bytes(h) for level, index, h in rows}
        missing = [k for k in keys if k not in found]
        if missing:
            level, index = missing[0]
            raise AuditLogError(
                f"stored tree node for entries [{index << level}, {(index + 1) << level}) "
                "is missing; run verify"
            )
        return [found[k] for k in keys]

    # -- anchors -----------------------------------------------------------------------------

    def record_anchor(self, size: int, root: bytes, tx_hash: str, block_number: int) -> None:
        """Remember that (size, root) was anchored by transaction ``tx_hash``."""
        if root != self.root(size):
            raise AuditLogError(f"the root offered for size {size} is not this log's root")
        a = self._anchors
        with self.engine.begin() as conn:
            known = conn.execute(sa.select(a.c.tree_size).where(a.c.tx_hash == tx_hash)).first()
            if known is not None:
                conn.execute(
                    sa.update(a)
                    .where(a.c.tx_hash == tx_hash)
                    .values(tree_size=size, root=root, block_number=block_number)
                )
            else:
                conn.execute(
                    sa.insert(a).values(
                        tx_hash=tx_hash, tree_size=size, root=root, block_number=block_number
                    )
                )

    def anchors(self) -> list[AnchorRecord]:
        """Every anchor recorded, by size then block."""
        a = self._anchors
        with self.engine.connect() as conn:
            rows: Any = conn.execute(
                sa.select(a.c.tree_size, a.c.root, a.c.tx_hash, a.c.block_number).order_by(
                    a.c.tree_size, a.c.block_number
                )
            )
            return [AnchorRecord(int(s), bytes(r), str(t), int(b)) for s, r, t, b in rows]

    def forget_anchor(self, tx_hash: str) -> None:
        """Drop an anchor record whose transaction left the chain (a reorg)."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(self._anchors).where(self._anchors.c.tx_hash == tx_hash))

    def unanchored_count(self) -> int:
        """How many entries no recorded anchor covers yet."""
        with self.engine.connect() as conn:
            size = self._db_size(conn)
            anchored = conn.execute(sa.select(sa.func.max(self._anchors.c.tree_size))).scalar()
        return size - int(anchored or 0)

    # -- verification ------------------------------------------------------------------------

    def verify(self, anchors: Sequence[tuple[int, bytes]]) -> list[Finding]:
        """Recompute the tree from the stored entries and check it against anchored (size, root)s.

        Returns no findings when the log verifies. Entries are named when the stored leaf
        hashes (written at append time) show which entry was edited, moved or dropped; anchors
        that do not match are reported in any case, because stored hashes can be rewritten too.
        """
        with self.engine.connect() as conn:
            size = self._db_size(conn)
            leaves, findings = self._recompute_leaves(conn, size)
            findings += self._check_stored_tree(conn, size)
        recomputed = merkle.LeafTree(leaves)
        first_entry_problem = min((f.index for f in findings if f.index is not None), default=None)
        findings += _check_anchors(anchors, size, recomputed, first_entry_problem)
        return sorted(findings, key=lambda f: (f.index is None, f.index or 0, f.kind))

    def _check_stored_tree(self, conn: Connection, size: int) -> list[Finding]:
        """Stored interior hashes that disagree with their stored children (proofs would fail).

        Only the lowest disagreeing node is reported: its ancestors disagree because of it.
        """
        n, hs = self._nodes, merkle.HASH_SIZE
        findings: list[Finding] = []
        rows: Any = conn.execution_options(yield_per=50_000).execute(
            sa.select(n.c.level, n.c.node_index, n.c.hash).order_by(n.c.level, n.c.node_index)
        )
        level, below, current = -1, bytearray(), bytearray()
        bad_below: set[int] = set()
        bad: set[int] = set()
        for raw_level, raw_index, raw_hash in rows:
            lv, ix = int(raw_level), int(raw_index)
            if (ix + 1) << lv > size:
                continue  # not part of the tree at this size (only after a crash or tampering)
            if lv != level:
                below, bad_below = (current, bad) if lv == level + 1 else (bytearray(), set())
                level, current, bad = lv, bytearray(), set()
            while len(current) < ix * hs:  # a gap: that node is missing
                gap = len(current) // hs
                if lv > 0:
                    first, last = gap << lv, ((gap + 1) << lv) - 1
                    findings.append(
                        Finding("tree", first, f"stored hash for entries {first}..{last} missing")
                    )
                bad.add(gap)
                current += _ZERO
            h = bytes(raw_hash)
            current += h
            left = below[2 * ix * hs : (2 * ix + 1) * hs]
            right = below[(2 * ix + 1) * hs : (2 * ix + 2) * hs]
            if lv == 0 or len(right) != hs or merkle.node_hash(left, right) == h:
                continue
            bad.add(ix)
            if not {2 * ix, 2 * ix + 1} & bad_below:
                first, last = ix << lv, ((ix + 1) << lv) - 1
                findings.append(
                    Finding(
                        "tree",
                        first,
                        f"stored hash for entries {first}..{last} does not match its children: "
                        "one of them was rewritten, and proofs through it fail",
                    )
                )
        return findings

    def _recompute_leaves(self, conn: Connection, size: int) -> tuple[bytearray, list[Finding]]:
        """Leaf hashes of the entries (zeros where one is missing) and entry-level findings."""
        e, n = self._entries, self._nodes
        query = (
            sa.select(e.c.leaf_index, e.c.body, n.c.hash)
            .select_from(e.outerjoin(n, sa.and_(n.c.level == 0, n.c.node_index == e.c.leaf_index)))
            .order_by(e.c.leaf_index)
        )
        leaves = bytearray()
        findings: list[Finding] = []
        mismatched: dict[int, bytes] = {}  # index -> hash of the body found there
        no_leaf_hash: list[int] = []
        beyond: list[int] = []
        expected = 0
        result: Any = conn.execution_options(yield_per=20_000).execute(query)
        for raw_index, body, stored in result:
            index = int(raw_index)
            if index >= size:
                beyond.append(index)
                continue
            for gap in range(expected, index):
                findings.append(Finding("missing", gap, "entry is missing from storage"))
                leaves += _ZERO
            lh = merkle.leaf_hash(bytes(body))
            leaves += lh
            if stored is None:
                no_leaf_hash.append(index)
            elif bytes(stored) != lh:
                mismatched[index] = lh
            expected = index + 1
        for gap in range(expected, size):
            findings.append(Finding("missing", gap, "entry is missing from storage"))
            leaves += _ZERO
        if beyond:
            # Appends that landed while we read are not extra; rows past the head's size are.
            now = self._db_size(conn)
            findings += [
                Finding("extra", i, f"entry beyond the log's size {now}")
                for i in beyond
                if i >= now
            ]
        for first, last in merkle.index_runs(no_leaf_hash):
            span = f"entry {first}" if first == last else f"entries {first}..{last}"
            findings.append(Finding("tree", first, f"stored leaf hashes missing for {span}"))
        if mismatched:
            findings += self._classify(conn, mismatched)
        return leaves, findings

    def _classify(self, conn: Connection, mismatched: dict[int, bytes]) -> list[Finding]:
        """Tell edited entries from moved ones by where their content was originally recorded."""
        n = self._nodes
        wanted = {h: i for i, h in mismatched.items()}
        recorded_at: dict[int, int] = {}  # index -> index where its current content was recorded
        stored_at: dict[int, bytes] = {}  # mismatched index -> hash recorded for it
        rows: Any = conn.execution_options(yield_per=50_000).execute(
            sa.select(n.c.node_index, n.c.hash).where(n.c.level == 0)
        )
        for raw_index, raw_hash in rows:
            index, h = int(raw_index), bytes(raw_hash)
            if h in wanted and wanted[h] != index:
                recorded_at[wanted[h]] = index
            if index in mismatched:
                stored_at[index] = h
        findings: list[Finding] = []
        moved = sorted(recorded_at)
        reported: set[int] = set()
        for index in moved:
            origin = recorded_at[index]
            if index in reported:
                continue
            if recorded_at.get(origin) == index:
                findings.append(
                    Finding("reordered", index, f"entries {index} and {origin} are swapped")
                )
                findings.append(
                    Finding("reordered", origin, f"entries {index} and {origin} are swapped")
                )
                reported.update((index, origin))
                continue
            # Compress a run of entries all moved by the same offset (one dropped, rest shifted).
            run_end = index
            while recorded_at.get(run_end + 1) == recorded_at[run_end] + 1:
                run_end += 1
            reported.update(range(index, run_end + 1))
            span = f"entry {index}" if run_end == index else f"entries {index}..{run_end}"
            holds = "the event" if run_end == index else "the events"
            findings.append(
                Finding(
                    "reordered",
                    index,
                    f"{span} hold {holds} recorded at {origin}"
                    + ("" if run_end == index else f"..{recorded_at[run_end]}"),
                )
            )
        for index in sorted(mismatched):
            if index not in recorded_at:
                findings.append(
                    Finding("edited", index, "content differs from the event recorded here")
                )
            elif stored_at.get(index) not in wanted:
                # It holds a moved event, and the one recorded here is nowhere in the log.
                findings.append(
                    Finding("missing", index, "the event recorded here was dropped from the log")
                )
        return findings


def _check_anchors(
    anchors: Sequence[tuple[int, bytes]],
    size: int,
    tree: merkle.LeafTree,
    first_entry_problem: int | None,
) -> list[Finding]:
    findings: list[Finding] = []
    good = 0  # the largest anchored size the entries still match
    previous: tuple[int, bytes] | None = None
    for anchored_size, anchored_root in anchors:
        if anchored_size > size:
            findings.append(
                Finding(
                    "missing",
                    size,
                    f"an anchor covers {anchored_size} entries but the log holds only {size}: "
                    f"entries {size}..{anchored_size - 1} were dropped",
                )
            )
            previous = (anchored_size, anchored_root)
            continue
        matches = tree.root(anchored_size) == anchored_root
        if matches:
            good = max(good, anchored_size)
        else:
            where = (
                first_entry_problem
                if first_entry_problem is not None and first_entry_problem < anchored_size
                else None
            )
            findings.append(
                Finding(
                    "anchor-mismatch",
                    where,
                    f"the first {anchored_size} entries do not match the root anchored for that "
                    f"size; the divergence lies in entries {good}..{anchored_size - 1}",
                )
            )
        if previous is not None:
            old_size, old_root = previous
            if anchored_size < old_size:
                findings.append(
                    Finding(
                        "inconsistent-anchors",
                        None,
                        f"anchored size went backwards from {old_size} to {anchored_size}",
                    )
                )
            elif matches and old_size <= size:
                # The entries match the later anchor; if the earlier one is no prefix of them,
                # the anchored history itself was rewritten (RFC 6962 §2.1.2).
                proof = tree.consistency_proof(old_size, anchored_size)
                if not merkle.verify_consistency(
                    old_size, anchored_size, old_root, anchored_root, proof
                ):
                    findings.append(
                        Finding(
                            "inconsistent-anchors",
                            None,
                            f"the anchor at size {anchored_size} does not extend the one at "
                            f"size {old_size}",
                        )
                    )
        previous = (anchored_size, anchored_root)
    return findings


def _leaf_bytes(event: AuditEvent | Mapping[str, Any]) -> bytes:
    return parse_event(dict(event) if isinstance(event, Mapping) else event).canonical()


def _sqlite_pragmas(dbapi_connection: Any, sync: str) -> None:
    # WAL lets readers (proofs, verify) run beside the writer; synchronous=FULL makes every
    # commit durable before append returns; the busy timeout lets other processes' writers wait.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={sync}")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
