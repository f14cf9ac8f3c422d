"""The producer's spool: a bounded on-disk queue of stream records that survives restarts
and SIGKILL.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed append survives the producer
being killed (the OS still has the pages); only a power loss can take the last commits.
One transaction per :meth:`Spool.append` (the agent appends once per loop round, never
per event).

Records are stored by *chunk*: one row holds up to ``chunk_records`` records of one
priority and one epoch with consecutive sequence numbers, as their final
``PublishRequest.records`` wire bytes (see :mod:`nodeguard.delivery.framing`). An append
assigns sequence numbers priority by priority, so every chunk covers a contiguous seq
range; a batch for the collector is a run of consecutive chunks of one epoch with
ascending seqs, and its bytes are the chunks' bytes concatenated. Nothing is parsed or
re-encoded on the way out, and SQLite sees one row per chunk, not per record.

Sequence numbers are per (node, epoch) and strictly increasing. The epoch is chosen when
the spool opens: the producer's start time in unix ms, and always above every epoch this
spool used before (a restart within the same millisecond, or a clock that went back,
still opens a new sequence space). Records of earlier epochs stay and are sent under
their own epoch.

Bounds: ``max_bytes`` (record bytes, default 256 MiB) and optionally ``max_records``.
When an append goes over, the oldest chunks of the lowest priority go first (telemetry,
then audited records, then blocked violations; loss records never). Chunks already sent
and not yet acknowledged are never dropped (the collector may have stored them: dropping
would count them twice). Every drop is counted by priority, persistently, and stated
in-band: a ``Loss`` record (reason SPOOL_FULL, the priority, count, cumulative total in
that epoch, seq range, attempts) appended to the epoch the dropped records belonged to,
with the next seq of that epoch.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nodeguard import log
from nodeguard.delivery.framing import loss_body, record_entry, varint
from nodeguard.errors import NodeguardError
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

_log = log.get("nodeguard.delivery.spool")

DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_CHUNK_RECORDS = 2000
DEFAULT_CHUNK_BYTES = 1 << 20
SCHEMA_VERSION = 1
PAGE_SIZE = 65536
WAL_CHECKPOINT_PAGES = 256  # checkpoint the WAL into the database every 16 MiB
WAL_SIZE_LIMIT = 64 << 20  # and truncate it back to this after a checkpoint

PRIORITY_NAMES: dict[int, str] = {
    pb.PRIORITY_TELEMETRY: "telemetry",
    pb.PRIORITY_AUDIT: "audit",
    pb.PRIORITY_VIOLATION: "violation",
    pb.PRIORITY_LOSS: "loss",
}
# What goes first when the spool is full. Loss records are never dropped.
DROP_ORDER: tuple[int, ...] = (pb.PRIORITY_TELEMETRY, pb.PRIORITY_AUDIT, pb.PRIORITY_VIOLATION)
# Chunks are written highest priority first (any order would do: each is its own range).
_APPEND_ORDER: tuple[int, ...] = (
    pb.PRIORITY_LOSS,
    pb.PRIORITY_VIOLATION,
    pb.PRIORITY_AUDIT,
    pb.PRIORITY_TELEMETRY,
)
_DROP_NAMES = tuple(PRIORITY_NAMES[p] for p in DROP_ORDER)
DROP_LOG_INTERVAL_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- append order; never reused
    epoch INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    records INTEGER NOT NULL,
    attempts INTEGER NOT NULL,             -- violation attempts the records stand for
    size INTEGER NOT NULL,                 -- length(entries)
    added_ms INTEGER NOT NULL,
    entries BLOB NOT NULL                  -- PublishRequest.records entries, concatenated
);
CREATE INDEX IF NOT EXISTS chunks_by_priority ON chunks (priority, id);
CREATE TABLE IF NOT EXISTS epochs (epoch INTEGER PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS loss_totals (
    epoch INTEGER NOT NULL,
    reason INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    total INTEGER NOT NULL,
    PRIMARY KEY (epoch, reason, priority)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)
    WITHOUT ROWID;
-- what the producer has reported per aggregation key, written with the records of the
-- same round (see nodeguard/agent/checkpoint.py); cleared when a full checkpoint is saved
CREATE TABLE IF NOT EXISTS reported (
    key TEXT PRIMARY KEY,
    cumulative INTEGER NOT NULL,
    first_ns INTEGER NOT NULL,
    at_ns INTEGER NOT NULL
) WITHOUT ROWID;
"""
_UPSERT_REPORTED = (
    "INSERT INTO reported (key, cumulative, first_ns, at_ns) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET cumulative = excluded.cumulative,"
    " first_ns = excluded.first_ns, at_ns = excluded.at_ns"
)

_INSERT = (
    "INSERT INTO chunks (epoch, priority, first_seq, last_seq, records, attempts, size,"
    " added_ms, entries) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_META_SENT = "meta.sent_upto"  # highest chunk id ever handed to the publisher
_META_LAST_EPOCH = "meta.last_epoch"


class SpoolError(NodeguardError):
    """The spool database cannot be opened, read or written."""


Records = Mapping[int, Sequence[tuple[bytes, int]]]
"""What :meth:`Spool.append` takes: priority -> [(record body, attempts), ...] in order.
A body is a framed ``Record.body`` (:func:`~nodeguard.delivery.framing.violation_body`
etc.); attempts is the violation count a record stands for (0 for telemetry and loss)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive chunks of one epoch, ascending seqs: one PublishRequest's records."""

    epoch: int
    first_seq: int
    last_seq: int
    records: int
    attempts: int
    first_id: int
    last_id: int
    entries: bytes  # PublishRequest.records entries, ready to send

    @property
    def size(self) -> int:
        return len(self.entries)


@dataclass(frozen=True, slots=True)
class AppendResult:
    appended: int  # records appended (loss records of the drops included)
    dropped: int  # records dropped to stay within the bounds


def new_epoch(now_ms: int) -> int:
    """A producer epoch: its start in unix ms, times 1000, plus three random digits, so two
    producers of one node (an agent and a ``nodeguard run``, or two runs) that start in
    the same millisecond do not share a sequence space: the collector dedups on (node,
    epoch, seq), and a shared epoch would make one's records the other's duplicates."""
    return now_ms * 1000 + secrets.randbelow(1000)


@dataclass(frozen=True, slots=True)
class SpoolStats:
    path: str
    epoch: int
    records: int  # records waiting (loss records included)
    bytes: int  # their wire bytes
    oldest_ms: int | None  # when the oldest waiting record was appended
    max_bytes: int
    max_records: int | None
    dropped: dict[str, int] = field(default_factory=dict)  # priority -> records, ever
    dropped_attempts: dict[str, int] = field(default_factory=dict)  # priority -> attempts
    rejected: int = 0  # records the collector refused (acknowledged as rejected), ever
    rejected_attempts: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def dropped_attempts_total(self) -> int:
        return sum(self.dropped_attempts.values())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Drop:
    records: int = 0
    attempts: int = 0
    first_seq: int = 0
    last_seq: int = 0


class Spool:
    """One spool file. Thread-safe: the producer appends while the publisher reads and
    acknowledges (one SQLite connection behind a lock; every call is short)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_records: int | None = None,
        chunk_records: int = DEFAULT_CHUNK_RECORDS,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        epoch: int | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        if max_bytes <= 0 or (max_records is not None and max_records <= 0):
            raise ValueError("spool bounds must be positive")
        if chunk_records <= 0 or chunk_bytes <= 0:
            raise ValueError("spool chunk limits must be positive")
        self.path = path
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.chunk_records = chunk_records
        self.chunk_bytes = chunk_bytes
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._closed = False
        self._over_logged = False
        self._unlogged_drops: Counter[str] = Counter()
        self._last_drop_log = float("-inf")
        self._db = self._connect()
        try:
            self._load(epoch)
        except sqlite3.Error as err:
            self._db.close()
            raise self._error("read", err) from err

    # ------------------------------------------------------------------ opening --

    def _error(self, action: str, err: BaseException) -> SpoolError:
        fix = "check the disk (space, permissions) of the spool's directory"
        if isinstance(err, sqlite3.DatabaseError) and "malformed" in str(err).lower():
            fix = f"move {self.path} away (its records are lost) and restart"
        return SpoolError(f"spool {self.path}: cannot {action}: {err}", fix=fix)

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self.path} is closed", fix="this is a bug: report it")

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10
            )
        except (OSError, sqlite3.Error) as err:
            raise self._error("open", err) from err
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, SCHEMA_VERSION):
                raise SpoolError(
                    f"spool {self.path} has schema version {version}; this nodeguard writes "
                    f"version {SCHEMA_VERSION}",
                    fix=f"drain it with the nodeguard that wrote it, or move {self.path} away",
                )
            # Chunks are large blobs: 64 KiB pages cost a third of 4 KiB ones per record
            # (fewer overflow pages and write calls). Only applies to a new file.
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as err:
            db.close()
            raise self._error("open", err) from err
        except SpoolError:
            db.close()
            raise
        os.chmod(self.path, 0o600)
        return db

    def _load(self, epoch: int | None) -> None:
        db = self._db
        self._counters: dict[str, int] = dict(db.execute("SELECT name, value FROM counters"))
        last = self._counters.get(_META_LAST_EPOCH, 0)
        chosen = epoch if epoch is not None else max(new_epoch(self._clock_ms()), last + 1)
        if chosen <= 0:
            raise ValueError("the epoch must be > 0")
        row = db.execute("SELECT next_seq FROM epochs WHERE epoch = ?", (chosen,)).fetchone()
        db.execute("BEGIN IMMEDIATE")
        # Epochs whose records are all gone are not needed any more.
        db.execute(
            "DELETE FROM epochs WHERE epoch != ? AND epoch NOT IN (SELECT DISTINCT epoch FROM"
            " chunks)",
            (chosen,),
        )
        db.execute(
            "DELETE FROM loss_totals WHERE epoch NOT IN (SELECT epoch FROM epochs) AND epoch != ?",
            (chosen,),
        )
        if row is None:
            db.execute("INSERT INTO epochs (epoch, next_seq) VALUES (?, 1)", (chosen,))
        self._set_counter(_META_LAST_EPOCH, max(last, chosen))
        db.execute("COMMIT")
        self.epoch = chosen
        self._next_seq = int(row[0]) if row is not None else 1
        records, size = db.execute(
            "SELECT coalesce(sum(records), 0), coalesce(sum(size), 0) FROM chunks"
        ).fetchone()
        self._records = int(records)
        self._bytes = int(size)
        self._sent_upto = self._counters.get(_META_SENT, 0)
        if self._records:
            _log.info(
                "spool_opened",
                path=str(self.path),
                records=self._records,
                bytes=self._bytes,
                epoch=chosen,
            )

    def _set_counter(self, name: str, value: int) -> None:
        self._counters[name] = value
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
            "SET value = excluded.value",
            (name, value),
        )

    def _add_counter(self, name: str, delta: int) -> None:
        if delta:
            self._set_counter(name, self._counters.get(name, 0) + delta)

    # ---------------------------------------------------------------- accessors --

    @property
    def records(self) -> int:
        """Records waiting (loss records included)."""
        return self._records

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def reported_rows(self) -> list[tuple[str, int, int, int]]:
        """The ``reported`` rows appended since the last :meth:`clear_reported`."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT key, cumulative, first_ns, at_ns FROM reported"
            ).fetchall()
            return [(str(k), int(c), int(f), int(a)) for k, c, f, a in rows]

    def clear_reported(self) -> None:
        """After a full checkpoint was saved: the rows it covers are no longer needed."""
        with self._lock:
            self._check_open()
            try:
                self._db.execute("DELETE FROM reported")
            except sqlite3.Error as err:
                raise self._error("clear reported", err) from err

    def counter(self, name: str) -> int:
        """A persistent counter (``dropped.<priority>``, ``dropped_attempts.<priority>``,
        ``rejected``, ``rejected_attempts``, or one a caller set with ``append(meta=)``)."""
        with self._lock:
            return self._counters.get(name, 0)

    def stats(self) -> SpoolStats:
        with self._lock:
            oldest: int | None = None
            if self._records and not self._closed:
                try:
                    row = self._db.execute(
                        "SELECT added_ms FROM chunks ORDER BY id LIMIT 1"
                    ).fetchone()
                except sqlite3.Error:
                    row = None
                oldest = int(row[0]) if row else None
            c = self._counters
            names = _DROP_NAMES
            return SpoolStats(
                path=str(self.path),
                epoch=self.epoch,
                records=self._records,
                bytes=self._bytes,
                oldest_ms=oldest,
                max_bytes=self.max_bytes,
                max_records=self.max_records,
                dropped={n: c.get(f"dropped.{n}", 0) for n in names},
                dropped_attempts={n: c.get(f"dropped_attempts.{n}", 0) for n in names},
                rejected=c.get("rejected", 0),
                rejected_attempts=c.get("rejected_attempts", 0),
            )

    # ------------------------------------------------------------------- append --

    def append(
        self,
        records: Records,
        *,
        meta: Mapping[str, int] | None = None,
        reported: Sequence[tuple[str, int, int, int]] = (),
    ) -> AppendResult:
        """Assign seqs to ``records`` (in order, priority by priority) and store them in one
        transaction, together with ``meta`` (persistent counters the caller keeps with
        the records, e.g. the kernel loss count it has reported) and ``reported`` ((key,
        cumulative, first_ns, at_ns) rows of what these records report); then drop what does not
        fit. Raises :class:`SpoolError` when the database cannot be written (nothing of
        this append is stored then)."""
        with self._lock:
            self._check_open()
            now = self._clock_ms()
            epoch = self.epoch
            seq = self._next_seq
            limit_records = self.chunk_records
            limit_bytes = self.chunk_bytes
            rows: list[tuple[int, int, int, int, int, int, int, int, bytes]] = []
            appended = 0
            added = 0
            for priority in _APPEND_ORDER:
                items = records.get(priority)
                if not items:
                    continue
                prefix = b"\x10" + varint(priority)
                parts: list[bytes] = []
                size = attempts = 0
                first = seq
                for body, count in items:
                    # the Record (seq, priority, body) framed as PublishRequest field 3, in
                    # one allocation (what record_entry() builds, 3x faster inline)
                    s = varint(seq)
                    entry = b"\x1a%b\x08%b%b%b" % (varint(len(s) + len(body) + 3), s, prefix, body)
                    parts.append(entry)
                    size += len(entry)
                    attempts += count
                    seq += 1
                    if len(parts) >= limit_records or size >= limit_bytes:
                        rows.append(
                            (epoch, priority, first, seq - 1, len(parts), attempts, size, now,
                             b"".join(parts))
                        )  # fmt: skip
                        appended += len(parts)
                        added += size
                        parts = []
                        size = attempts = 0
                        first = seq
                if parts:
                    rows.append(
                        (epoch, priority, first, seq - 1, len(parts), attempts, size, now,
                         b"".join(parts))
                    )  # fmt: skip
                    appended += len(parts)
                    added += size
            if not rows and not meta and not reported:
                return AppendResult(0, 0)
            saved = (self._next_seq, self._records, self._bytes, dict(self._counters))
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(_INSERT, rows)
                if reported:
                    db.executemany(_UPSERT_REPORTED, reported)
                self._next_seq = seq
                self._records += appended
                self._bytes += added
                for name, value in (meta or {}).items():
                    self._set_counter(name, value)
                dropped, losses = self._enforce_bounds(now)
                db.execute(
                    "UPDATE epochs SET next_seq = ? WHERE epoch = ?", (self._next_seq, epoch)
                )
                db.execute("COMMIT")
            except sqlite3.Error as err:
                self._next_seq, self._records, self._bytes, self._counters = saved
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise self._error("append", err) from err
            return AppendResult(appended + losses, dropped)

    def _alloc_seq(self, epoch: int) -> int:
        if epoch == self.epoch:
            seq = self._next_seq
            self._next_seq += 1
            return seq
        row = self._db.execute("SELECT next_seq FROM epochs WHERE epoch = ?", (epoch,)).fetchone()
        seq = int(row[0]) if row is not None else 1
        self._db.execute(
            "INSERT INTO epochs (epoch, next_seq) VALUES (?, ?) ON CONFLICT (epoch) DO UPDATE "
            "SET next_seq = excluded.next_seq",
            (epoch, seq + 1),
        )
        return seq

    def _over(self) -> tuple[int, int]:
        over_bytes = self._bytes - self.max_bytes
        over_records = self._records - self.max_records if self.max_records is not None else 0
        return over_bytes, over_records

    def _enforce_bounds(self, now: int) -> tuple[int, int]:
        """Drop the oldest unsent chunks of the lowest priority until the spool fits; a
        Loss record per (epoch, priority) dropped. Returns (records dropped, loss records
        appended). Inside the append's transaction."""
        over_bytes, over_records = self._over()
        if over_bytes <= 0 and over_records <= 0:
            return 0, 0
        db = self._db
        drops: dict[tuple[int, int], _Drop] = {}
        for priority in DROP_ORDER:
            while over_bytes > 0 or over_records > 0:
                rows = db.execute(
                    "SELECT id, epoch, first_seq, last_seq, records, attempts, size FROM chunks "
                    "WHERE priority = ? AND id > ? ORDER BY id LIMIT 256",
                    (priority, self._sent_upto),
                ).fetchall()
                if not rows:
                    break
                first_id = last_id = int(rows[0][0])
                for cid, epoch, first_seq, last_seq, count, attempts, size in rows:
                    last_id = cid
                    over_bytes -= size
                    over_records -= count
                    self._bytes -= size
                    self._records -= count
                    d = drops.setdefault((epoch, priority), _Drop(first_seq=first_seq))
                    d.records += count
                    d.attempts += attempts
                    d.first_seq = min(d.first_seq, first_seq)
                    d.last_seq = max(d.last_seq, last_seq)
                    if over_bytes <= 0 and over_records <= 0:
                        break
                db.execute(
                    "DELETE FROM chunks WHERE priority = ? AND id BETWEEN ? AND ?",
                    (priority, first_id, last_id),
                )
            if over_bytes <= 0 and over_records <= 0:
                break
        if (over_bytes > 0 or over_records > 0) and not self._over_logged:
            self._over_logged = True
            _log.warning(
                "spool_over_bound",
                path=str(self.path),
                bytes=self._bytes,
                records=self._records,
                max_bytes=self.max_bytes,
                max_records=self.max_records,
                why="only loss records and records awaiting the collector's ack are left",
            )
        elif over_bytes <= 0 and over_records <= 0:
            self._over_logged = False
        dropped = 0
        for (epoch, priority), d in sorted(drops.items()):
            dropped += d.records
            name = PRIORITY_NAMES[priority]
            self._add_counter(f"dropped.{name}", d.records)
            self._add_counter(f"dropped_attempts.{name}", d.attempts)
            total = self._add_loss_total(epoch, pb.LOSS_REASON_SPOOL_FULL, priority, d.records)
            seq = self._alloc_seq(epoch)
            body = loss_body(
                pb.Loss(
                    reason=pb.LOSS_REASON_SPOOL_FULL,
                    priority=priority,  # type: ignore[arg-type]
                    count=d.records,
                    total=total,
                    time_ms=now,
                    first_seq=d.first_seq,
                    last_seq=d.last_seq,
                    attempts=d.attempts,
                )
            )
            entry = record_entry(seq, pb.PRIORITY_LOSS, body)
            db.execute(_INSERT, (epoch, pb.PRIORITY_LOSS, seq, seq, 1, 0, len(entry), now, entry))
            self._records += 1
            self._bytes += len(entry)
        if drops:
            self._log_drops(drops)
        return dropped, len(drops)

    def _log_drops(self, drops: dict[tuple[int, int], _Drop]) -> None:
        """One warning for the first drop, then at most one per DROP_LOG_INTERVAL_S with
        what was dropped meanwhile (a full spool drops on every append)."""
        for (_epoch, priority), d in drops.items():
            self._unlogged_drops[PRIORITY_NAMES[priority]] += d.records
        now = time.monotonic()
        if now - self._last_drop_log < DROP_LOG_INTERVAL_S:
            return
        self._last_drop_log = now
        _log.warning(
            "spool_full_dropped",
            path=str(self.path),
            dropped=dict(self._unlogged_drops),
            dropped_total={n: self._counters.get(f"dropped.{n}", 0) for n in _DROP_NAMES},
            max_bytes=self.max_bytes,
            max_records=self.max_records,
        )
        self._unlogged_drops.clear()

    def _add_loss_total(self, epoch: int, reason: int, priority: int, count: int) -> int:
        row = self._db.execute(
            "INSERT INTO loss_totals (epoch, reason, priority, total) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (epoch, reason, priority) DO UPDATE SET total = total + excluded.total "
            "RETURNING total",
            (epoch, reason, priority, count),
        ).fetchone()
        return int(row[0])

    # --------------------------------------------------------------- publishing --

    def next_batch(
        self,
        after_id: int = 0,
        *,
        max_records: int | None = None,
        max_bytes: int | None = None,
        mark_sent: bool = True,
    ) -> Batch | None:
        """The next batch after chunk ``after_id`` (0: from the start): consecutive
        chunks of one epoch with ascending seqs, at most ``max_records`` records and
        ``max_bytes`` bytes (a single larger chunk still goes alone). ``mark_sent``
        protects its chunks from being dropped until acknowledged (a sent batch may be
        stored by the collector even if its ack never arrives)."""
        max_records = max_records or self.chunk_records
        max_bytes = max_bytes or self.chunk_bytes
        with self._lock:
            self._check_open()
            try:
                metas = self._db.execute(
                    "SELECT id, epoch, first_seq, last_seq, records, attempts, size FROM chunks "
                    "WHERE id > ? ORDER BY id LIMIT 64",
                    (after_id,),
                ).fetchall()
                if not metas:
                    return None
                first_id, epoch, first_seq, last_seq, records, attempts, size = metas[0]
                last_id = first_id
                for cid, c_epoch, c_first, c_last, c_records, c_attempts, c_size in metas[1:]:
                    if (
                        c_epoch != epoch
                        or c_first <= last_seq
                        or records + c_records > max_records
                        or size + c_size > max_bytes
                    ):
                        break
                    last_id, last_seq = cid, c_last
                    records += c_records
                    attempts += c_attempts
                    size += c_size
                parts = self._db.execute(
                    "SELECT entries FROM chunks WHERE id BETWEEN ? AND ? ORDER BY id",
                    (first_id, last_id),
                ).fetchall()
                if mark_sent and last_id > self._sent_upto:
                    self._sent_upto = last_id
                    self._set_counter(_META_SENT, last_id)
            except sqlite3.Error as err:
                raise self._error("read", err) from err
        return Batch(
            epoch=epoch,
            first_seq=first_seq,
            last_seq=last_seq,
            records=records,
            attempts=attempts,
            first_id=first_id,
            last_id=last_id,
            entries=b"".join(p[0] for p in parts),
        )

    def pending(self, limit: int = 1_000_000) -> list[Batch]:
        """Up to ``limit`` batches from the start, without marking them sent (for
        inspection; the publisher uses :meth:`next_batch`)."""
        out: list[Batch] = []
        after = 0
        while len(out) < limit:
            batch = self.next_batch(after, mark_sent=False)
            if batch is None:
                break
            out.append(batch)
            after = batch.last_id
        return out

    def ack(self, batch: Batch) -> int:
        """The collector stored (or already had) ``batch``: forget it. Returns the records
        removed."""
        with self._lock:
            self._check_open()
            try:
                rows = self._db.execute(
                    "DELETE FROM chunks WHERE id BETWEEN ? AND ? RETURNING records, size",
                    (batch.first_id, batch.last_id),
                ).fetchall()
            except sqlite3.Error as err:
                raise self._error("delete acknowledged records", err) from err
            removed = int(sum(r[0] for r in rows))
            self._records -= removed
            self._bytes -= sum(r[1] for r in rows)
            return removed

    def note_rejected(self, records: int, attempts: int) -> None:
        """Count records the collector refused (persistently)."""
        if records <= 0:
            return
        with self._lock:
            self._check_open()
            try:
                self._add_counter("rejected", records)
                self._add_counter("rejected_attempts", attempts)
            except sqlite3.Error as err:
                raise self._error("count rejected records", err) from err

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            db = self._db
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                _log.warning("spool_checkpoint_failed", path=str(self.path), error=str(err))
            db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
