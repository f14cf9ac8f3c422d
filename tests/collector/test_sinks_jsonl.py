"""The jsonl sink end to end: a real store, the real runner, files on disk."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path
from typing import Any

from nodeguard.collector.sinks.config import JsonlSink
from nodeguard.collector.sinks.runner import SinkRunner, build_runners
from nodeguard.collector.store import EventStore
from tests.collector.test_sinks_samples import (
    CLUSTER,
    NODE,
    every_kind,
    insert,
    many,
    open_store,
    running,
    stored,
    wait_delivered,
    wait_for,
)

CLASS_BY_KIND = {"egress": 4001, "exec": 1007, "syscall": 2004, "socket": 2004, "limit": 2004}


def jsonl_runner(store: EventStore, path: Path, **fields: Any) -> SinkRunner:
    config = JsonlSink.model_validate(
        {"type": "jsonl", "name": fields.pop("name", "file"), "path": str(path), **fields}
    )
    (runner,) = build_runners([config], store, cluster=CLUSTER)
    return runner


def lines_of(*paths: Path) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            out.append(json.loads(line))
    return out


def test_every_event_becomes_one_ocsf_line(tmp_path: Path) -> None:
    samples = every_kind()
    with open_store(tmp_path / "events.db") as store:
        insert(store, samples)
        insert(store, many(120))
        runner = jsonl_runner(store, tmp_path / "out" / "events.jsonl", batchSize=50)
        with running(runner):
            stats = wait_delivered(runner, store)
        events = stored(store)
    path = tmp_path / "out" / "events.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    lines = lines_of(path)
    assert [line["metadata"]["uid"] for line in lines] == [e.violation.uid for e in events]
    for line, event in zip(lines, events, strict=True):
        v = event.violation
        assert line["class_uid"] == CLASS_BY_KIND[v.kind]
        assert line["time"] == v.time_ms
        assert line["count"] == v.count
        assert line["device"]["hostname"] == NODE
        assert line["policy"]["name"] == v.policy.name
        assert line["unmapped"]["kind"] == v.kind
    exec_line = lines[3]
    assert exec_line["process"]["file"]["path"] == samples[3].exec.path  # type: ignore[union-attr]
    assert exec_line["actor"]["process"]["cmd_line"] == samples[3].process.cmd_line
    assert stats.delivered == len(events)
    assert stats.batches == math.ceil(len(events) / 50)
    assert (stats.failures, stats.retries, stats.skipped, stats.lag) == (0, 0, 0, 0)
    assert stats.type == "jsonl" and runner.stats().state == "stopped"
    assert stats.last_error is None and stats.last_delivery_ms is not None


def test_rotation_by_size_keeps_the_newest_files(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with open_store(tmp_path / "events.db") as store:
        insert(store, many(60))
        runner = jsonl_runner(store, path, maxBytes=8192, keep=3, batchSize=7)
        with running(runner):
            wait_delivered(runner, store)
        uids = [e.violation.uid for e in stored(store)]
    files = [path.with_name(f"events.jsonl.{i}") for i in (3, 2, 1)] + [path]
    assert all(f.is_file() for f in files)
    assert not path.with_name("events.jsonl.4").exists()
    for f in files:
        assert f.stat().st_size <= 8192
    kept = [line["metadata"]["uid"] for line in lines_of(*files)]
    # oldest to newest across the rotated files: the newest events, contiguous, in order
    assert kept == uids[len(uids) - len(kept) :]
    assert len(kept) < len(uids)  # the oldest file was dropped


def test_cursor_survives_a_restart_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with open_store(tmp_path / "events.db") as store:
        insert(store, many(30))
        first = jsonl_runner(store, path)
        with running(first):
            wait_delivered(first, store)
        insert(store, many(20, start=500))
        second = jsonl_runner(store, path)
        with running(second):
            stats = wait_delivered(second, store)
        uids = [e.violation.uid for e in stored(store)]
    assert stats.delivered == 20
    assert [line["metadata"]["uid"] for line in lines_of(path)] == uids


def test_unwritable_path_is_retried_until_it_works(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file where the directory should be")
    with open_store(tmp_path / "events.db") as store:
        insert(store, many(10))
        runner = jsonl_runner(store, blocker / "events.jsonl", maxRetryInterval=0.5)
        with running(runner):
            wait_for(lambda: runner.stats().failures >= 2, "two failed attempts")
            stats = runner.stats()
            assert stats.state == "retrying"
            assert stats.lag == 10 and stats.delivered == 0
            assert stats.last_error is not None and str(blocker) in stats.last_error
            blocker.unlink()
            stats = wait_delivered(runner, store)
    assert stats.delivered == 10 and stats.retries >= 2
    assert len(lines_of(blocker / "events.jsonl")) == 10
