"""The Splunk HEC sink against nodeguard.lab.hec_receiver, a local HTTPS stand-in for
Splunk's HTTP Event Collector (Splunk itself cannot run here): token, batching,
keep-alive, every envelope field, a HEC that is busy for a while and a wrong token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeguard.collector.sinks.config import SplunkHecSink
from nodeguard.collector.sinks.runner import SinkRunner, build_runners
from nodeguard.collector.store import EventStore
from nodeguard.events.ocsf import to_json_line
from nodeguard.lab.hec_receiver import HecReceiver
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

TOKEN = "0f6b-test-token"  # noqa: S105 - the test receiver's token


@pytest.fixture
def hec(tmp_path: Path) -> Iterator[HecReceiver]:
    receiver = HecReceiver(tmp_path / "hec", token=TOKEN)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with open_store(tmp_path / "events.db") as s:
        yield s


def hec_runner(store: EventStore, hec: HecReceiver, **fields: Any) -> SinkRunner:
    settings: dict[str, Any] = {"type": "splunk_hec", "name": "splunk", "url": hec.url}
    if hec.ca is not None:
        settings["tls"] = {"ca": str(hec.ca)}
    settings.update(fields)
    if "tokenFile" not in settings:
        settings.setdefault("token", TOKEN)
    (runner,) = build_runners([SplunkHecSink.model_validate(settings)], store, cluster=CLUSTER)
    return runner


def test_batches_token_keepalive_and_every_field(hec: HecReceiver, store: EventStore) -> None:
    samples = every_kind()
    insert(store, samples)
    insert(store, many(11))
    events = stored(store)
    runner = hec_runner(store, hec, batchSize=6, index="security")
    with running(runner):
        stats = wait_delivered(runner, store)
    requests = hec.requests()
    assert [len(r.events) for r in requests] == [6, 6, 6, 2]
    assert {r.status for r in requests} == {200}
    assert {r.authorization for r in requests} == {f"Splunk {TOKEN}"}
    assert {r.headers["Content-Type"] for r in requests} == {"application/json"}
    assert len({r.headers["X-Splunk-Request-Channel"] for r in requests}) == 1
    assert {r.connection for r in requests} == {1}  # one kept-alive connection
    received = hec.events()
    assert len(received) == len(events)
    for envelope, event in zip(received, events, strict=True):
        v = event.violation
        assert set(envelope) == {"time", "host", "source", "sourcetype", "index", "event"}
        assert envelope["time"] == pytest.approx(v.time_ms / 1000)
        assert envelope["host"] == NODE
        assert (envelope["source"], envelope["sourcetype"]) == ("nodeguard", "nodeguard:ocsf")
        assert envelope["index"] == "security"
        assert envelope["event"] == json.loads(to_json_line(v))
    assert (stats.delivered, stats.batches, stats.failures) == (len(events), 4, 0)


def test_busy_hec_for_a_while_loses_nothing(hec: HecReceiver, store: EventStore) -> None:
    runner = hec_runner(store, hec, batchSize=10, maxRetryInterval=1)
    insert(store, many(10))
    with running(runner):
        wait_delivered(runner, store)
        hec.fail(503)
        insert(store, many(25, start=300))
        wait_for(lambda: runner.stats().failures >= 2, "failures while the HEC is busy")
        busy = runner.stats()
        assert busy.state == "retrying" and busy.lag == 25
        assert busy.last_error is not None and "HTTP 503" in busy.last_error
        hec.fail(None)
        stats = wait_delivered(runner, store)
    uids = [e["event"]["metadata"]["uid"] for e in hec.events()]
    assert uids == [e.violation.uid for e in stored(store)]  # every event, once, in order
    assert {r.status for r in hec.requests()} == {200, 503}
    assert stats.delivered == 35 and stats.state == "ok"
    assert stats.failures >= 2 and stats.retries >= 2


def test_wrong_token_keeps_the_events_until_it_is_fixed(tmp_path: Path, store: EventStore) -> None:
    """Plain HTTP this time; the token comes from a file, re-read after a refusal."""
    with HecReceiver(tmp_path / "plain", token=TOKEN, tls=False) as hec:
        token_file = tmp_path / "hec.token"
        token_file.write_text("wrong-token\n")
        runner = hec_runner(store, hec, tokenFile=str(token_file), maxRetryInterval=0.5)
        insert(store, every_kind())
        with running(runner):
            wait_for(lambda: runner.stats().failures >= 2, "refusals of the wrong token")
            refused = runner.stats()
            assert refused.delivered == 0 and refused.lag == len(every_kind())
            assert refused.last_error is not None
            assert "HTTP 403" in refused.last_error and "Invalid token" in refused.last_error
            assert "tokenFile" in refused.last_error  # the fix
            token_file.write_text(TOKEN + "\n")
            stats = wait_delivered(runner, store)
        assert len(hec.events()) == len(every_kind())
        assert {r.authorization for r in hec.requests() if r.status == 200} == {f"Splunk {TOKEN}"}
    assert stats.delivered == len(every_kind())
