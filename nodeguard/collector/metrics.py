"""Prometheus metrics of the collector.

Every value is read at scrape time from its owner (the Publish servicer's
:class:`~nodeguard.collector.service.CollectorStats`, the store's stats, each sink's
``SinkRunner.stats()``), so ``/metrics`` and :meth:`CollectorServer.stats` never
disagree. The registry is private (never the process-global one). Served over HTTP at
``metricsAddress`` by the agent's :class:`~nodeguard.agent.metrics.MetricsServer`
(``/metrics``, ``/healthz``, ``/readyz``).

================================================ ======= ==================================
name                                             type    labels / meaning
================================================ ======= ==================================
nodeguard_collector_batches_total                counter batches acknowledged
nodeguard_collector_records_stored_total         counter records stored
nodeguard_collector_records_duplicate_total      counter records already stored (resent)
nodeguard_collector_records_rejected_total       counter reason: invalid_record, batch_epoch,
                                                         batch_order
nodeguard_collector_streams_refused_total        counter reason: no_cert, no_identity,
                                                         ambiguous_cert, wrong_node, no_node,
                                                         node_changed, malformed,
                                                         too_many_streams, store_error
nodeguard_collector_streams_broken_total         counter streams whose receive failed (producer
                                                         cancelled or gone, message over
                                                         maxMessageBytes)
nodeguard_collector_streams                      gauge   Publish streams open now
nodeguard_collector_producers                    gauge   producers connected now
nodeguard_collector_store_events                 gauge   violation records in the store
nodeguard_collector_store_losses                 gauge   loss records in the store
nodeguard_collector_store_bytes                  gauge   size of the store's files
nodeguard_collector_retention_deleted_total      counter rows deleted by retention
nodeguard_collector_sink_delivered_total         counter sink, type
nodeguard_collector_sink_failures_total          counter sink, type
nodeguard_collector_sink_retries_total           counter sink, type
nodeguard_collector_sink_skipped_total           counter sink, type
nodeguard_collector_sink_lag                     gauge   sink, type: stored events not yet
                                                         delivered
nodeguard_collector_sink_state                   gauge   sink, type, state: 1 for the
                                                         sink's current state
nodeguard_collector_up                           gauge   1 while the collector serves
nodeguard_collector_info                         info    version
================================================ ======= ==================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from nodeguard import __version__
from nodeguard.collector.service import (
    REJECT_EPOCH,
    REJECT_INVALID_RECORD,
    REJECT_ORDER,
    CollectorStats,
)

PREFIX = "nodeguard_collector"

REJECT_REASONS = (REJECT_INVALID_RECORD, REJECT_EPOCH, REJECT_ORDER)
REFUSE_REASONS = (
    "no_cert",
    "no_identity",
    "ambiguous_cert",
    "wrong_node",
    "no_node",
    "node_changed",
    "malformed",
    "too_many_streams",
    "store_error",
    "shutting_down",
    "batch_too_large",
)


@dataclass(frozen=True, slots=True)
class StoreFigures:
    """What the metrics show about the store."""

    events: int
    losses: int
    size_bytes: int
    retention_deleted: int


class _Snapshot(Collector):
    def __init__(
        self,
        stats: Callable[[], CollectorStats],
        store: Callable[[], StoreFigures | None],
        sinks: Callable[[], Sequence[Any]],
        up: Callable[[], bool],
    ) -> None:
        self._stats = stats
        self._store = store
        self._sinks = sinks
        self._up = up

    def collect(self) -> Iterator[Any]:
        s = self._stats()
        yield _counter(
            "batches", "Batches acknowledged (after their records were stored).", s.batches
        )
        yield _counter("records_stored", "Violation, loss and telemetry records stored.", s.stored)
        yield _counter(
            "records_duplicate",
            "Records already stored under the same (node, epoch, seq): resent, stored once.",
            s.duplicates,
        )
        yield _by_label(
            CounterMetricFamily(
                f"{PREFIX}_records_rejected",
                "Records refused as invalid (acknowledged as rejected, not stored).",
                labels=["reason"],
            ),
            s.rejected,
            REJECT_REASONS,
        )
        yield _by_label(
            CounterMetricFamily(
                f"{PREFIX}_streams_refused",
                "Publish streams ended by the collector with an error status.",
                labels=["reason"],
            ),
            s.refused,
            REFUSE_REASONS,
        )
        yield _counter(
            "streams_broken",
            "Publish streams whose receive failed: the producer cancelled or went away, or "
            "sent a message over limits.maxMessageBytes (answered RESOURCE_EXHAUSTED).",
            s.broken,
        )
        yield GaugeMetricFamily(f"{PREFIX}_streams", "Publish streams open now.", value=s.streams)
        yield GaugeMetricFamily(
            f"{PREFIX}_producers", "Producers connected now (streams that named their node).",
            value=s.producers,
        )  # fmt: skip
        store = self._store()
        if store is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_store_events", "Violation records in the store.", value=store.events
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_store_losses", "Loss records in the store.", value=store.losses
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_store_bytes", "Size of the store's files.", value=store.size_bytes
            )
            yield _counter(
                "retention_deleted", "Rows deleted by retention.", store.retention_deleted
            )
        yield from _sink_families(self._sinks())
        yield GaugeMetricFamily(
            f"{PREFIX}_up", "1 while the collector serves.", value=1 if self._up() else 0
        )
        info = InfoMetricFamily(f"{PREFIX}", "The nodeguard collector's build.")
        info.add_metric([], {"version": __version__})
        yield info


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _by_label(
    family: CounterMetricFamily, values: dict[str, int], known: Iterable[str]
) -> CounterMetricFamily:
    for reason in sorted(set(known) | set(values)):
        family.add_metric([reason], values.get(reason, 0))
    return family


def _sink_families(sinks: Sequence[Any]) -> Iterator[Any]:
    labels = ["sink", "type"]
    delivered = CounterMetricFamily(
        f"{PREFIX}_sink_delivered", "Events a sink delivered.", labels=labels
    )
    failures = CounterMetricFamily(
        f"{PREFIX}_sink_failures", "Failed delivery attempts of a sink.", labels=labels
    )
    retries = CounterMetricFamily(f"{PREFIX}_sink_retries", "Retries of a sink.", labels=labels)
    skipped = CounterMetricFamily(
        f"{PREFIX}_sink_skipped",
        "Events a sink skipped (deleted by retention before it delivered them).",
        labels=labels,
    )
    lag = GaugeMetricFamily(
        f"{PREFIX}_sink_lag", "Stored events a sink has not delivered yet.", labels=labels
    )
    state = GaugeMetricFamily(
        f"{PREFIX}_sink_state", "1 for the sink's current state.", labels=[*labels, "state"]
    )
    for s in sinks:
        key = [str(s.name), str(s.type)]
        delivered.add_metric(key, s.delivered)
        failures.add_metric(key, s.failures)
        retries.add_metric(key, s.retries)
        skipped.add_metric(key, s.skipped)
        lag.add_metric(key, s.lag)
        state.add_metric([*key, str(s.state)], 1)
    yield from (delivered, failures, retries, skipped, lag, state)


class CollectorMetrics:
    """The collector's metrics in ``self.registry``, read from the given sources at every
    scrape. ``sinks`` returns each sink's stats (name, type, state, delivered, failures,
    retries, skipped, lag)."""

    def __init__(
        self,
        stats: Callable[[], CollectorStats],
        *,
        store: Callable[[], StoreFigures | None] = lambda: None,
        sinks: Callable[[], Sequence[Any]] = list,
        up: Callable[[], bool] = lambda: True,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_Snapshot(stats, store, sinks, up))

    def render(self) -> bytes:
        """The text exposition (what ``/metrics`` serves)."""
        return generate_latest(self.registry)
