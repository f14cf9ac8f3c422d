"""The collector's event store: an embedded SQLite database (WAL mode).

Every batch a producer publishes is committed in one transaction by :meth:`EventStore.insert`
before the collector acknowledges it; sinks and ``nodeguard events`` read it back in
``rowid`` (arrival) order.

Tables (schema version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``):

- ``record_keys``: the (node, epoch, seq) of every record kept, of every body; its
  primary key is what makes a resent record a duplicate. Rows go with their event or loss
  (triggers); telemetry keys are kept for :data:`TELEMETRY_KEY_TTL_S`.
- ``events``: one row per violation, the searchable fields plus ``body``, the serialized
  ``nodeguard.v1.Violation``. ``rowid`` is AUTOINCREMENT: never reused, even when
  retention empties the table, so sink cursors stay valid.
- ``losses``: the producers' in-band loss records.
- ``telemetry``: the latest telemetry record per node.
- ``cursors``: named delivery positions (sinks).
- ``counters``: running totals (events, losses, attempts, duplicates, rejected), so
  :meth:`EventStore.stats` never scans the tables.

Concurrency: one connection per thread; writers take one lock (SQLite has one writer at a
time anyway, the lock keeps them from spinning on SQLITE_BUSY); readers run concurrently
with the writer (WAL). Every use of a connection is counted: :meth:`EventStore.close`
refuses new uses (:class:`StoreError`), waits for the ones under way to finish, and only
then closes the connections, so no thread ever runs SQLite on a closed connection.

A stored event whose body does not decode (the file was changed behind nodeguard's back)
is skipped by the readers, counted (:attr:`StoreStats.undecodable`) and logged once, so
one bad row never stops a sink.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from google.protobuf.message import DecodeError

from nodeguard import log
from nodeguard.collector.records import (
    EventQuery,
    InsertResult,
    Retention,
    StoredEvent,
    StoredLoss,
)
from nodeguard.errors import NodeguardError
from nodeguard.events import ocsf
from nodeguard.events.wire import KIND_FROM_PB, VERDICT_FROM_PB, WireFormatError, from_proto
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

_log = log.get("nodeguard.collector.store")

CLOSE_WAIT_LOG_S = 5.0  # close() logs when uses under way keep it waiting this long

SCHEMA_VERSION = 1
TELEMETRY_KEY_TTL_S = 86400.0  # telemetry keys are remembered this long (dedup of resends)
RETENTION_CHUNK = 5000  # rows deleted per transaction (inserts interleave between chunks)
BUSY_TIMEOUT_MS = 30_000
_INT64_MAX = 2**63 - 1

_BODY_VIOLATION, _BODY_LOSS, _BODY_TELEMETRY = 1, 2, 3
_COUNTERS = ("events", "losses", "attempts", "duplicates", "rejected")

_SCHEMA = """
CREATE TABLE record_keys (
    node TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    body INTEGER NOT NULL,  -- 1 violation, 2 loss, 3 telemetry
    PRIMARY KEY (node, epoch, seq)
) WITHOUT ROWID;
CREATE INDEX record_keys_telemetry ON record_keys (received_ms) WHERE body = 3;

CREATE TABLE events (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    class_uid INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    namespace TEXT,
    pod TEXT,
    policy TEXT NOT NULL,
    count INTEGER NOT NULL,
    uid TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX events_time ON events (time_ms);
CREATE INDEX events_node ON events (node, time_ms);
CREATE INDEX events_namespace ON events (namespace, time_ms);
CREATE INDEX events_pod ON events (pod, time_ms);
CREATE INDEX events_policy ON events (policy, time_ms);
CREATE INDEX events_kind ON events (kind, time_ms);
CREATE TRIGGER events_forget_key AFTER DELETE ON events BEGIN
    DELETE FROM record_keys WHERE node = old.node AND epoch = old.epoch AND seq = old.seq;
END;

CREATE TABLE losses (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    priority TEXT NOT NULL,
    count INTEGER NOT NULL,
    total INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE INDEX losses_time ON losses (time_ms);
CREATE INDEX losses_node ON losses (node, time_ms);
CREATE TRIGGER losses_forget_key AFTER DELETE ON losses BEGIN
    DELETE FROM record_keys WHERE node = old.node AND epoch = old.epoch AND seq = old.seq;
END;

CREATE TABLE telemetry (
    node TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);

CREATE TABLE cursors (
    name TEXT PRIMARY KEY,
    rowid INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);

CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_INSERT_KEY = (
    "INSERT OR IGNORE INTO record_keys (node, epoch, seq, received_ms, body) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_EVENT = (
    "INSERT INTO events (node, epoch, seq, received_ms, time_ms, kind, class_uid, verdict, "
    "namespace, pod, policy, count, uid, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_LOSS = (
    "INSERT INTO losses (node, epoch, seq, received_ms, time_ms, reason, priority, count, total, "
    "attempts, first_seq, last_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_TELEMETRY = (
    "INSERT INTO telemetry (node, epoch, seq, received_ms, body) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (node) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, "
    "received_ms = excluded.received_ms, body = excluded.body "
    "WHERE (excluded.epoch, excluded.seq) > (telemetry.epoch, telemetry.seq)"
)
# retention, per table: the rows older than a time, the rowid of the newest row beyond
# a count, the rows up to a rowid, one row
_RETENTION_SQL: dict[tuple[str, str], str] = {
    ("events", "age"): "SELECT rowid, count FROM events WHERE time_ms < ? LIMIT ?",
    ("events", "newest"): "SELECT rowid FROM events ORDER BY rowid DESC LIMIT 1 OFFSET ?",
    ("events", "count"): "SELECT rowid, count FROM events WHERE rowid <= ? ORDER BY rowid LIMIT ?",
    ("events", "delete"): "DELETE FROM events WHERE rowid = ?",
    ("losses", "age"): "SELECT rowid FROM losses WHERE time_ms < ? LIMIT ?",
    ("losses", "newest"): "SELECT rowid FROM losses ORDER BY rowid DESC LIMIT 1 OFFSET ?",
    ("losses", "count"): "SELECT rowid FROM losses WHERE rowid <= ? ORDER BY rowid LIMIT ?",
    ("losses", "delete"): "DELETE FROM losses WHERE rowid = ?",
}
_ADD_COUNTER = "UPDATE counters SET value = value + ? WHERE name = ?"
_SELECT_EVENTS = "SELECT rowid, node, epoch, seq, received_ms, body FROM events"
_SELECT_LOSSES = (
    "SELECT rowid, node, epoch, seq, received_ms, reason, priority, count, total, attempts, "
    "time_ms, first_seq, last_seq FROM losses"
)


class StoreError(NodeguardError):
    """The event store cannot be opened or used (unusable path, corrupt database, schema
    of a newer nodeguard, closed store)."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What the store holds. ``attempts`` is the sum of the events' counts;
    ``duplicates_total`` and ``rejected_total`` count every record :meth:`EventStore.insert`
    saw as such since the store was created."""

    events: int
    losses: int
    attempts: int
    oldest_ms: int | None  # violation time of the oldest event (None: empty)
    newest_ms: int | None
    size_bytes: int  # database + write-ahead log
    duplicates_total: int
    rejected_total: int
    # events whose body did not decode, skipped by the readers of this EventStore (since
    # it was opened)
    undecodable: int = 0


@dataclass(frozen=True, slots=True)
class EventSpan:
    """What :meth:`EventStore.read_span` read: the decodable events, the rowid it read up
    to (decodable or not; the ``rowid`` it was given when there was no row) and the
    number of rows skipped as undecodable. A reader moving a cursor moves it to
    ``end_rowid``, past undecodable rows too."""

    events: list[StoredEvent]
    end_rowid: int
    undecodable: int


_CLASS_UID = {pb_kind: ocsf.CLASS_OF_KIND[kind].uid for pb_kind, kind in KIND_FROM_PB.items()}
_MODES = frozenset(("enforce", "audit"))


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        name: str = enum.Name(value)
    except ValueError:
        return "unspecified"
    return name.removeprefix(prefix).lower()


def _violation_problem(v: pb.Violation, node: str) -> str | None:
    """Why a violation cannot be stored (None: it can). Reads fields only: the checks of
    :func:`nodeguard.events.wire.from_proto`, so every stored body decodes."""
    kind = KIND_FROM_PB.get(v.kind)
    if kind is None:
        return f"unknown kind {v.kind}"
    if v.verdict not in VERDICT_FROM_PB:
        return f"unknown verdict {v.verdict}"
    which = v.WhichOneof("detail")
    if which != kind:
        return f"kind {kind} carries detail {which or 'none'}"
    if not v.uid:
        return "no uid"
    policy = v.policy
    if not policy.name:
        return "no policy name"
    if policy.mode not in _MODES:
        return f"policy mode {policy.mode!r} is neither enforce nor audit"
    if v.count < 1:
        return f"count {v.count} < 1"
    if v.count > _INT64_MAX:
        return f"count {v.count} out of range"
    if kind == "egress" and v.egress.family not in (4, 6):
        return f"egress family {v.egress.family} is neither 4 nor 6"
    if v.HasField("node") and v.node != node:
        return f"names node {v.node!r} but was published by node {node!r}"
    return None


def _statements(script: str) -> list[str]:
    """The complete SQL statements of ``script`` (triggers hold ``;`` inside)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    return out


def _event_row(v: pb.Violation, node: str, epoch: int, seq: int, now: int) -> tuple[Any, ...]:
    """The ``events`` row of a valid violation (the order of :data:`_INSERT_EVENT`)."""
    namespace = pod = None
    if v.HasField("workload"):
        w = v.workload
        if w.HasField("namespace"):
            namespace = w.namespace
        if w.HasField("pod_name"):
            pod = w.pod_name
    return (
        node,
        epoch,
        seq,
        now,
        v.time_ms,
        KIND_FROM_PB[v.kind],
        _CLASS_UID[v.kind],
        VERDICT_FROM_PB[v.verdict],
        namespace,
        pod,
        v.policy.name,
        v.count,
        v.uid,
        v.SerializeToString(),
    )


_EVENT_COUNT = 11  # index of ``count`` in an events row


def _loss_row(loss: pb.Loss, node: str, epoch: int, seq: int, now: int) -> tuple[Any, ...] | None:
    """The ``losses`` row of a loss record (None: numbers out of SQLite's range)."""
    numbers = (loss.count, loss.total, loss.attempts, loss.first_seq, loss.last_seq)
    if max(numbers) > _INT64_MAX:
        return None
    return (
        node,
        epoch,
        seq,
        now,
        loss.time_ms or now,
        _enum_name(pb.LossReason, loss.reason, "LOSS_REASON_"),
        _enum_name(pb.Priority, loss.priority, "PRIORITY_"),
        *numbers,
    )


# (seq, body kind, row) per storable record
_Prepared = list[tuple[int, int, tuple[Any, ...]]]


def _prepare(
    node: str, epoch: int, records: Sequence[pb.Record], now: int
) -> tuple[_Prepared, int, str | None]:
    """The rows of a batch's valid records, the number of invalid ones and the first
    reason. CPU only: runs outside the writer lock."""
    if not 0 <= epoch <= _INT64_MAX:
        return [], len(records), f"epoch {epoch} out of range"
    prepared: _Prepared = []
    rejected = 0
    reason: str | None = None
    for rec in records:
        seq = rec.seq
        body = rec.WhichOneof("body")
        if seq == 0 or seq > _INT64_MAX:
            problem = f"record seq {seq}: sequence numbers run from 1 to 2^63-1"
        elif body == "violation":
            v = rec.violation
            bad = _violation_problem(v, node)
            if bad is None:
                prepared.append((seq, _BODY_VIOLATION, _event_row(v, node, epoch, seq, now)))
                continue
            problem = f"record seq {seq}: violation {v.uid or '?'}: {bad}"
        elif body == "loss":
            row = _loss_row(rec.loss, node, epoch, seq, now)
            if row is not None:
                prepared.append((seq, _BODY_LOSS, row))
                continue
            problem = f"record seq {seq}: loss numbers out of range"
        elif body == "telemetry":
            row = (node, epoch, seq, now, rec.telemetry.SerializeToString())
            prepared.append((seq, _BODY_TELEMETRY, row))
            continue
        else:
            problem = f"record seq {seq}: no body (violation, loss or telemetry)"
        rejected += 1
        if reason is None:
            reason = problem
    return prepared, rejected, reason


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EventStore:
    """The collector's durable event store (see the module docstring).

    ``durable=True`` commits with ``synchronous=FULL``: a batch :meth:`insert` returned
    for survives a power loss. ``durable=False`` (tests, benchmarks) uses ``NORMAL``:
    it survives a crash of the process, not of the machine. ``read_only=True`` (the
    ``nodeguard events`` command) opens an existing store without changing it.
    """

    def __init__(
        self,
        path: Path,
        retention: Retention = Retention(),  # noqa: B008 - frozen dataclass
        *,
        durable: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.retention = retention
        self.durable = durable
        self.read_only = read_only
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._new_events = threading.Condition()
        self._gate = threading.Condition()  # guards _closed and _active
        self._closed = False
        self._active = 0  # uses of a connection under way
        self._undecodable: set[int] = set()  # rowids (guarded by _gate)
        if read_only:
            if not self.path.is_file():
                raise StoreError(
                    f"no event store at {self.path}",
                    fix="give the collector's store path (--store PATH, or --config with "
                    "the collector's config file); the collector creates it when it starts",
                )
        else:
            self._prepare_file()
        try:
            self._open_schema()
        except BaseException:
            self.close()
            raise
        _log.debug("store_opened", path=str(self.path), durable=durable, read_only=read_only)

    # ---------------------------------------------------------------- connections --

    def _prepare_file(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            if not self.path.exists():
                # violations are security data: owner only (SQLite gives the -wal and
                # -shm files the database's mode)
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as err:
            raise StoreError(
                f"cannot create the event store {self.path}: {err.strerror or err}",
                fix="set store.path to a file in a directory the collector can write",
            ) from err
        if not self.path.is_file():
            raise StoreError(
                f"the event store path {self.path} is not a regular file",
                fix="set store.path to a file name (e.g. /var/lib/nodeguard-collector/events.db)",
            )

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"the event store {self.path} is closed", fix="open it again")
        try:
            if self.read_only:
                conn = sqlite3.connect(
                    f"file:{quote(str(self.path))}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
            conn.execute("PRAGMA cache_size = -16000")
            conn.execute("PRAGMA temp_store = MEMORY")
        except sqlite3.Error as err:
            raise self._error("open", err) from err
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._closed:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _closed_error(self) -> StoreError:
        return StoreError(
            f"the event store {self.path} is closed",
            fix="open it again (a collector that is stopping no longer stores batches; "
            "its producers resend them)",
        )

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, counted as in use until the block ends: close()
        waits for it. Raises StoreError once the store is closed (or closing)."""
        with self._gate:
            if self._closed:
                raise self._closed_error()
            self._active += 1
        try:
            yield self._conn()
        finally:
            with self._gate:
                self._active -= 1
                if not self._active:
                    self._gate.notify_all()

    def _error(self, action: str, err: sqlite3.Error) -> StoreError:
        text = str(err)
        if isinstance(err, sqlite3.DatabaseError) and (
            "not a database" in text or "malformed" in text
        ):
            return StoreError(
                f"the event store {self.path} is corrupt ({text})",
                fix="move the file (and its -wal and -shm files) aside; the collector "
                "creates a new store on start",
            )
        if "readonly" in text or "unable to open" in text:
            return StoreError(
                f"cannot {action} the event store {self.path}: {text}",
                fix="check the file and its directory are readable and writable by this user",
            )
        return StoreError(f"cannot {action} the event store {self.path}: {text}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the writer lock (committed on exit, rolled back
        on an exception)."""
        if self.read_only:
            raise StoreError(
                f"the event store {self.path} is open read-only", fix="open it writable"
            )
        with self._write_lock, self._use() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise self._error("write to", err) from err
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(err, sqlite3.Error):
                    raise self._error("write to", err) from err
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._use() as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as err:
                raise self._error("read", err) from err

    def _open_schema(self) -> None:
        with self._use() as conn:
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            except sqlite3.Error as err:
                raise self._error("open", err) from err
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the event store {self.path} has schema version {version}; this nodeguard "
                f"reads version {SCHEMA_VERSION}",
                fix="run the nodeguard version that wrote it, or move the file aside",
            )
        if version == SCHEMA_VERSION:
            if not self.read_only:
                self._set_wal()
            return
        if tables:
            raise StoreError(
                f"{self.path} is an SQLite database but not a nodeguard event store",
                fix="point store.path at another file",
            )
        if self.read_only:
            raise StoreError(
                f"the event store {self.path} is empty (the collector has not initialised it)",
                fix="start the collector once, or give the path of its store",
            )
        self._set_wal()
        with self._write() as tx:
            if tx.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return  # another process created it meanwhile
            # executescript would commit the open transaction: statement by statement
            for statement in _statements(_SCHEMA):
                tx.execute(statement)
            tx.executemany(
                "INSERT INTO counters (name, value) VALUES (?, 0)", [(n,) for n in _COUNTERS]
            )
            tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        _log.info("store_created", path=str(self.path), schema=SCHEMA_VERSION)

    def _set_wal(self) -> None:
        with self._use() as conn:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                conn.execute("PRAGMA journal_size_limit = 67108864")
            except sqlite3.Error as err:
                raise self._error("open", err) from err
        if str(mode).lower() != "wal":
            raise StoreError(
                f"the event store {self.path} cannot use write-ahead logging (mode {mode})",
                fix="put the store on a local file system",
            )

    def close(self) -> None:
        """Refuse new uses, wait for the uses under way (an insert's transaction, a
        read) to finish, then close every connection (of every thread). Every method
        raises :class:`StoreError` afterwards. Idempotent."""
        started = time.monotonic()
        logged = False
        with self._gate:
            self._closed = True
            while self._active:
                if not self._gate.wait(CLOSE_WAIT_LOG_S) and not logged:
                    logged = True
                    _log.warning(
                        "store_close_waiting",
                        path=str(self.path),
                        uses=self._active,
                        waited_s=round(time.monotonic() - started, 1),
                    )
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error as err:  # pragma: no cover - close of a busy connection
                _log.warning("store_close_failed", path=str(self.path), error=str(err))
        with self._new_events:
            self._new_events.notify_all()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------- insert --

    def insert(
        self,
        node: str,
        epoch: int,
        records: Sequence[pb.Record],
        received_ms: int | None = None,
    ) -> InsertResult:
        """Store one batch of ``node``'s records in ONE transaction, committed before
        returning. Every record ends up stored, duplicate (its (node, epoch, seq) was
        stored before, or earlier in this batch) or rejected (invalid; the first reason
        is returned)."""
        now = _now_ms() if received_ms is None else received_ms
        prepared, rejected, reason = _prepare(node, epoch, records, now)
        events: list[tuple[Any, ...]] = []
        losses: list[tuple[Any, ...]] = []
        telemetry: list[tuple[Any, ...]] = []
        by_body = {_BODY_VIOLATION: events, _BODY_LOSS: losses, _BODY_TELEMETRY: telemetry}
        duplicates = 0
        attempts = 0
        with self._write() as tx:
            cur = tx.cursor()
            for seq, body_kind, row in prepared:
                cur.execute(_INSERT_KEY, (node, epoch, seq, now, body_kind))
                if cur.rowcount == 1:
                    by_body[body_kind].append(row)
                else:
                    duplicates += 1
            if events:
                cur.executemany(_INSERT_EVENT, events)
                attempts = sum(row[_EVENT_COUNT] for row in events)
            if losses:
                cur.executemany(_INSERT_LOSS, losses)
            if telemetry:
                cur.executemany(_UPSERT_TELEMETRY, telemetry)
            changes = [
                (len(events), "events"),
                (len(losses), "losses"),
                (attempts, "attempts"),
                (duplicates, "duplicates"),
                (rejected, "rejected"),
            ]
            cur.executemany(_ADD_COUNTER, [c for c in changes if c[0]])
            last = cur.execute("SELECT max(rowid) FROM events").fetchone()[0] or 0
        if events:
            with self._new_events:
                self._new_events.notify_all()
        return InsertResult(
            stored=len(events) + len(losses) + len(telemetry),
            duplicates=duplicates,
            rejected=rejected,
            reject_reason=reason,
            last_rowid=last,
        )

    # ---------------------------------------------------------------------- events --

    def _decode(self, row: tuple[Any, ...]) -> StoredEvent | None:
        """The event of an ``events`` row; None (counted and logged once per row) when
        its body does not decode."""
        rowid, node, epoch, seq, received_ms, body = row
        try:
            violation = from_proto(pb.Violation.FromString(body))
        except (DecodeError, WireFormatError, ValueError, TypeError) as err:
            self._note_undecodable(rowid, node, epoch, seq, err)
            return None
        if violation.node is None:
            violation = dataclasses.replace(violation, node=node)
        return StoredEvent(
            rowid=rowid,
            node=node,
            epoch=epoch,
            seq=seq,
            received_ms=received_ms,
            violation=violation,
        )

    def _note_undecodable(
        self, rowid: int, node: str, epoch: int, seq: int, err: Exception
    ) -> None:
        with self._gate:
            if rowid in self._undecodable:
                return
            self._undecodable.add(rowid)
        _log.error(
            "store_event_undecodable",
            path=str(self.path),
            rowid=rowid,
            node=node,
            epoch=epoch,
            seq=seq,
            error=str(err) or type(err).__name__,
            hint="the row was changed by something other than nodeguard; it is skipped "
            "(readers and sinks go on with the next event)",
        )

    def _decoded(self, rows: Sequence[tuple[Any, ...]]) -> list[StoredEvent]:
        return [event for event in map(self._decode, rows) if event is not None]

    def query(self, q: EventQuery) -> list[StoredEvent]:
        """Events matching every filter of ``q``, in rowid order (newest first with
        ``newest_first``), at most ``q.limit`` (None: all). Rows that do not decode are
        skipped (see :attr:`StoreStats.undecodable`), so fewer may come back."""
        where: list[str] = []
        params: list[Any] = []
        # after a rowid (--follow): the new rows are few, walk them by rowid ("+column"
        # keeps SQLite from scanning a whole filter index instead)
        unindexed = "+" if q.after_rowid else ""
        for column, op, value in (
            ("rowid", ">", q.after_rowid or None),
            ("time_ms", ">=", q.since_ms),
            ("time_ms", "<=", q.until_ms),
            ("node", "=", q.node),
            ("namespace", "=", q.namespace),
            ("pod", "=", q.pod),
            ("policy", "=", q.policy),
            ("kind", "=", q.kind),
        ):
            if value is not None:
                prefix = "" if column == "rowid" else unindexed
                where.append(f"{prefix}{column} {op} ?")
                params.append(value)
        sql = _SELECT_EVENTS
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid DESC" if q.newest_first else " ORDER BY rowid"
        sql += " LIMIT ?"
        params.append(-1 if q.limit is None else q.limit)
        return self._decoded(self._read(sql, params))

    def read_span(self, rowid: int, limit: int) -> EventSpan:
        """The next ``limit`` rows after ``rowid``, in rowid order: their decodable
        events and how far it read (see :class:`EventSpan`)."""
        rows = self._read(
            _SELECT_EVENTS + " WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, limit),
        )
        events = self._decoded(rows)
        return EventSpan(
            events=events,
            end_rowid=rows[-1][0] if rows else rowid,
            undecodable=len(rows) - len(events),
        )

    def read_after(self, rowid: int, limit: int) -> list[StoredEvent]:
        """The events among the next ``limit`` rows after ``rowid``, in rowid order; a
        row whose body does not decode is skipped (counted in
        :attr:`StoreStats.undecodable`, logged once). A cursor should move with
        :meth:`read_span`, which says how far it read."""
        return self.read_span(rowid, limit).events

    def last_rowid(self) -> int:
        """The highest events rowid (0 when there is no event)."""
        value: int | None = self._read("SELECT max(rowid) FROM events")[0][0]
        return value or 0

    def first_rowid(self) -> int:
        """The smallest events rowid (0 when there is no event)."""
        value: int | None = self._read("SELECT min(rowid) FROM events")[0][0]
        return value or 0

    def wait_for_new(self, after_rowid: int, timeout_s: float) -> bool:
        """Wait until an event with a rowid above ``after_rowid`` is stored (by this
        process), at most ``timeout_s``; True when there is one."""
        deadline = time.monotonic() + timeout_s
        with self._new_events:
            while True:
                if self._closed:
                    return False
                try:
                    last = self.last_rowid()
                except StoreError:
                    if self._closed:  # closed meanwhile
                        return False
                    raise
                if last > after_rowid:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._new_events.wait(remaining)

    # --------------------------------------------------------------------- cursors --

    def cursor(self, name: str) -> int:
        """The rowid a named cursor stands at (0 for an unknown name)."""
        rows = self._read("SELECT rowid FROM cursors WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def set_cursor(self, name: str, rowid: int) -> None:
        """Move (or create) a named cursor; committed (durably with ``durable``)."""
        with self._write() as tx:
            tx.execute(
                "INSERT INTO cursors (name, rowid, updated_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET rowid = excluded.rowid, "
                "updated_ms = excluded.updated_ms",
                (name, rowid, _now_ms()),
            )

    # ------------------------------------------------------------ losses, telemetry --

    def losses(self, *, since_ms: int | None = None, node: str | None = None) -> list[StoredLoss]:
        """Loss records (of ``node``, from ``since_ms`` on), in arrival order. A loss the
        producer sent without a time has its receipt time."""
        where: list[str] = []
        params: list[Any] = []
        if since_ms is not None:
            where.append("time_ms >= ?")
            params.append(since_ms)
        if node is not None:
            where.append("node = ?")
            params.append(node)
        sql = _SELECT_LOSSES
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._read(sql + " ORDER BY rowid", params)
        return [StoredLoss(*row) for row in rows]

    def telemetry(self) -> dict[str, tuple[int, pb.Telemetry]]:
        """node -> (received_ms, its latest telemetry record)."""
        rows = self._read("SELECT node, received_ms, body FROM telemetry ORDER BY node")
        return {node: (received, pb.Telemetry.FromString(body)) for node, received, body in rows}

    # ------------------------------------------------------------------- retention --

    def apply_retention(self, now_ms: int | None = None) -> int:
        """Delete the events and losses :attr:`retention` no longer keeps (older than
        ``max_age_s`` by their time, or beyond the newest ``max_events`` by arrival), in
        chunks of :data:`RETENTION_CHUNK` rows so inserts go on meanwhile. Returns the
        number of rows deleted."""
        now = _now_ms() if now_ms is None else now_ms
        deleted = 0
        max_age, max_events = self.retention.max_age_s, self.retention.max_events
        for table in ("events", "losses"):
            if max_age is not None:
                cutoff = now - int(max_age * 1000)
                deleted += self._delete_chunks(table, _RETENTION_SQL[table, "age"], cutoff)
            if max_events is not None:
                rows = self._read(_RETENTION_SQL[table, "newest"], (max_events,))
                if rows:
                    deleted += self._delete_chunks(
                        table, _RETENTION_SQL[table, "count"], rows[0][0]
                    )
        ttl_cutoff = now - int(TELEMETRY_KEY_TTL_S * 1000)
        with self._write() as tx:
            tx.execute("DELETE FROM record_keys WHERE body = 3 AND received_ms < ?", (ttl_cutoff,))
            if max_age is not None:
                tx.execute(
                    "DELETE FROM telemetry WHERE received_ms < ?", (now - int(max_age * 1000),)
                )
        return deleted

    def _delete_chunks(self, table: str, select: str, bound: int) -> int:
        deleted = 0
        while True:
            with self._write() as tx:
                rows = tx.execute(select, (bound, RETENTION_CHUNK)).fetchall()
                if not rows:
                    return deleted
                tx.executemany(_RETENTION_SQL[table, "delete"], [(r[0],) for r in rows])
                changes = [(-len(rows), table)]
                if table == "events":
                    changes.append((-sum(r[1] for r in rows), "attempts"))
                tx.executemany(_ADD_COUNTER, changes)
            deleted += len(rows)
            if len(rows) < RETENTION_CHUNK:
                return deleted

    # ----------------------------------------------------------------------- stats --

    def stats(self) -> StoreStats:
        counters = dict(self._read("SELECT name, value FROM counters"))
        oldest, newest = self._read("SELECT min(time_ms), max(time_ms) FROM events")[0]
        size = 0
        for suffix in ("", "-wal"):
            with suppress(FileNotFoundError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return StoreStats(
            events=counters.get("events", 0),
            losses=counters.get("losses", 0),
            attempts=counters.get("attempts", 0),
            oldest_ms=oldest,
            newest_ms=newest,
            size_bytes=size,
            duplicates_total=counters.get("duplicates", 0),
            rejected_total=counters.get("rejected", 0),
            undecodable=len(self._undecodable),
        )
