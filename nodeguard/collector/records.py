"""What the collector's store holds and hands out (shared by the store, the server, the
sinks and ``nodeguard events``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nodeguard.events.model import Kind, Violation

DEFAULT_STORE_PATH = Path("/var/lib/nodeguard-collector/events.db")


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One stored violation. ``rowid`` orders the store (arrival order) and is what
    sink cursors and ``--follow`` advance over."""

    rowid: int
    node: str
    epoch: int
    seq: int
    received_ms: int
    violation: Violation


@dataclass(frozen=True, slots=True)
class StoredLoss:
    """An in-band loss record a producer sent (``nodeguard.v1.Loss``), as stored."""

    rowid: int
    node: str
    epoch: int
    seq: int
    received_ms: int
    reason: str  # "spool_full" | "kernel" | "userspace" | "rejected" | "unspecified"
    priority: str  # "telemetry" | "audit" | "violation" | "loss" | "unspecified"
    count: int
    total: int
    attempts: int
    time_ms: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class InsertResult:
    """The outcome of one batch: every record is exactly one of stored, duplicate
    (already stored under the same (node, epoch, seq)) or rejected (invalid)."""

    stored: int
    duplicates: int
    rejected: int
    reject_reason: str | None  # the first rejection's reason
    last_rowid: int  # the highest events rowid after the batch (0: none yet)


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters of ``nodeguard events``; None = any. Times are unix ms, inclusive."""

    since_ms: int | None = None
    until_ms: int | None = None
    node: str | None = None
    namespace: str | None = None
    pod: str | None = None
    policy: str | None = None
    kind: Kind | None = None
    after_rowid: int = 0  # only rows with rowid > after_rowid (--follow)
    limit: int | None = 1000
    newest_first: bool = False


@dataclass(frozen=True, slots=True)
class Retention:
    """Rows older than ``max_age_s`` (by violation time) or beyond the newest
    ``max_events`` are deleted by :meth:`EventStore.apply_retention`. None = no bound."""

    max_age_s: float | None = 7 * 86400
    max_events: int | None = 10_000_000
