"""Collector-side rates (issue 5), on this machine, against real receivers:

- **ingest per core**: one producer pushes prebuilt PublishRequests (2,000 egress
  violations each, 4 batches in flight) over mTLS to a collector subprocess with a durable
  store, as fast as it acks them. Reported: records/s (wall) and records per CPU-second of
  the collector process (user + system).
- **each sink's rate**: a store prefilled with N violations of every kind, one sink runner
  draining it from its cursor into a real receiver started here: a JSON lines file,
  rsyslogd over TCP and over TLS (RFC 5424 + CEF, octet counting), a local HTTPS HEC
  stand-in (Splunk cannot run here; its Python receiver shares the CPU, so that figure is a
  lower bound), nats-server with JetStream. Reported: events/s from first to last delivery.

Run as root: ``python -m bench --only collector``.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import yaml

from nodeguard import pki
from nodeguard.collector.records import Retention
from nodeguard.collector.sinks.config import JsonlSink, NatsSink, SplunkHecSink, SyslogSink
from nodeguard.collector.sinks.runner import SinkRunner, build_runners
from nodeguard.collector.store import EventStore
from nodeguard.events.model import EgressDetail, PolicyRef, ProcessInfo, Violation, WorkloadRef
from nodeguard.events.uuid7 import uuid7
from nodeguard.events.wire import priority_of, to_proto
from nodeguard.lab.collector_process import ClientTLS, CollectorProcess
from nodeguard.lab.hec_receiver import HecReceiver
from nodeguard.lab.nats_server import NatsServer
from nodeguard.lab.rsyslog import Rsyslog
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

NODE = "bench-node"
POLICY = PolicyRef(name="bench", uid="6f1c", version="3", mode="enforce")
WORKLOAD = WorkloadRef(
    namespace="agents",
    pod_name="research-agent-0",
    pod_uid="0f3c8a4e-1111-2222-3333-444455556666",
    container_id="containerd://abc123",
    container_name="agent",
    image="ghcr.io/acme/agent:1.2",
    image_id="sha256:0123abcd",
)


def violation(i: int) -> Violation:
    now = int(time.time() * 1000)
    return Violation(
        uid=uuid7(),
        sequence=i + 1,
        kind="egress",
        time_ms=now,
        first_time_ms=now,
        count=1,
        verdict="blocked",
        cgroup_id=4242,
        process=ProcessInfo(
            pid=1000,
            tid=1000,
            name="python3",
            path="/usr/bin/python3",
            cmd_line="python3 agent.py --task research",
            ppid=1,
        ),
        policy=POLICY,
        egress=EgressDetail(
            f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 443, "tcp", 4, "connect4"
        ),
        workload=WORKLOAD,
        node=NODE,
    )


def records(start: int, n: int) -> list[pb.Record]:
    out = []
    for i in range(start, start + n):
        v = violation(i)
        out.append(pb.Record(seq=i + 1, priority=priority_of(v), violation=to_proto(v)))  # type: ignore[arg-type]
    return out


def _collector(work: Path) -> tuple[CollectorProcess, ClientTLS]:
    ca = pki.make_ca(work / "pki")
    server = pki.issue_server(ca, work / "pki", ["127.0.0.1"])
    node = pki.issue_node(ca, work / "pki", NODE)
    config = {
        "listen": "127.0.0.1:0",
        "tls": {"cert": str(server.cert), "key": str(server.key), "clientCA": str(ca.cert_path)},
        "store": {"path": str(work / "events.db"), "durable": True},
        "metricsAddress": None,
    }
    path = work / "collector.yaml"
    path.write_text(yaml.safe_dump(config))
    tls = ClientTLS(ca.cert_path, node.cert, node.key, None)
    return CollectorProcess(path, workdir=work / "run"), tls


def bench_ingest(quick: bool) -> dict[str, Any]:
    total = 200_000 if quick else 1_000_000
    batch, window = 2000, 4
    work = Path(tempfile.mkdtemp(prefix="nodeguard-bench-ingest-"))
    collector, tls = _collector(work)
    collector.start()
    try:
        epoch = int(time.time() * 1000)
        template = records(0, batch)
        requests: list[bytes] = []
        for b in range(total // batch):
            for j, r in enumerate(template):
                r.seq = b * batch + j + 1
            requests.append(
                pb.PublishRequest(
                    node=NODE, epoch=epoch, records=template, producer="bench"
                ).SerializeToString()
            )
        channel = grpc.secure_channel(collector.target, tls.credentials(), tls.options())
        publish = channel.stream_stream(
            "/nodeguard.v1.Collector/Publish",
            request_serializer=lambda b: b,
            response_deserializer=pb.PublishAck.FromString,
        )
        credit = threading.Semaphore(window)

        def feed() -> Iterator[bytes]:
            for req in requests:
                credit.acquire()
                yield req

        assert collector.pid is not None
        proc = psutil.Process(collector.pid)
        cpu0 = proc.cpu_times()
        t0 = time.perf_counter()
        stored = 0
        for ack in publish(feed()):
            stored += ack.stored
            credit.release()
        wall = time.perf_counter() - t0
        cpu1 = proc.cpu_times()
        channel.close()
        cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        return {
            "records": total,
            "stored": stored,
            "records_per_s": round(stored / wall),
            "collector_cpu_s": round(cpu, 2),
            "records_per_cpu_s": round(stored / cpu),
            "batch": batch,
            "window": window,
            "durable": True,
        }
    finally:
        collector.stop()


@contextlib.contextmanager
def _prefilled(path: Path, n: int) -> Iterator[EventStore]:
    store = EventStore(path, Retention(max_age_s=None, max_events=None), durable=False)
    epoch = 1
    for start in range(0, n, 2000):
        store.insert(NODE, epoch, records(start, min(2000, n - start)))
    try:
        yield store
    finally:
        store.close()


def _drain(store: EventStore, runner: SinkRunner, n: int) -> float:
    runner.start()
    t0 = time.perf_counter()
    deadline = time.monotonic() + 600
    try:
        while runner.stats().delivered < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return time.perf_counter() - t0
    finally:
        runner.stop()


def bench_sinks(quick: bool) -> list[dict[str, Any]]:
    n = 10_000 if quick else 50_000
    work = Path(tempfile.mkdtemp(prefix="nodeguard-bench-sinks-"))
    out: list[dict[str, Any]] = []

    def run(name: str, make: Callable[[EventStore], SinkRunner], note: str = "") -> None:
        with _prefilled(work / f"{name}.db", n) as store:
            runner = make(store)
            seconds = _drain(store, runner, n)
            stats = runner.stats()
            out.append(
                {
                    "sink": name,
                    "events": stats.delivered,
                    "events_per_s": round(stats.delivered / seconds),
                    "failures": stats.failures,
                    "note": note,
                }
            )

    def one(config: Any, store: EventStore) -> SinkRunner:
        (runner,) = build_runners([config], store, cluster="bench")
        return runner

    run(
        "jsonl",
        lambda s: one(
            JsonlSink.model_validate(
                {"type": "jsonl", "name": "file", "path": str(work / "v.jsonl")}
            ),
            s,
        ),
    )
    with Rsyslog(work / "rsyslog") as rs:
        run(
            "syslog-tcp",
            lambda s: one(
                SyslogSink.model_validate(
                    {"type": "syslog", "name": "tcp", "address": rs.tcp_address, "transport": "tcp"}
                ),
                s,
            ),
        )
        run(
            "syslog-tls",
            lambda s: one(
                SyslogSink.model_validate(
                    {
                        "type": "syslog",
                        "name": "tls",
                        "address": rs.tls_address,
                        "transport": "tls",
                        "tls": {
                            "ca": str(rs.ca),
                            "cert": str(rs.client.cert),
                            "key": str(rs.client.key),
                        },
                    }
                ),
                s,
            ),
        )
    with HecReceiver(work / "hec", token="bench-token") as hec:  # noqa: S106
        settings: dict[str, Any] = {
            "type": "splunk_hec", "name": "splunk", "url": hec.url, "token": "bench-token",
        }  # fmt: skip
        if hec.ca is not None:
            settings["tls"] = {"ca": str(hec.ca)}
        run(
            "splunk-hec-https",
            lambda s: one(SplunkHecSink.model_validate(settings), s),
            note="receiver is a Python stand-in on the same CPUs (lower bound)",
        )
    with NatsServer(work / "nats") as nats_server:
        run(
            "nats-jetstream",
            lambda s: one(
                NatsSink.model_validate(
                    {"type": "nats", "name": "bus", "servers": [nats_server.url]}
                ),
                s,
            ),
        )
    return out


def run_collector_bench(quick: bool) -> dict[str, Any]:
    return {"ingest": bench_ingest(quick), "sinks": bench_sinks(quick)}
