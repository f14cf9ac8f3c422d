"""The delivery loop itself: backoff, retention that outran a sink, independence of
sinks, lifecycle. Real store, real jsonl sinks (their failures are real: a file standing
where the sink's directory should be)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nodeguard.collector.records import Retention
from nodeguard.collector.sinks.config import JsonlSink
from nodeguard.collector.sinks.runner import Backoff, SinkRunner, build_runners
from nodeguard.collector.sinks.sink import SinkError
from nodeguard.collector.store import EventStore
from tests.collector.test_sinks_samples import (
    CLUSTER,
    insert,
    many,
    open_store,
    running,
    stored,
    wait_delivered,
    wait_for,
)


def jsonl(name: str, path: Path, **fields: object) -> JsonlSink:
    return JsonlSink.model_validate({"type": "jsonl", "name": name, "path": str(path), **fields})


def runner_for(store: EventStore, config: JsonlSink) -> SinkRunner:
    (runner,) = build_runners([config], store, cluster=CLUSTER)
    return runner


def test_backoff_is_exponential_with_full_jitter() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(7))  # noqa: S311
    ceilings = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    delays = [backoff.next_delay() for _ in ceilings]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert 0.0 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not fixed
    backoff.reset()
    assert backoff.next_delay() <= 0.5
    # over many draws the whole range is used (full jitter, not "half jitter")
    draws = [Backoff(0.5, 30.0, random.Random(i)).next_delay() for i in range(200)]  # noqa: S311
    assert min(draws) < 0.05 and max(draws) > 0.45


def test_events_deleted_by_retention_first_are_counted_as_skipped(tmp_path: Path) -> None:
    with open_store(tmp_path / "events.db", Retention(max_age_s=None, max_events=10)) as store:
        insert(store, many(30))
        assert store.apply_retention() == 20
        runner = runner_for(store, jsonl("late", tmp_path / "late.jsonl"))
        with running(runner):
            stats = wait_delivered(runner, store)
        kept = [e.violation.uid for e in stored(store)]
    assert (stats.skipped, stats.delivered, stats.lag) == (20, 10, 0)
    lines = (tmp_path / "late.jsonl").read_text().splitlines()
    assert [json.loads(line)["metadata"]["uid"] for line in lines] == kept


def test_a_failing_sink_does_not_delay_another(tmp_path: Path) -> None:
    blocker = tmp_path / "down"
    blocker.write_text("not a directory")
    with open_store(tmp_path / "events.db") as store:
        insert(store, many(40))
        down, up = build_runners(
            [
                jsonl("down", blocker / "events.jsonl", batchSize=10, maxRetryInterval=0.5),
                jsonl("up", tmp_path / "up.jsonl", batchSize=10),
            ],
            store,
            cluster=CLUSTER,
        )
        with running(down, up):
            wait_delivered(up, store)
            insert(store, many(15, start=900))  # keeps flowing while the other is down
            up_stats = wait_delivered(up, store)
            down_stats = down.stats()
            assert down_stats.delivered == 0 and down_stats.lag == 55
            assert down_stats.failures >= 1 and down_stats.state == "retrying"
            blocker.unlink()
            down_stats = wait_delivered(down, store)
    assert up_stats.failures == 0 and up_stats.delivered == 55
    assert down_stats.delivered == 55 and down_stats.state == "ok"
    assert len((blocker / "events.jsonl").read_text().splitlines()) == 55


def test_lifecycle(tmp_path: Path) -> None:
    with open_store(tmp_path / "events.db") as store:
        runner = runner_for(store, jsonl("file", tmp_path / "x.jsonl"))
        assert runner.name == "file" and runner.cursor_name == "sink:file"
        assert runner.stats().state == "stopped"
        runner.start()
        try:
            with pytest.raises(RuntimeError, match="already started"):
                runner.start()
            assert runner.stats().state == "ok"
            insert(store, many(3))
            wait_for(lambda: runner.stats().delivered == 3, "delivery of 3 events")
        finally:
            runner.stop()
        assert runner.stats().state == "stopped"
        assert store.cursor("sink:file") == store.last_rowid()
        runner.stop()  # a second stop is harmless


def test_build_runners_rejects_duplicate_names(tmp_path: Path) -> None:
    with open_store(tmp_path / "events.db") as store, pytest.raises(SinkError, match="named 'a'"):
        build_runners(
            [jsonl("a", tmp_path / "1.jsonl"), jsonl("a", tmp_path / "2.jsonl")],
            store,
            cluster=CLUSTER,
        )
