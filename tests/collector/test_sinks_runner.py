"""The delivery loop itself: backoff, retention that outran a sink, stored rows that do
not decode, independence of sinks, lifecycle. Real store, real jsonl sinks (their failures
are real: a file standing where the sink's directory should be)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from nodeguard.collector.records import Retention
from nodeguard.collector.sinks.config import JsonlSink
from nodeguard.collector.sinks.runner import SinkRunner, build_runners
from nodeguard.collector.sinks.sink import SinkError
from nodeguard.collector.store import EventStore
from nodeguard.delivery.backoff import Backoff
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


def test_retries_use_the_producers_backoff(tmp_path: Path) -> None:
    """The runner retries with nodeguard.delivery.backoff (exponential, full jitter; its
    own tests are tests/unit/test_backoff.py): 0.5 s doubling up to maxRetryInterval."""
    with open_store(tmp_path / "events.db") as store:
        runner = runner_for(store, jsonl("x", tmp_path / "x.jsonl", maxRetryInterval=2.5))
    backoff = runner.backoff
    assert isinstance(backoff, Backoff)
    assert (backoff.initial, backoff.factor, backoff.maximum) == (0.5, 2.0, 2.5)
    assert [backoff.ceiling(n) for n in range(5)] == [0.5, 1.0, 2.0, 2.5, 2.5]


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
            assert down.backoff.attempt == 0  # reset by the delivery
    assert up_stats.failures == 0 and up_stats.delivered == 55
    assert down_stats.delivered == 55 and down_stats.state == "ok"
    assert len((blocker / "events.jsonl").read_text().splitlines()) == 55


def test_rows_that_do_not_decode_are_skipped_and_the_cursor_moves_past_them(
    tmp_path: Path,
) -> None:
    """Two stored bodies corrupted behind the store's back, one in the middle and the
    newest: the sink delivers the others, counts the two as skipped, its cursor reaches
    the newest row (no stall, no lag) and it goes on with events stored later."""
    with open_store(tmp_path / "events.db") as store:
        insert(store, many(6))
        rowids = [e.rowid for e in stored(store)]
        with sqlite3.connect(store.path) as conn:
            for rowid in (rowids[2], rowids[5]):
                conn.execute("UPDATE events SET body = ? WHERE rowid = ?", (b"\xff\x00", rowid))
        conn.close()
        good = [e.violation.uid for e in stored(store)]
        runner = runner_for(store, jsonl("file", tmp_path / "out.jsonl", batchSize=2))
        with running(runner):
            stats = wait_delivered(runner, store)
            assert store.cursor(runner.cursor_name) == rowids[5]
            assert (stats.delivered, stats.skipped, stats.lag) == (4, 2, 0)
            later = many(3, start=500)
            insert(store, later)
            stats = wait_delivered(runner, store)
        assert store.stats().undecodable == 2
    assert (stats.delivered, stats.skipped, stats.failures) == (7, 2, 0)
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["metadata"]["uid"] for line in lines] == good + [v.uid for v in later]


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
