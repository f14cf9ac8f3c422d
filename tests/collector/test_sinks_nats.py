"""The NATS sink against a real nats-server with JetStream (nodeguard.lab.nats_server):
subjects, Nats-Msg-Id deduplication, payloads read back with a pull consumer, TLS with a
client certificate, and a server that is down while events arrive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from nodeguard.collector.sinks.config import NatsSink, TlsClientConfig
from nodeguard.collector.sinks.runner import SinkRunner, build_runners
from nodeguard.collector.sinks.tls import client_context
from nodeguard.collector.store import EventStore
from nodeguard.events.ocsf import to_json_line
from nodeguard.lab import nats_server as nats_lab
from nodeguard.lab.nats_server import NatsServer
from tests.collector.test_sinks_samples import (
    CLUSTER,
    every_kind,
    insert,
    many,
    open_store,
    running,
    stored,
    wait_delivered,
    wait_for,
)

pytestmark = pytest.mark.skipif(not nats_lab.available(), reason="nats-server is not installed")

STREAM = "NODEGUARD"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    s = NatsServer(tmp_path / "nats")
    s.start()
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with open_store(tmp_path / "events.db") as s:
        yield s


def nats_runner(store: EventStore, server: NatsServer, **fields: Any) -> SinkRunner:
    settings: dict[str, Any] = {"type": "nats", "name": "bus", "servers": [server.url]}
    settings.update(fields)
    (runner,) = build_runners([NatsSink.model_validate(settings)], store, cluster=CLUSTER)
    return runner


def read_stream(server: NatsServer, **connect: Any) -> tuple[int, list[Any]]:
    """(messages in the stream, every message) via a pull consumer."""

    async def read() -> tuple[int, list[Any]]:
        nc = await nats.connect(server.url, **connect)
        try:
            js = nc.jetstream()
            info = await js.stream_info(STREAM)
            total = info.state.messages
            sub = await js.pull_subscribe("nodeguard.>", durable=None, stream=STREAM)
            out: list[Any] = []
            while len(out) < total:
                out += await sub.fetch(total - len(out), timeout=10)
            for msg in out:
                await msg.ack()
            return total, out
        finally:
            await nc.close()

    return asyncio.run(read())


def test_subjects_msg_ids_and_payloads(server: NatsServer, store: EventStore) -> None:
    samples = every_kind()
    insert(store, samples)
    runner = nats_runner(store, server, batchSize=4)
    with running(runner):
        stats = wait_delivered(runner, store)
    total, messages = read_stream(server)
    assert total == len(samples)
    for msg, v in zip(messages, samples, strict=True):
        namespace = v.workload.namespace if v.workload and v.workload.namespace else "_"
        assert msg.subject == f"nodeguard.{CLUSTER}.{namespace}.{v.kind}"
        assert msg.headers["Nats-Msg-Id"] == v.uid
        assert json.loads(msg.data) == json.loads(to_json_line(v))
    assert (stats.delivered, stats.batches, stats.failures) == (len(samples), 3, 0)


def test_a_republish_is_deduplicated_by_msg_id(server: NatsServer, store: EventStore) -> None:
    insert(store, many(12))
    first = nats_runner(store, server)
    with running(first):
        wait_delivered(first, store)
    store.set_cursor("sink:bus", 0)  # as if the cursor had not persisted: send all again
    again = nats_runner(store, server)
    with running(again):
        stats = wait_delivered(again, store)
    total, messages = read_stream(server)
    assert stats.delivered == 12  # published and acknowledged again...
    assert total == 12  # ...but the stream kept one copy of each
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [e.violation.uid for e in stored(store)]


def test_server_down_while_events_arrive_loses_nothing(
    server: NatsServer, store: EventStore
) -> None:
    runner = nats_runner(store, server, batchSize=10, maxRetryInterval=1)
    insert(store, many(15))
    with running(runner):
        wait_delivered(runner, store)
        server.stop()
        insert(store, many(25, start=400))
        wait_for(lambda: runner.stats().failures >= 2, "failures while nats-server is down")
        down = runner.stats()
        assert down.state == "retrying" and down.lag == 25
        assert down.last_error is not None and "NATS" in down.last_error
        server.start()  # same port, same JetStream directory
        stats = wait_delivered(runner, store)
    total, messages = read_stream(server)
    assert total == 40
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [e.violation.uid for e in stored(store)]
    assert stats.delivered == 40 and stats.failures >= 2 and stats.state == "ok"


def test_tls_with_a_client_certificate_and_a_custom_prefix(
    tmp_path: Path, store: EventStore
) -> None:
    with NatsServer(tmp_path / "nats-tls", tls=True) as server:
        assert server.ca is not None and server.client is not None
        tls = {"ca": str(server.ca), "cert": str(server.client.cert), "key": str(server.client.key)}
        insert(store, every_kind()[:3])
        runner = nats_runner(store, server, tls=tls, subjectPrefix="acme.sec", stream="NG_TLS")
        with running(runner):
            stats = wait_delivered(runner, store)

        async def subjects() -> list[str]:
            context = client_context(TlsClientConfig.model_validate(tls), sink="test")
            nc = await nats.connect(server.url, tls=context, tls_hostname="127.0.0.1")
            try:
                js = nc.jetstream()
                info = await js.stream_info("NG_TLS")
                assert info.config.subjects == ["acme.sec.>"]
                sub = await js.pull_subscribe("acme.sec.>", stream="NG_TLS")
                return [m.subject for m in await sub.fetch(3, timeout=10)]
            finally:
                await nc.close()

        got = asyncio.run(subjects())
    assert stats.delivered == 3 and stats.failures == 0
    assert got == [
        f"acme.sec.{CLUSTER}.agents.egress",
        f"acme.sec.{CLUSTER}.agents.egress",
        f"acme.sec.{CLUSTER}._.egress",
    ]
