"""Delivery by cursor: one thread per sink moves that sink's persisted cursor through the
store, at least once and never silently losing an event.

Each :class:`SinkRunner` loops: ``read_span(cursor, batchSize)`` -> render -> send ->
``set_cursor(the span's end)``. The batch in memory is the runner's queue (bounded by
``batchSize``); the store is its durable backlog. A failed send keeps the batch, counts
a failure and tries the same batch again after an exponential backoff with full jitter
(:class:`nodeguard.delivery.backoff.Backoff`, the producer's: 0.5 s doubling up to
``maxRetryInterval``), so a sink that was down catches up afterwards and its cursor never
passes an event it did not deliver. Every runner has its own thread, batch, backoff and
counters: one sink that is down never delays another.

Only retention can take an event from a sink: when rows were deleted before the sink
delivered them (its cursor is below the oldest stored row), they are counted as
``skipped`` and logged at error, and the runner goes on from the oldest row. An event a
sink cannot render at all (a bug, never expected), and a stored row whose body does not
decode (the store skips it and logs it), are counted the same way; the cursor moves
past them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from nodeguard import log
from nodeguard.collector.records import StoredEvent
from nodeguard.collector.sinks.config import (
    AnySink,
    JsonlSink,
    NatsSink,
    SplunkHecSink,
    SyslogSink,
)
from nodeguard.collector.sinks.sink import Sink, SinkDeliveryError, SinkError
from nodeguard.collector.store import EventSpan
from nodeguard.delivery.backoff import Backoff

_log = log.get("nodeguard.collector.sinks.runner")

INITIAL_RETRY_S = 0.5
# An idle runner sleeps in the store's new-event notification, waking at least this
# often to notice stop() (the store has no way to interrupt a waiter).
IDLE_WAIT_S = 0.25
# A failing sink logs its first failure at warning, then at most this often.
FAILURE_LOG_INTERVAL_S = 60.0
CURSOR_PREFIX = "sink:"

State = Literal["ok", "retrying", "stopped"]


class SinkStore(Protocol):
    """What a runner needs of :class:`nodeguard.collector.store.EventStore`."""

    def read_span(self, rowid: int, limit: int) -> EventSpan: ...
    def wait_for_new(self, after_rowid: int, timeout_s: float) -> bool: ...
    def last_rowid(self) -> int: ...
    def first_rowid(self) -> int: ...
    def cursor(self, name: str) -> int: ...
    def set_cursor(self, name: str, rowid: int) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkStats:
    """A sink's counters since start (a snapshot). ``delivered`` counts events,
    ``batches`` successful sends, ``failures`` failed sends, ``retries`` sends of a batch
    that had failed before, ``lag`` stored events not delivered yet, ``skipped`` events
    the sink will never deliver (deleted by retention first, undecodable in the store,
    or unrenderable)."""

    name: str
    type: str
    state: State
    delivered: int
    batches: int
    failures: int
    retries: int
    lag: int
    skipped: int
    last_error: str | None
    last_delivery_ms: int | None


class SinkRunner:
    """Delivers the store to one sink in its own thread (see the module docstring)."""

    def __init__(
        self,
        name: str,
        sink: Sink[Any],
        store: SinkStore,
        *,
        batch_size: int,
        max_retry_interval_s: float,
        initial_retry_s: float = INITIAL_RETRY_S,
        idle_wait_s: float = IDLE_WAIT_S,
    ) -> None:
        self.name = name
        self.sink = sink
        self.store = store
        self.batch_size = batch_size
        self.cursor_name = CURSOR_PREFIX + name
        self.idle_wait_s = idle_wait_s
        self.backoff = Backoff(
            initial=initial_retry_s, maximum=max(max_retry_interval_s, initial_retry_s)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._state: State = "stopped"
        self._cursor = 0
        self._delivered = 0
        self._batches = 0
        self._failures = 0
        self._retries = 0
        self._skipped = 0
        self._last_error: str | None = None
        self._last_delivery_ms: int | None = None
        self._streak = 0  # consecutive failures
        self._streak_started = 0.0
        self._last_failure_log = 0.0

    # ------------------------------------------------------------------- public --

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"sink {self.name} is already started")
        self._stop.clear()
        self._cursor = self.store.cursor(self.cursor_name)
        with self._lock:
            self._state = "ok"
        self._thread = threading.Thread(
            target=self._run, name=f"nodeguard-sink-{self.name}", daemon=True
        )
        self._thread.start()
        _log.info(
            "sink_started",
            sink=self.name,
            type=self.sink.type,
            to=self.sink.describe(),
            cursor=self._cursor,
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the current send (a send blocks at most the sink's I/O timeout)."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout_s)
        if thread.is_alive():
            _log.warning("sink_stop_timeout", sink=self.name, timeout_s=timeout_s)
        self._thread = None
        with self._lock:
            self._state = "stopped"

    def stats(self) -> SinkStats:
        try:
            last = self.store.last_rowid()
        except Exception:  # a closed store: report what is known
            last = self._cursor
        with self._lock:
            return SinkStats(
                name=self.name,
                type=self.sink.type,
                state=self._state,
                delivered=self._delivered,
                batches=self._batches,
                failures=self._failures,
                retries=self._retries,
                lag=max(0, last - self._cursor),
                skipped=self._skipped,
                last_error=self._last_error,
                last_delivery_ms=self._last_delivery_ms,
            )

    # ------------------------------------------------------------------ private --

    def _run(self) -> None:
        span: EventSpan | None = None  # the batch being delivered
        items: list[Any] = []
        sent_before = False  # this batch was sent (and failed) before
        try:
            while not self._stop.is_set():
                if span is None:
                    try:
                        span = self._next_span()
                    except Exception as err:
                        self._store_failed("read", err)
                        continue
                    if span.end_rowid <= self._cursor:  # nothing new
                        span = None
                        self._wait_for_new()
                        continue
                    items = self._render(span.events)
                    sent_before = False
                if sent_before:
                    with self._lock:
                        self._retries += 1
                try:
                    if items:
                        self.sink.send(items)
                except Exception as err:
                    sent_before = True
                    self._failed(err, len(items))
                    self._stop.wait(self.backoff.next_delay())
                    continue
                self._delivered_span(span, len(items))
                span, items = None, []
        finally:
            try:
                self.sink.close()
            except Exception as err:
                _log.warning("sink_close_failed", sink=self.name, error=str(err))
            with self._lock:
                self._state = "stopped"

    def _next_span(self) -> EventSpan:
        self._account_retention()
        span = self.store.read_span(self._cursor, self.batch_size)
        if span.undecodable:  # the store logged each row; the sink will never send them
            with self._lock:
                self._skipped += span.undecodable
        return span

    def _wait_for_new(self) -> None:
        try:
            self.store.wait_for_new(self._cursor, self.idle_wait_s)
        except Exception as err:
            self._store_failed("wait", err)

    def _account_retention(self) -> None:
        """Rows below the store's oldest row are gone: count them as skipped."""
        first = self.store.first_rowid()
        if first <= 0 or self._cursor >= first - 1:
            return
        lost = first - 1 - self._cursor
        _log.error(
            "sink_events_skipped",
            sink=self.name,
            events=lost,
            cursor=self._cursor,
            first_rowid=first,
            reason="retention deleted them before the sink delivered them",
            hint=(
                "a new sink (or one that never delivered): these events were deleted "
                "before it could send them"
                if self._cursor == 0
                else "the sink was down longer than the store keeps events: raise "
                "store.retention, or fix the sink sooner"
            ),
        )
        self.store.set_cursor(self.cursor_name, first - 1)
        with self._lock:
            self._skipped += lost
            self._cursor = first - 1

    def _render(self, batch: Sequence[StoredEvent]) -> list[Any]:
        items: list[Any] = []
        bad = 0
        for event in batch:
            try:
                items.append(self.sink.render(event))
            except Exception as err:
                bad += 1
                _log.error(
                    "sink_event_unrenderable",
                    sink=self.name,
                    rowid=event.rowid,
                    uid=event.violation.uid,
                    error=repr(err),
                )
        if bad:
            with self._lock:
                self._skipped += bad
        return items

    def _delivered_span(self, span: EventSpan, count: int) -> None:
        """After a send of ``count`` items (0: the span held nothing to send): move the
        cursor to the span's end."""
        cursor = span.end_rowid
        try:
            self.store.set_cursor(self.cursor_name, cursor)
        except Exception as err:
            # delivered, but the cursor did not persist: after a restart the batch is
            # sent again (a duplicate, never a loss)
            _log.error("sink_cursor_not_saved", sink=self.name, cursor=cursor, error=str(err))
        now_ms = int(time.time() * 1000)
        with self._lock:
            self._cursor = cursor
            if count:
                self._delivered += count
                self._batches += 1
                self._last_delivery_ms = now_ms
            self._state = "ok"
        if self._streak:
            _log.info(
                "sink_recovered",
                sink=self.name,
                failures=self._streak,
                down_s=round(time.monotonic() - self._streak_started, 1),
            )
            self._streak = 0
        self.backoff.reset()

    def _failed(self, err: BaseException, events: int) -> None:
        if isinstance(err, SinkDeliveryError):
            text = str(err)
        else:  # a bug in a sink: keep retrying, but say so
            text = f"unexpected {type(err).__name__}: {err}"
        now = time.monotonic()
        with self._lock:
            self._failures += 1
            self._state = "retrying"
            self._last_error = text
        self._streak += 1
        if self._streak == 1:
            self._streak_started = now
            self._last_failure_log = now
            _log.warning(
                "sink_delivery_failed",
                sink=self.name,
                type=self.sink.type,
                events=events,
                error=text,
                exc_info=not isinstance(err, SinkDeliveryError),
            )
        elif now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
            self._last_failure_log = now
            _log.warning(
                "sink_still_failing",
                sink=self.name,
                type=self.sink.type,
                failures=self._streak,
                down_s=round(now - self._streak_started, 1),
                error=text,
            )

    def _store_failed(self, what: str, err: BaseException) -> None:
        if self._stop.is_set():  # stopping: the store may be closing under us
            _log.debug("sink_store_closed", sink=self.name, operation=what, error=str(err))
            return
        _log.error("sink_store_failed", sink=self.name, operation=what, error=str(err))
        self._stop.wait(self.backoff.next_delay())


def make_sink(config: AnySink, *, cluster: str) -> Sink[Any]:
    """The sink a configuration describes (no I/O yet: sinks connect on first send)."""
    # imported here: each sink module pulls in its own client libraries
    if isinstance(config, JsonlSink):
        from nodeguard.collector.sinks.jsonl import JsonlWriter  # noqa: PLC0415

        return JsonlWriter(config)
    if isinstance(config, SyslogSink):
        from nodeguard.collector.sinks.syslog import SyslogSender  # noqa: PLC0415

        return SyslogSender(config, cluster=cluster)
    if isinstance(config, SplunkHecSink):
        from nodeguard.collector.sinks.hec import HecSender  # noqa: PLC0415

        return HecSender(config)
    if isinstance(config, NatsSink):
        from nodeguard.collector.sinks.nats import NatsPublisher  # noqa: PLC0415

        return NatsPublisher(config, cluster=cluster)
    raise SinkError(f"unknown sink type {type(config).__name__}")


def build_runners(
    configs: Sequence[AnySink], store: SinkStore, *, cluster: str
) -> list[SinkRunner]:
    """One (not yet started) runner per configured sink."""
    names: set[str] = set()
    runners = []
    for config in configs:
        if config.name in names:
            raise SinkError(
                f"two sinks are named {config.name!r}",
                fix="give every sink its own name (it keys the sink's cursor)",
            )
        names.add(config.name)
        runners.append(
            SinkRunner(
                config.name,
                make_sink(config, cluster=cluster),
                store,
                batch_size=config.batch_size,
                max_retry_interval_s=config.max_retry_interval,
            )
        )
    return runners
