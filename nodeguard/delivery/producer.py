"""The producer front end: what the node agent and ``nodeguard run`` feed the stream with.

Violations, loss statements and telemetry become ``nodeguard.v1.Record`` bodies
(serialized once, here) in an in-memory buffer; :meth:`Producer.flush` appends the
buffer to the spool in one transaction (the agent calls it once per loop round, and the
buffer flushes itself when it reaches ``flush_records`` so a long ring-buffer poll cannot
grow it without bound) and wakes the publisher.

Loss is stated in-band: :meth:`Producer.report_loss` turns a cumulative loss counter
(the kernel's ring-buffer-full count, user-space decode or write failures) into a
``Loss`` record for the increase since the last report. The kernel's counter outlives
the agent (pinned maps), so what was reported of it is kept in the spool
(``persistent=True``) and a restarted agent reports only what is new.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from nodeguard import log
from nodeguard.delivery.framing import loss_body, telemetry_body, violation_body_bytes
from nodeguard.delivery.publisher import Publisher, PublisherStats
from nodeguard.delivery.spool import Records, Spool, SpoolError
from nodeguard.events.model import Violation
from nodeguard.events.wire import WireEncoder, priority_of
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

_log = log.get("nodeguard.delivery.producer")

DEFAULT_FLUSH_RECORDS = 8192
ERROR_LOG_INTERVAL_S = 10.0

REASON_NAMES: dict[int, str] = {
    pb.LOSS_REASON_SPOOL_FULL: "spool_full",
    pb.LOSS_REASON_KERNEL: "kernel",
    pb.LOSS_REASON_USERSPACE: "userspace",
    pb.LOSS_REASON_REJECTED: "rejected",
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Producer:
    """Buffers records for ``spool`` and wakes ``publisher`` (None: spool only)."""

    def __init__(
        self,
        spool: Spool,
        publisher: Publisher | None = None,
        *,
        flush_records: int = DEFAULT_FLUSH_RECORDS,
        reported: Callable[[], Sequence[tuple[str, int, int, int]]] | None = None,
    ) -> None:
        self.spool = spool
        # what the records appended so far report (the agent's changed tracker keys):
        # taken at every flush, so it is committed with exactly those records
        self._take_reported = reported
        self._encoder = WireEncoder()
        self.publisher = publisher
        self.flush_records = flush_records
        self._lock = threading.Lock()
        self._violations: list[tuple[bytes, int]] = []
        self._audited: list[tuple[bytes, int]] = []
        self._losses: list[tuple[bytes, int]] = []
        self._telemetry: list[tuple[bytes, int]] = []
        self._meta: dict[str, int] = {}
        self._reported: dict[str, int] = {}
        self._loss_totals: Counter[tuple[int, int]] = Counter()
        self.appended = 0  # records appended to the spool by this producer
        self.lost = 0  # records lost because the spool could not be written
        self.lost_attempts = 0
        self._last_error_log = float("-inf")

    # ----------------------------------------------------------------- records --

    def add_violation(self, v: Violation) -> None:
        """Buffer one violation (priority: audited or blocked). One that cannot be encoded
        (a bug; text is cleaned where it is read) is counted as lost, never raised."""
        try:
            data = self._encoder.encode(v)
        except (ValueError, TypeError) as err:  # UnicodeError is a ValueError
            self.lost += 1
            self.lost_attempts += v.count
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                _log.error("violation_unencodable", uid=v.uid, error=str(err))
            return
        item = (violation_body_bytes(data), v.count)
        audited = priority_of(v) == pb.PRIORITY_AUDIT
        with self._lock:
            target = self._audited if audited else self._violations
            target.append(item)
            full = len(target) >= self.flush_records
        if full:
            self.flush()

    def add_loss(
        self,
        reason: int,
        count: int,
        *,
        priority: int = pb.PRIORITY_VIOLATION,
        attempts: int = 0,
    ) -> None:
        """State that ``count`` records of ``priority`` (standing for ``attempts``
        violation attempts, 0: not known) were lost for ``reason``."""
        count = max(count, 0)
        if count == 0 and attempts <= 0:
            return
        with self._lock:
            self._loss_totals[(reason, priority)] += count
            total = self._loss_totals[(reason, priority)]
            body = loss_body(
                pb.Loss(
                    reason=reason,  # type: ignore[arg-type]
                    priority=priority,  # type: ignore[arg-type]
                    count=count,
                    total=total,
                    time_ms=_now_ms(),
                    attempts=attempts,
                )
            )
            self._losses.append((body, 0))

    def report_loss(
        self,
        reason: int,
        cumulative: int,
        *,
        persistent: bool = False,
        priority: int = pb.PRIORITY_VIOLATION,
        attempts_cumulative: int | None = None,
    ) -> int:
        """Feed a cumulative loss counter; a Loss record for the increase since the last
        report (a decrease means the counter was reset: all of it is new). Returns the
        increase. ``persistent``: the counter outlives this process (the kernel's), so
        the reported value is kept in the spool with the records. ``attempts_cumulative``:
        a second cumulative counter, of the violation attempts the lost records stood
        for, reported the same way in ``Loss.attempts``."""
        name = REASON_NAMES.get(reason, str(reason))
        delta = self._advance(f"reported.{name}", cumulative, persistent=persistent)
        attempts = 0
        if attempts_cumulative is not None:
            # read just after ``cumulative``: a round may see an attempt whose record it
            # counted in the previous round, so a Loss may carry attempts and count 0
            attempts = self._advance(
                f"reported.{name}.attempts", attempts_cumulative, persistent=persistent
            )
        self.add_loss(reason, delta, priority=priority, attempts=attempts)
        return delta

    def _advance(self, key: str, cumulative: int, *, persistent: bool) -> int:
        with self._lock:
            last = self._reported.get(key)
        if last is None:
            last = self.spool.counter(key) if persistent else 0
        delta = cumulative - last if cumulative >= last else cumulative
        with self._lock:
            self._reported[key] = cumulative
            if persistent and cumulative != last:
                self._meta[key] = cumulative
        return delta

    def add_telemetry(self, state: str, counters: Mapping[str, int]) -> None:
        """A heartbeat with the producer's counters (lowest priority)."""
        message = pb.Telemetry(time_ms=_now_ms(), state=state)
        message.counters.update({k: int(v) for k, v in counters.items()})
        body = telemetry_body(message)
        with self._lock:
            self._telemetry.append((body, 0))

    @property
    def buffered(self) -> int:
        return len(self._violations) + len(self._audited) + len(self._losses) + len(self._telemetry)

    # ------------------------------------------------------------------- flush --

    def flush(self) -> int:
        """Append everything buffered to the spool (one transaction) and wake the
        publisher. Returns the records appended. A spool that cannot be written loses
        the records: counted in :attr:`lost` (the caller reports it as user-space loss)
        and logged, never raised (delivery must not stop enforcement)."""
        reported = self._take_reported() if self._take_reported is not None else ()
        with self._lock:
            if not (
                self._violations
                or self._audited
                or self._losses
                or self._telemetry
                or self._meta
                or reported
            ):
                return 0
            records: Records = {
                pb.PRIORITY_VIOLATION: self._violations,
                pb.PRIORITY_AUDIT: self._audited,
                pb.PRIORITY_LOSS: self._losses,
                pb.PRIORITY_TELEMETRY: self._telemetry,
            }
            meta = self._meta
            self._violations, self._audited, self._losses, self._telemetry = [], [], [], []
            self._meta = {}
        count = sum(len(items) for items in records.values())
        try:
            self.spool.append(records, meta=meta, reported=reported)
        except SpoolError as err:
            # violations lost (loss and telemetry records are not violations: they are
            # restated by the next report)
            kept = (pb.PRIORITY_VIOLATION, pb.PRIORITY_AUDIT)
            self.lost += sum(len(records[p]) for p in kept)
            self.lost_attempts += sum(a for p in kept for _, a in records[p])
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                _log.error(
                    "spool_append_failed",
                    error=err.message,
                    fix=err.fix,
                    records=count,
                    lost_total=self.lost,
                )
            with self._lock:  # the reported loss values were not saved: retry next time
                self._meta = {**meta, **self._meta}
            return 0
        self.appended += count
        if self.publisher is not None and count:
            self.publisher.notify()
        return count

    # ------------------------------------------------------------------- state --

    def stats(self) -> PublisherStats | None:
        return None if self.publisher is None else self.publisher.stats()

    def close(self, drain_s: float = 0.0) -> bool:
        """Flush, give the publisher up to ``drain_s`` to deliver everything, stop it and
        close the spool. True when nothing is left undelivered."""
        self.flush()
        drained = self.spool.records == 0
        if self.publisher is not None:
            if drain_s > 0:
                drained = self.publisher.wait_drained(drain_s)
            self.publisher.stop()
        drained = drained or self.spool.records == 0
        self.spool.close()
        return drained
