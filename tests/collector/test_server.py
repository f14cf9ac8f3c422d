"""The collector server with real components: a real gRPC server over real mutual TLS
(certificates from nodeguard.pki), real gRPC clients, a real SQLite store (checked from a
second, read-only EventStore on the same file), a real JSON-lines sink, and the
collector as a real subprocess (CollectorProcess). Everything listens on 127.0.0.1:0.
Stops under load run in a child Python process, so a crash there is a failed test."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodeguard import pki
from nodeguard.collector.config import CollectorConfig, parse_collector_config_text
from nodeguard.collector.identity import (
    IdentityError,
    identity_from_auth_context,
    identity_from_certificate,
)
from nodeguard.collector.records import EventQuery
from nodeguard.collector.server import CollectorError, CollectorServer
from nodeguard.collector.store import EventStore
from nodeguard.events.model import EgressDetail, PolicyRef, ProcessInfo, Violation
from nodeguard.events.wire import to_proto
from nodeguard.lab.collector_process import CollectorProcess
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb
from nodeguard.proto.nodeguard.v1 import events_pb2_grpc as pb_grpc

NODE = "node-a"
OTHER = "node-b"
SERVICE = "nodeguard.v1.Collector"
PUBLISH = f"/{SERVICE}/Publish"
TIMEOUT = 30.0
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ certificates --


@dataclass(frozen=True)
class Certs:
    ca: pki.CA
    server: pki.CertFiles
    nodes: dict[str, pki.CertFiles]
    cn_only: pki.CertFiles  # a client cert naming node-c in its CN only (no URI SAN)
    stranger: pki.CertFiles  # node-a's name, signed by another CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("pki")
    ca = pki.make_ca(d)
    other = pki.make_ca(d / "other", "some other CA")
    return Certs(
        ca=ca,
        server=pki.issue_server(ca, d, ["127.0.0.1", "localhost"]),
        nodes={n: pki.issue_node(ca, d, n) for n in (NODE, OTHER)},
        cn_only=pki.issue_client(ca, d, "node-c", stem="cn-only"),
        stranger=pki.issue_node(other, d / "other", NODE),
    )


def client_credentials(certs: Certs, files: pki.CertFiles | None) -> grpc.ChannelCredentials:
    root = certs.ca.cert_path.read_bytes()
    if files is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )


# ----------------------------------------------------------------------- records --


def violation(seq: int, node: str = NODE, *, time_ms: int | None = None) -> Violation:
    now = int(time.time() * 1000) if time_ms is None else time_ms
    return Violation(
        uid=f"0190a1b2-c3d4-7e5f-8a9b-{seq:012x}",
        sequence=seq,
        kind="egress",
        time_ms=now,
        first_time_ms=now,
        count=1,
        verdict="blocked",
        cgroup_id=4242,
        process=ProcessInfo(pid=100 + seq, tid=100 + seq, name="agent"),
        policy=PolicyRef(name="research-agent", uid="u-1", version="1", mode="enforce"),
        egress=EgressDetail(ip="203.0.113.7", port=443, protocol="tcp", family=4, hook="connect4"),
        node=node,
    )


def record(seq: int, node: str = NODE, *, time_ms: int | None = None) -> pb.Record:
    return pb.Record(
        seq=seq,
        priority=pb.PRIORITY_VIOLATION,
        violation=to_proto(violation(seq, node, time_ms=time_ms)),
    )


def batch(
    seqs: range | list[int], *, node: str = NODE, epoch: int = 7, time_ms: int | None = None
) -> pb.PublishRequest:
    return pb.PublishRequest(
        node=node,
        epoch=epoch,
        records=[record(s, node, time_ms=time_ms) for s in seqs],
        producer="agent",
        version="test",
    )


class Producer:
    """One Publish stream: ``send`` one batch and wait for its ack."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._requests: queue.Queue[pb.PublishRequest | None] = queue.Queue()
        stub = pb_grpc.CollectorStub(channel)  # type: ignore[no-untyped-call]
        self._call = stub.Publish(self._feed(), timeout=TIMEOUT)

    def _feed(self) -> Iterator[pb.PublishRequest]:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def send(self, request: pb.PublishRequest) -> pb.PublishAck:
        self._requests.put(request)
        ack: pb.PublishAck = next(self._call)
        return ack

    def close(self) -> None:
        self._requests.put(None)
        for _ in self._call:  # drain: the server ends the stream after our half-close
            pass

    def cancel(self) -> None:
        self._call.cancel()


def wait_for(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")


def stored_seqs(path: Path, node: str = NODE) -> list[int]:
    """The seqs in the store, read through a second (read-only) EventStore."""
    with EventStore(path, read_only=True) as reader:
        return [e.seq for e in reader.query(EventQuery(node=node, limit=None))]


# ------------------------------------------------------------------------ server --


@dataclass
class Running:
    server: CollectorServer
    config: CollectorConfig
    certs: Certs
    channels: list[grpc.Channel]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def db(self) -> Path:
        return self.config.store.path

    def channel(self, files: pki.CertFiles | str | None = NODE) -> grpc.Channel:
        if self.config.insecure:
            channel = grpc.insecure_channel(self.target)
        else:
            cert = self.certs.nodes[files] if isinstance(files, str) else files
            channel = grpc.secure_channel(self.target, client_credentials(self.certs, cert))
        self.channels.append(channel)
        return channel

    def producer(self, files: pki.CertFiles | str | None = NODE) -> Producer:
        return Producer(self.channel(files))


def config_text(tmp_path: Path, certs: Certs, **extra: Any) -> str:
    data: dict[str, Any] = {
        "apiVersion": "nodeguard.io/v1alpha1",
        "kind": "CollectorConfig",
        "listen": "127.0.0.1:0",
        "tls": {
            "cert": str(certs.server.cert),
            "key": str(certs.server.key),
            "clientCA": str(certs.ca.cert_path),
        },
        "store": {"path": str(tmp_path / "store" / "events.db"), "durable": False},
        "metricsAddress": None,
    }
    for key, value in extra.items():
        if value is None and key in data:
            del data[key]
        elif key == "store":
            data["store"].update(value)
        else:
            data[key] = value
    return yaml.safe_dump(data)


@pytest.fixture
def start(tmp_path: Path, certs: Certs) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def _start(retention_interval_s: float = 60.0, **extra: Any) -> Running:
        config = parse_collector_config_text(config_text(tmp_path, certs, **extra), "c.yaml")
        server = CollectorServer(config, retention_interval_s=retention_interval_s)
        server.start()
        running = Running(server, config, certs, [])
        started.append(running)
        return running

    yield _start
    for running in started:
        for channel in running.channels:
            channel.close()
        running.server.stop(grace_s=0)


@pytest.fixture
def collector(start: Callable[..., Running]) -> Running:
    return start()


# ------------------------------------------------------------------------- tests --


def test_acks_come_after_the_rows_are_in_the_store(collector: Running) -> None:
    producer = collector.producer()
    expected: list[int] = []
    for first in (1, 4, 7):
        seqs = list(range(first, first + 3))
        ack = producer.send(batch(seqs))
        expected += seqs
        assert (ack.epoch, ack.first_seq, ack.last_seq) == (7, first, first + 2)
        assert (ack.stored, ack.duplicates, ack.rejected, ack.reject_reason) == (3, 0, 0, "")
        # visible to another reader of the file the moment the ack arrives
        assert stored_seqs(collector.db) == expected
    producer.close()
    stats = collector.server.stats()
    assert (stats.batches, stats.stored, stats.duplicates, stats.rejected_total) == (3, 9, 0, 0)
    wait_for(lambda: collector.server.stats().streams == 0, "stream closed")


def test_a_resent_batch_is_counted_as_duplicates_and_stored_once(collector: Running) -> None:
    producer = collector.producer()
    assert producer.send(batch(range(1, 6))).stored == 5
    again = producer.send(batch(range(1, 6)))
    assert (again.stored, again.duplicates) == (0, 5)
    # a reconnecting producer resends an overlapping batch on a new stream
    producer.cancel()
    overlap = collector.producer().send(batch(range(4, 9)))
    assert (overlap.stored, overlap.duplicates) == (3, 2)
    assert stored_seqs(collector.db) == list(range(1, 9))
    stats = collector.server.stats()
    assert (stats.stored, stats.duplicates) == (8, 7)


def test_invalid_batches_and_records_are_rejected_in_the_ack(collector: Running) -> None:
    producer = collector.producer()
    ack = producer.send(batch([3, 2]))
    assert (ack.stored, ack.rejected) == (0, 2)
    assert "not strictly ascending" in ack.reject_reason
    ack = producer.send(batch([1], epoch=0))
    assert (ack.stored, ack.rejected) == (0, 1)
    assert "epoch" in ack.reject_reason
    # a record whose violation names another node: the store refuses that one record
    request = batch([10, 11])
    request.records[1].violation.node = OTHER
    ack = producer.send(request)
    assert (ack.stored, ack.rejected) == (1, 1)
    assert OTHER in ack.reject_reason
    # the stream goes on
    assert producer.send(batch([12])).stored == 1
    assert stored_seqs(collector.db) == [10, 12]
    rejected = collector.server.stats().rejected
    assert rejected == {"batch_order": 2, "batch_epoch": 1, "invalid_record": 1}


def test_a_batch_over_max_records_is_refused_without_an_ack(
    start: Callable[..., Running],
) -> None:
    """A producer configured for bigger batches than the collector takes must keep its
    records (no ack that would let it delete them) and learn why."""
    running = start(limits={"maxRecordsPerBatch": 3})
    with pytest.raises(grpc.RpcError) as info:
        running.producer().send(batch(range(1, 5)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "spool.batchRecords to at most 3" in (info.value.details() or "")
    assert stored_seqs(running.db) == []
    assert running.producer().send(batch(range(1, 4))).stored == 3
    assert running.server.stats().refused == {"batch_too_large": 1}


def test_an_empty_batch_is_acknowledged(collector: Running) -> None:
    ack = collector.producer().send(pb.PublishRequest(node=NODE, epoch=3))
    assert (ack.epoch, ack.first_seq, ack.last_seq, ack.stored) == (3, 0, 0, 0)


def test_node_certificate_claiming_another_node_is_refused(collector: Running) -> None:
    producer = collector.producer(OTHER)  # node-b's certificate
    with pytest.raises(grpc.RpcError) as info:
        producer.send(batch([1]))  # ... publishing for node-a
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = info.value.details() or ""
    assert f"'{NODE}'" in details and f"'{OTHER}'" in details
    assert collector.server.stats().refused == {"wrong_node": 1}
    assert stored_seqs(collector.db) == []
    # node-b may publish its own events
    assert collector.producer(OTHER).send(batch([1], node=OTHER)).stored == 1


def test_the_node_may_come_from_the_certificate_cn(collector: Running) -> None:
    producer = collector.producer(collector.certs.cn_only)
    assert producer.send(batch([1], node="node-c")).stored == 1
    with pytest.raises(grpc.RpcError) as info:
        collector.producer(collector.certs.cn_only).send(batch([2], node=NODE))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("who", ["no certificate", "certificate of another CA"])
def test_clients_without_a_trusted_certificate_are_refused_in_the_handshake(
    collector: Running, who: str
) -> None:
    files = None if who == "no certificate" else collector.certs.stranger
    with pytest.raises(grpc.RpcError) as info:
        collector.producer(files).send(batch([1]))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stored_seqs(collector.db) == []
    # the collector is unaffected
    assert collector.producer().send(batch([1])).stored == 1


def test_malformed_bytes_are_refused_and_other_streams_keep_working(collector: Running) -> None:
    good = collector.producer()
    assert good.send(batch([1])).stored == 1
    raw = collector.channel().stream_stream(PUBLISH)  # no serializers: bytes as they are
    with pytest.raises(grpc.RpcError) as info:
        list(raw(iter([b"\xff\xff\xff\xff"]), timeout=TIMEOUT))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("malformed PublishRequest")
    assert good.send(batch([2])).stored == 1  # the stream opened before goes on
    assert collector.producer().send(batch([3])).stored == 1  # and new ones are served
    assert collector.server.stats().refused == {"malformed": 1}
    good.close()


def test_an_oversized_message_gets_resource_exhausted(start: Callable[..., Running]) -> None:
    running = start(limits={"maxMessageBytes": 16384})
    big = batch([1])
    big.producer = "x" * 20000
    with pytest.raises(grpc.RpcError) as info:
        running.producer().send(big)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert running.producer().send(batch([1])).stored == 1


def test_streams_over_max_streams_are_refused(start: Callable[..., Running]) -> None:
    running = start(limits={"maxStreams": 1})
    first = running.producer()
    assert first.send(batch([1])).stored == 1
    with pytest.raises(grpc.RpcError) as info:
        running.producer().send(batch([2]))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "maxStreams" in (info.value.details() or "")
    first.close()
    wait_for(lambda: running.server.stats().streams == 0, "first stream closed")
    assert running.producer().send(batch([2])).stored == 1
    assert running.server.stats().refused == {"too_many_streams": 1}


def test_connected_producers_are_counted(collector: Running) -> None:
    a, b = collector.producer(NODE), collector.producer(OTHER)
    a.send(batch([1]))
    b.send(batch([1], node=OTHER))
    stats = collector.server.stats()
    assert (stats.streams, stats.producers) == (2, 2)
    a.close()
    b.cancel()
    wait_for(lambda: collector.server.stats().producers == 0, "producers gone")


def test_health_serving_and_not_serving_on_stop(collector: Running) -> None:
    stub = health_pb2_grpc.HealthStub(collector.channel())
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", SERVICE):
        request = health_pb2.HealthCheckRequest(service=service)
        assert stub.Check(request, timeout=TIMEOUT).status == serving
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT)
    assert next(watch).status == serving
    stopper = threading.Thread(target=collector.server.stop, kwargs={"grace_s": 5.0})
    stopper.start()
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        watch.cancel()  # the last open call: the stop need not wait out its grace
        stopper.join(TIMEOUT)


def test_insecure_mode_takes_the_node_from_the_request(start: Callable[..., Running]) -> None:
    running = start(tls=None, insecure=True)
    producer = running.producer()
    assert producer.send(batch([1])).stored == 1
    assert producer.send(batch([2])).stored == 1
    with pytest.raises(grpc.RpcError) as info:
        producer.send(batch([3], node=OTHER))  # one stream, one node
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        running.producer().send(pb.PublishRequest(epoch=1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert running.server.stats().refused == {"node_changed": 1, "no_node": 1}


def test_metrics_endpoint(start: Callable[..., Running]) -> None:
    running = start(metricsAddress="127.0.0.1:0")
    producer = running.producer()
    producer.send(batch(range(1, 4)))
    producer.send(batch(range(1, 4)))
    port = running.server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as answer:
        text = answer.read().decode()
    lines = set(text.splitlines())
    assert "nodeguard_collector_batches_total 2.0" in lines
    assert "nodeguard_collector_records_stored_total 3.0" in lines
    assert "nodeguard_collector_records_duplicate_total 3.0" in lines
    assert 'nodeguard_collector_streams_refused_total{reason="wrong_node"} 0.0' in lines
    assert "nodeguard_collector_producers 1.0" in lines
    assert "nodeguard_collector_store_events 3.0" in lines
    assert "nodeguard_collector_up 1.0" in lines
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=TIMEOUT) as answer:
        assert answer.status == 200


def test_sinks_receive_what_is_stored(start: Callable[..., Running], tmp_path: Path) -> None:
    out = tmp_path / "siem" / "events.jsonl"
    out.parent.mkdir()
    running = start(
        sinks=[{"type": "jsonl", "name": "file", "path": str(out)}],
        metricsAddress="127.0.0.1:0",
    )
    running.producer().send(batch(range(1, 4)))

    def lines() -> list[dict[str, Any]]:
        text = out.read_text() if out.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    wait_for(lambda: len(lines()) == 3, "3 events in the sink's file")
    assert [e["metadata"]["sequence"] for e in lines()] == [1, 2, 3]
    wait_for(lambda: running.server.sinks[0].stats().delivered == 3, "sink stats")
    port = running.server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as answer:
        text = answer.read().decode()
    assert 'nodeguard_collector_sink_delivered_total{sink="file",type="jsonl"} 3.0' in text
    assert 'nodeguard_collector_sink_lag{sink="file",type="jsonl"} 0.0' in text


def test_retention_runs_in_the_background(start: Callable[..., Running]) -> None:
    running = start(retention_interval_s=0.05, store={"retention": {"maxAge": "1h"}})
    two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
    producer = running.producer()
    assert producer.send(batch([1, 2], time_ms=two_hours_ago)).stored == 2
    assert producer.send(batch([3])).stored == 1
    wait_for(lambda: stored_seqs(running.db) == [3], "old events deleted")


def test_stop_ends_idle_streams_without_waiting_out_the_grace(collector: Running) -> None:
    """An open stream with no batch under way is cancelled at once: a stop with a grace
    of 10 minutes returns (within the generous TIMEOUT) and the acked batch is stored."""
    producer = collector.producer()
    assert producer.send(batch([1, 2])).stored == 2
    stopper = threading.Thread(target=collector.server.stop, kwargs={"grace_s": 600.0})
    stopper.start()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    with pytest.raises(grpc.RpcError) as info:
        producer.send(batch([3]))
    assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert stored_seqs(collector.db) == [1, 2]
    assert collector.server.stats().broken == 0  # ended by the stop, not counted broken


STOP_ROUNDS = 10
STOP_PRODUCERS = 4  # streams, two per node
STOP_BATCH = 20  # records per batch


@dataclass
class _Round:
    """What the producer threads of one stop round share."""

    acked: list[list[Any]]  # [node, epoch, first seq, last seq] per acked batch
    errors: list[BaseException]
    lock: threading.Lock


def _stream_until_stopped(channel: grpc.Channel, node: str, epoch: int, shared: _Round) -> None:
    """Send batches on one stream until the collector ends it; note every acked one."""
    producer = Producer(channel)
    seq = 1
    try:
        while True:
            seqs = list(range(seq, seq + STOP_BATCH))
            ack = producer.send(batch(seqs, node=node, epoch=epoch))
            assert (ack.stored, ack.duplicates, ack.rejected) == (STOP_BATCH, 0, 0), ack
            with shared.lock:
                shared.acked.append([node, epoch, seqs[0], seqs[-1]])
            seq += STOP_BATCH
    except grpc.RpcError as err:
        # the collector stopped: the stream was cancelled or refused (UNAVAILABLE)
        if err.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
            shared.errors.append(err)
    except BaseException as err:
        shared.errors.append(err)


def stop_under_load(spec_file: str) -> None:
    """Child-process half of test_stop_under_load_loses_no_acked_record: STOP_ROUNDS
    times, start a collector, let STOP_PRODUCERS streams send batches, stop it mid-stream
    (grace 0 and 1 s alternately); write every acked batch to spec["acked"]."""
    spec = json.loads(Path(spec_file).read_text())
    config = parse_collector_config_text(Path(spec["config"]).read_text(), spec["config"])
    root = Path(spec["ca"]).read_bytes()
    nodes = {
        node: grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=Path(key).read_bytes(),
            certificate_chain=Path(cert).read_bytes(),
        )
        for node, (cert, key) in spec["nodes"].items()
    }
    with Path(spec["acked"]).open("w") as out:
        for round_ in range(STOP_ROUNDS):
            out.write(json.dumps(_stop_round(config, nodes, round_)) + "\n")
            out.flush()


def _stop_round(
    config: CollectorConfig, nodes: dict[str, grpc.ChannelCredentials], round_: int
) -> list[list[Any]]:
    server = CollectorServer(config)
    server.start()
    shared = _Round([], [], threading.Lock())
    channels: list[grpc.Channel] = []
    threads = []
    names = sorted(nodes)
    for i in range(STOP_PRODUCERS):
        node = names[i % len(names)]
        channel = grpc.secure_channel(f"127.0.0.1:{server.port}", nodes[node])
        channels.append(channel)
        epoch = round_ * 100 + i + 1  # one epoch per stream: no shared keys
        threads.append(
            threading.Thread(target=_stream_until_stopped, args=(channel, node, epoch, shared))
        )
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(shared.acked) >= 2 * STOP_PRODUCERS, "batches acked")
        server.stop(grace_s=0 if round_ % 2 == 0 else 1.0)
        for thread in threads:
            thread.join(TIMEOUT)
        assert not any(t.is_alive() for t in threads), "a producer was not ended"
        assert shared.errors == []
    finally:
        server.stop(grace_s=0)
        for channel in channels:
            channel.close()
    return shared.acked


def test_stop_under_load_loses_no_acked_record(tmp_path: Path, certs: Certs) -> None:
    """Stop the collector while four producers stream batches (threads), ten times, in a
    child process: it must not crash (the store was once closed under a running insert:
    a segfault in sqlite), and every record it acknowledged is in the store."""
    config = tmp_path / "collector.yaml"
    config.write_text(config_text(tmp_path, certs))
    acked_file = tmp_path / "acked.jsonl"
    spec = {
        "config": str(config),
        "ca": str(certs.ca.cert_path),
        "nodes": {n: [str(certs.nodes[n].cert), str(certs.nodes[n].key)] for n in (NODE, OTHER)},
        "acked": str(acked_file),
    }
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    code = (
        "import sys\n"
        "from tests.collector.test_server import stop_under_load\n"
        "stop_under_load(sys.argv[1])\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code, str(spec_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, f"child exited {child.returncode}:\n{child.stderr[-4000:]}"
    rounds = [json.loads(line) for line in acked_file.read_text().splitlines()]
    assert len(rounds) == STOP_ROUNDS
    with EventStore(tmp_path / "store" / "events.db", read_only=True) as reader:
        kept = {(e.node, e.epoch, e.seq) for e in reader.query(EventQuery(limit=None))}
    expected = {
        (node, epoch, seq)
        for acked in rounds
        for node, epoch, first, last in acked
        for seq in range(first, last + 1)
    }
    assert all(len(acked) >= 2 * STOP_PRODUCERS for acked in rounds)
    assert expected <= kept, f"{len(expected - kept)} acked records are not in the store"


# ----------------------------------------------------------------- start-up errors --


def test_a_certificate_that_is_not_pem_stops_the_start(tmp_path: Path, certs: Certs) -> None:
    bad = {
        "cert": str(certs.server.key),
        "key": str(certs.server.key),
        "clientCA": str(certs.ca.cert_path),
    }
    config = parse_collector_config_text(config_text(tmp_path, certs, tls=bad))
    with pytest.raises(CollectorError, match=r"tls\.cert .* is not a PEM certificate"):
        CollectorServer(config).start()


def test_a_key_of_another_certificate_stops_the_start(tmp_path: Path, certs: Certs) -> None:
    wrong = {
        "cert": str(certs.server.cert),
        "key": str(certs.nodes[NODE].key),
        "clientCA": str(certs.ca.cert_path),
    }
    config = parse_collector_config_text(config_text(tmp_path, certs, tls=wrong))
    with pytest.raises(CollectorError, match="does not belong to the certificate"):
        CollectorServer(config).start()


def test_a_port_in_use_stops_the_start(collector: Running, tmp_path: Path) -> None:
    text = config_text(tmp_path / "second", collector.certs, listen=collector.target)
    second = CollectorServer(parse_collector_config_text(text))
    with pytest.raises(CollectorError, match=r"cannot listen on 127\.0\.0\.1"):
        second.start()
    assert collector.producer().send(batch([1])).stored == 1


def test_a_metrics_port_in_use_stops_the_start(
    start: Callable[..., Running], tmp_path: Path, certs: Certs
) -> None:
    first = start(metricsAddress="127.0.0.1:0")
    taken = f"127.0.0.1:{first.server.metrics_port}"
    text = config_text(tmp_path / "second", certs, metricsAddress=taken)
    second = CollectorServer(parse_collector_config_text(text))
    with pytest.raises(CollectorError, match="cannot serve metrics") as info:
        second.start()
    assert info.value.exit_code == 1
    with pytest.raises(RuntimeError, match="not started"):
        _ = second.port  # torn down: nothing left listening


# ------------------------------------------------------------------------ identity --


def test_identity_prefers_the_uri_san(certs: Certs) -> None:
    cert = x509.load_pem_x509_certificate(certs.nodes[NODE].cert.read_bytes())
    identity = identity_from_certificate(cert)
    assert (identity.node, identity.source) == (NODE, "uri_san")
    cn = x509.load_pem_x509_certificate(certs.cn_only.cert.read_bytes())
    assert identity_from_certificate(cn).node == "node-c"
    auth = {"x509_pem_cert": [certs.nodes[OTHER].cert.read_bytes()]}
    assert identity_from_auth_context(auth).node == OTHER
    with pytest.raises(IdentityError) as info:
        identity_from_auth_context({"transport_security_type": [b"ssl"]})
    assert info.value.reason == "no_cert"


# ------------------------------------------------------------------ as a process --


def test_collector_process_serves_survives_sigterm_and_a_crash(
    tmp_path: Path, certs: Certs
) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text(config_text(tmp_path, certs))
    process = CollectorProcess(config, workdir=tmp_path / "run")
    try:
        process.start()
        port = process.port
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}", client_credentials(certs, certs.nodes[NODE])
        )
        try:
            assert Producer(channel).send(batch(range(1, 4))).stored == 3
        finally:
            channel.close()
        assert process.stop() == 0
        events = [e.get("event") for e in process.log_events()]
        assert "collector_listening" in events and "collector_stopped" in events
        process.restart()
        assert process.port == port  # same address after a restart
        process.restart(kill=True)  # SIGKILL, then start again: the rows survive
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}", client_credentials(certs, certs.nodes[NODE])
        )
        try:
            ack = Producer(channel).send(batch(range(1, 5)))
            assert (ack.stored, ack.duplicates) == (1, 3)
        finally:
            channel.close()
        assert process.stop() == 0
    finally:
        process.kill()
    assert stored_seqs(tmp_path / "store" / "events.db") == [1, 2, 3, 4]
