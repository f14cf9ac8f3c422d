"""The producer side against the REAL collector: a real CollectorServer in-process (gRPC
over mutual TLS with certificates from nodeguard.pki, a real SQLite store), real spools
on disk, and a real producer subprocess that is SIGKILLed. Everything listens on
127.0.0.1 (port 0, or a port the first collector got).

One test (flow control) uses a tiny fake Publish server instead: it has to hold acks
back on command, which the real collector never does."""

from __future__ import annotations

import functools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from nodeguard import pki
from nodeguard.collector.config import parse_collector_config_text
from nodeguard.collector.records import EventQuery, StoredEvent
from nodeguard.collector.server import CollectorServer
from nodeguard.collector.store import EventStore
from nodeguard.delivery.backoff import Backoff
from nodeguard.delivery.producer import Producer
from nodeguard.delivery.publisher import Publisher, PublisherError, PublisherTLS
from nodeguard.delivery.spool import Spool
from nodeguard.lab.collector_process import ClientTLS, CollectorProcess
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb
from tests.unit.test_spool import violation

NODE = "node-a"
OTHER = "node-b"
TIMEOUT = 60.0
REPO = Path(__file__).resolve().parents[2]
# The sample violations are from 2025: keep them whatever their age.
NO_RETENTION = {"maxAge": None, "maxEvents": None}


@dataclass(frozen=True)
class Certs:
    ca: pki.CA
    server: pki.CertFiles
    nodes: dict[str, pki.CertFiles]

    def tls(self, node: str = NODE) -> PublisherTLS:
        files = self.nodes[node]
        return PublisherTLS(self.ca.cert_path, files.cert, files.key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("pki")
    ca = pki.make_ca(d)
    return Certs(
        ca=ca,
        server=pki.issue_server(ca, d, ["127.0.0.1", "localhost"]),
        nodes={n: pki.issue_node(ca, d, n) for n in (NODE, OTHER)},
    )


def wait_until(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout}s")


# -------------------------------------------------------------------- collector --


class Collectors:
    """Starts real collectors (one store file per test) and stops them all at the end."""

    def __init__(self, tmp_path: Path, certs: Certs) -> None:
        self.store_path = tmp_path / "store" / "events.db"
        self.certs = certs
        self.running: list[CollectorServer] = []

    def start(self, port: int = 0) -> CollectorServer:
        config = {
            "listen": f"127.0.0.1:{port}",
            "tls": {
                "cert": str(self.certs.server.cert),
                "key": str(self.certs.server.key),
                "clientCA": str(self.certs.ca.cert_path),
            },
            "store": {"path": str(self.store_path), "durable": False, "retention": NO_RETENTION},
            "metricsAddress": None,
        }
        server = CollectorServer(parse_collector_config_text(yaml.safe_dump(config), "c.yaml"))
        server.start()
        self.running.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.running:
            server.stop(grace_s=0)

    def events(self) -> list[StoredEvent]:
        with EventStore(self.store_path, read_only=True) as store:
            return store.query(EventQuery(limit=None))

    def store(self) -> EventStore:
        return EventStore(self.store_path, read_only=True)


@pytest.fixture
def collectors(tmp_path: Path, certs: Certs) -> Iterator[Collectors]:
    c = Collectors(tmp_path, certs)
    try:
        yield c
    finally:
        c.stop_all()


class Links:
    """Producer side: spool + publisher + producer, all closed at the end."""

    def __init__(self, tmp_path: Path, certs: Certs) -> None:
        self.tmp_path = tmp_path
        self.certs = certs
        self.opened: list[Producer] = []

    def open(
        self,
        port: int,
        *,
        node: str = NODE,
        cert_node: str = NODE,
        spool: str = "spool.db",
        tls: PublisherTLS | bool | None = True,
        **spool_kw: Any,
    ) -> Producer:
        s = Spool(self.tmp_path / spool, **spool_kw)
        publisher = Publisher(
            s,
            f"127.0.0.1:{port}",
            node=node,
            tls=self.certs.tls(cert_node) if tls is True else (tls or None),
            backoff=Backoff(initial=0.05, maximum=0.25),
            batch_records=spool_kw.get("chunk_records", 2000),
        )
        producer = Producer(s, publisher)
        self.opened.append(producer)
        publisher.start()
        return producer

    def close_all(self) -> None:
        for producer in self.opened:
            producer.close()


@pytest.fixture
def links(tmp_path: Path, certs: Certs) -> Iterator[Links]:
    links = Links(tmp_path, certs)
    try:
        yield links
    finally:
        links.close_all()


def produce(producer: Producer, start: int, count: int, *, per_flush: int = 500) -> int:
    """``count`` violations (count i % 3 + 1 each), flushed every ``per_flush``; returns
    the attempts they stand for."""
    attempts = 0
    for i in range(start, start + count):
        v = violation(i, count=i % 3 + 1)
        attempts += v.count
        producer.add_violation(v)
        if (i - start + 1) % per_flush == 0:
            producer.flush()
    producer.flush()
    return attempts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------ tests --


def test_every_record_is_stored_exactly_once(collectors: Collectors, links: Links) -> None:
    server = collectors.start()
    producer = links.open(server.port)
    attempts = produce(producer, 0, 6000)
    producer.report_loss(pb.LOSS_REASON_KERNEL, 7)
    producer.add_telemetry("ready", {"records": 6000})
    producer.flush()
    assert producer.publisher is not None
    assert producer.publisher.wait_drained(TIMEOUT)
    stats = producer.publisher.stats()
    assert stats.state == "connected"
    assert (stats.acked, stats.stored, stats.duplicates, stats.rejected) == (6002, 6002, 0, 0)
    assert (stats.in_flight, stats.spool_records) == (0, 0)
    assert stats.last_error is None and stats.last_ack_ms is not None
    events = collectors.events()
    assert len(events) == 6000
    epoch = producer.spool.epoch
    assert {(e.node, e.epoch) for e in events} == {(NODE, epoch)}
    assert sorted(e.violation.sequence for e in events) == list(range(6000))
    assert len({e.seq for e in events}) == 6000
    assert sum(e.violation.count for e in events) == attempts
    assert events[0].violation == violation(0, count=1)
    with collectors.store() as store:
        (loss,) = store.losses()
        assert (loss.reason, loss.count, loss.total) == ("kernel", 7, 7)
        assert store.telemetry()[NODE][1].counters["records"] == 6000


def test_collector_killed_and_restarted_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, certs: Certs, links: Links
) -> None:
    """The collector as a real process (CollectorProcess), SIGKILLed while batches are in
    flight (stored and not acknowledged, or not stored), then started again on the same
    port and store."""
    store_path = tmp_path / "proc-store" / "events.db"
    config = tmp_path / "collector.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "tls": {
                    "cert": str(certs.server.cert),
                    "key": str(certs.server.key),
                    "clientCA": str(certs.ca.cert_path),
                },
                "store": {"path": str(store_path), "durable": False, "retention": NO_RETENTION},
                "metricsAddress": None,
            }
        )
    )
    node = certs.nodes[NODE]
    collector = CollectorProcess(
        config, tls=ClientTLS(certs.ca.cert_path, node.cert, node.key), workdir=tmp_path / "cp"
    )
    with collector:
        producer = links.open(collector.port)
        publisher = producer.publisher
        assert publisher is not None
        produce(producer, 0, 20_000, per_flush=2000)
        wait_until(lambda: publisher.stats().acked >= 2000, "first acks")
        collector.kill()  # mid-stream
        wait_until(lambda: publisher.stats().state == "disconnected", "disconnected")
        assert publisher.stats().last_error
        produce(producer, 20_000, 5000)  # spooled while the collector is down
        collector.start()  # same port, same store
        assert publisher.wait_drained(TIMEOUT)
        stats = publisher.stats()
        assert stats.reconnects >= 1
    with EventStore(store_path, read_only=True) as store:
        events = store.query(EventQuery(limit=None))
        duplicates = store.stats().duplicates_total
    assert sorted(e.violation.sequence for e in events) == list(range(25_000))
    assert sorted(e.seq for e in events) == list(range(1, 25_001))
    # what was resent after the restart and already stored: absorbed as duplicates
    assert duplicates == stats.duplicates


_PRODUCER = """
import sys, time
from pathlib import Path
from nodeguard.delivery.producer import Producer
from nodeguard.delivery.publisher import Publisher, PublisherTLS
from nodeguard.delivery.spool import Spool
from tests.unit.test_spool import violation

spool_path, address, ca, cert, key = sys.argv[1:6]
spool = Spool(Path(spool_path))
tls = PublisherTLS(Path(ca), Path(cert), Path(key))
publisher = Publisher(spool, address, node="node-a", tls=tls)
producer = Producer(spool, publisher)
publisher.start()
print("epoch", spool.epoch, flush=True)
i = 0
while True:
    for _ in range(2000):
        producer.add_violation(violation(i))
        i += 1
    producer.flush()
    print("committed", i, flush=True)
    time.sleep(0.005)
"""


def test_the_spool_survives_a_sigkilled_producer(
    collectors: Collectors, links: Links, certs: Certs, tmp_path: Path
) -> None:
    server = collectors.start()
    spool_path = tmp_path / "killed.db"
    files = certs.nodes[NODE]
    proc = subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, str(spool_path), f"127.0.0.1:{server.port}",
         str(certs.ca.cert_path), str(files.cert), str(files.key)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        epoch_line = lines.get(timeout=TIMEOUT)
        old_epoch = int(epoch_line.split()[1])
        committed = 0

        def delivered_some() -> bool:
            nonlocal committed
            while not lines.empty():
                committed = int(lines.get().split()[1])
            return committed >= 20_000 and server.store.stats().events > 0

        wait_until(delivered_some, "the producer subprocess delivering")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(TIMEOUT)
    while not lines.empty():
        committed = int(lines.get().split()[1])
    # a new producer on the same spool: a new epoch, and the old epoch's records first
    producer = links.open(server.port, spool="killed.db")
    assert producer.spool.epoch > old_epoch
    left = producer.spool.records
    assert left > 0, "the kill should leave records in the spool"
    produce(producer, 10**6, 100)
    assert producer.publisher is not None
    assert producer.publisher.wait_drained(TIMEOUT)
    events = collectors.events()
    old = sorted(e.seq for e in events if e.epoch == old_epoch)
    # every record the killed producer committed arrived, once, gap-free
    assert old == list(range(1, len(old) + 1))
    assert len(old) >= committed
    assert sorted(e.violation.sequence for e in events if e.epoch == old_epoch) == list(
        range(len(old))
    )
    new = [e for e in events if e.epoch == producer.spool.epoch]
    assert sorted(e.seq for e in new) == list(range(1, 101))


def test_a_certificate_of_another_node_is_refused(collectors: Collectors, links: Links) -> None:
    server = collectors.start()
    producer = links.open(server.port, node=NODE, cert_node=OTHER)
    produce(producer, 0, 10)
    publisher = producer.publisher
    assert publisher is not None

    def refused() -> bool:
        error = publisher.stats().last_error or ""
        return "PERMISSION_DENIED" in error

    wait_until(refused, "the refusal in the stats")
    stats = publisher.stats()
    assert f"belongs to node '{OTHER}'" in (stats.last_error or "")
    assert stats.state in ("disconnected", "connecting", "connected")
    assert stats.spool_records == 10 and stats.acked == 0
    assert server.store.stats().events == 0


def test_rejected_records_are_counted_as_lost(collectors: Collectors, links: Links) -> None:
    server = collectors.start()
    producer = links.open(server.port)
    produce(producer, 0, 5)
    for i in range(5, 8):  # violations naming another node than the publisher's
        producer.add_violation(violation(i, node=OTHER, count=4))
    producer.flush()
    publisher = producer.publisher
    assert publisher is not None
    assert publisher.wait_drained(TIMEOUT)
    stats = publisher.stats()
    assert (stats.acked, stats.stored, stats.rejected) == (8, 5, 3)
    assert stats.rejected_attempts == 12
    assert server.store.stats().events == 5
    # counted in the spool: a restarted producer still reports them
    assert producer.spool.stats().rejected == 3


def test_a_full_spool_drops_telemetry_first_and_the_counts_add_up(
    collectors: Collectors, links: Links
) -> None:
    port = free_port()  # no collector yet: everything waits in the spool
    producer = links.open(port, max_records=1000, chunk_records=100)
    publisher = producer.publisher
    assert publisher is not None
    wait_until(lambda: publisher.stats().last_error, "the first failed connection")
    generated = 0
    attempts = 0
    for round_ in range(12):
        for i in range(100):
            producer.add_telemetry("ready", {"round": round_, "i": i})
        base = round_ * 100
        for i in range(base, base + 50):
            v = violation(i, verdict="audited", count=2)
            producer.add_violation(v)
            attempts += v.count
        attempts += produce(producer, 10_000 + base, 50)
        generated += 100
    stats = publisher.stats()
    assert stats.dropped["telemetry"] > 0
    assert stats.dropped["violation"] == 0  # telemetry and audit went first
    assert stats.spool_records <= 1000 + 10
    collectors.start(port)
    assert publisher.wait_drained(TIMEOUT)
    stats = publisher.stats()
    with collectors.store() as store:
        stored = store.stats()
        losses = store.losses()
    spool_losses = [x for x in losses if x.reason == "spool_full"]
    by_priority: dict[str, int] = {}
    attempts_by_priority: dict[str, int] = {}
    for x in spool_losses:
        by_priority[x.priority] = by_priority.get(x.priority, 0) + x.count
        attempts_by_priority[x.priority] = attempts_by_priority.get(x.priority, 0) + x.attempts
    # the collector received a loss record for every drop, by priority
    assert by_priority == {k: v for k, v in stats.dropped.items() if v}
    assert attempts_by_priority.get("audit", 0) == stats.dropped_attempts["audit"]
    # generated == stored + counted lost, in records and in attempts
    lost_records = stats.dropped["audit"] + stats.dropped["violation"]
    assert stored.events + lost_records == generated
    assert stored.attempts + stats.dropped_attempts_total == attempts


# ------------------------------------------------------------- flow control --


class HeldAcks:
    """A Publish server that acknowledges only when told to (insecure, loopback)."""

    def __init__(self) -> None:
        self.received: list[pb.PublishRequest] = []
        self.release: queue.Queue[bool] = queue.Queue()
        self._lock = threading.Lock()

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def has_more_than(self, n: int) -> bool:
        return self.count() > n

    def publish(self, requests: Iterator[pb.PublishRequest], context: Any) -> Iterator[Any]:
        def read() -> None:
            try:
                for request in requests:
                    with self._lock:
                        self.received.append(request)
            except grpc.RpcError:
                pass  # the publisher went away (end of the test)

        threading.Thread(target=read, daemon=True).start()
        acked = 0
        while context.is_active():
            try:
                self.release.get(timeout=0.1)
            except queue.Empty:
                continue
            wait_until(functools.partial(self.has_more_than, acked), "a request to ack")
            with self._lock:
                request = self.received[acked]
            acked += 1
            yield pb.PublishAck(
                epoch=request.epoch,
                first_seq=request.records[0].seq,
                last_seq=request.records[-1].seq,
                stored=len(request.records),
            )


@pytest.fixture
def held() -> Iterator[tuple[HeldAcks, int]]:
    fake = HeldAcks()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.stream_stream_rpc_method_handler(
        fake.publish,
        request_deserializer=pb.PublishRequest.FromString,
        response_serializer=pb.PublishAck.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("nodeguard.v1.Collector", {"Publish": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, port
    finally:
        server.stop(0)


def test_at_most_window_batches_are_unacknowledged(
    held: tuple[HeldAcks, int], links: Links
) -> None:
    fake, port = held
    producer = links.open(port, tls=None, chunk_records=10)
    produce(producer, 0, 100, per_flush=10)  # ten batches of ten
    publisher = producer.publisher
    assert publisher is not None
    wait_until(lambda: fake.count() == 4, "the first window")
    time.sleep(0.3)  # room to (wrongly) send a fifth batch
    assert fake.count() == 4
    assert publisher.stats().in_flight == 4
    fake.release.put(True)
    wait_until(lambda: fake.count() == 5, "one more batch after one ack")
    assert producer.spool.records == 90
    for _ in range(9):
        fake.release.put(True)
    assert publisher.wait_drained(TIMEOUT)
    assert [r.records[0].seq for r in fake.received] == list(range(1, 101, 10))


def test_unreadable_certificates_fail_at_start(tmp_path: Path, certs: Certs) -> None:
    spool = Spool(tmp_path / "spool.db")
    try:
        tls = PublisherTLS(certs.ca.cert_path, tmp_path / "missing.crt", certs.nodes[NODE].key)
        publisher = Publisher(spool, "127.0.0.1:1", node=NODE, tls=tls)
        with pytest.raises(PublisherError, match=r"missing\.crt \(collectorTLS\.cert\)"):
            publisher.start()
    finally:
        spool.close()


# ------------------------------------------------------------- nodeguard run --


def _run_flags(certs: Certs, *extra: str) -> list[str]:
    node = certs.nodes[NODE]
    return [
        "--collector-ca", str(certs.ca.cert_path),
        "--collector-cert", str(node.cert),
        "--collector-key", str(node.key),
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--collector-ca", "/x"], "--collector-ca needs --collector HOST:PORT"),
        (["--collector-wait", "3"], "--collector-wait needs --collector HOST:PORT"),
        (["--collector", "collector"], "--collector 'collector': 'collector' has no port"),
        (["--collector", "h:1"], "--collector needs --collector-ca, --collector-cert, "),
        (["--collector", "h:1", "--collector-ca", "/nope.crt", "--collector-cert", "/a",
          "--collector-key", "/b"], "--collector-ca /nope.crt: no such file"),
        (["--collector", "h:1", "CERTS", "--collector-wait", "soon"],
         "--collector-wait 'soon' is not a number of seconds"),
        (["--collector", "h:1", "CERTS", "--collector-wait", "-1"], "seconds >= 0"),
    ],
)  # fmt: skip
def test_run_collector_flags_are_checked_first(
    flags: list[str],
    message: str,
    certs: Certs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from nodeguard.cli.main import main  # noqa: PLC0415

    if "CERTS" in flags:
        i = flags.index("CERTS")
        flags = flags[:i] + _run_flags(certs) + flags[i + 1 :]
    policy = tmp_path / "p.yaml"  # never read: the flags fail first
    assert main(["run", "--policy", str(policy), *flags, "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodeguard: error: ")
    assert message in err
    assert "Traceback" not in err


def test_run_summary_says_what_was_delivered() -> None:
    from nodeguard.runner.report import DeliveryReport, render_delivery  # noqa: PLC0415

    done = DeliveryReport("c:7443", "ci-1", records=12, acked=12, stored=10, duplicates=2,
                          rejected=0, undelivered=0)  # fmt: skip
    assert render_delivery(done) == (
        "nodeguard: collector c:7443 (node ci-1): all 12 records delivered (10 stored, "
        "2 already there)"
    )
    spool = Path("/tmp/nodeguard-run-spool-x/spool.db")
    partial = DeliveryReport("c:7443", "ci-1", records=12, acked=8, stored=7, duplicates=0,
                             rejected=1, undelivered=4, waited_s=10.0,
                             last_error="UNAVAILABLE: down", spool=spool)  # fmt: skip
    assert render_delivery(partial).splitlines() == [
        "nodeguard: collector c:7443 (node ci-1): 7 of 12 records delivered, 4 NOT delivered "
        "within 10s (UNAVAILABLE: down); 1 refused as invalid (lost)",
        f"nodeguard: the undelivered records are kept in {spool}",
    ]


RUN_POLICY = """\
apiVersion: nodeguard.io/v1alpha1
kind: AgentPolicy
metadata: {name: publish-run}
spec:
  egress:
    allow: [{cidr: 198.51.100.0/24, ports: ["443"], protocol: tcp}]
"""
# five denied connects, each to its own address (five records)
DENIED = """import socket
for i in range(1, 6):
    socket.socket().connect_ex(('203.0.113.%d' % i, 443))
"""


@pytest.mark.bpf
def test_run_publishes_its_violations(collectors: Collectors, certs: Certs, tmp_path: Path) -> None:
    """`nodeguard run --collector` as a user runs it (real kernel, real collector): the
    violations are stored under the certificate's node; with the collector down they are
    kept in a spool file that a later publisher delivers."""
    server = collectors.start()
    policy = tmp_path / "policy.yaml"
    policy.write_text(RUN_POLICY)
    base = [sys.executable, "-m", "nodeguard", "run", "--policy", str(policy), "-q"]
    command = ["--", sys.executable, "-c", DENIED]
    done = subprocess.run(
        [*base, "--collector", f"127.0.0.1:{server.port}", *_run_flags(certs), *command],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"(node {NODE}): all 5 records delivered (5 stored, 0 already there)" in done.stderr
    events = collectors.events()
    assert sorted(e.violation.egress.ip for e in events if e.violation.egress) == [
        f"203.0.113.{i}" for i in range(1, 6)
    ]
    assert {(e.node, e.violation.node) for e in events} == {(NODE, NODE)}
    assert sorted(e.seq for e in events) == [1, 2, 3, 4, 5]
    # the collector is down: nothing is dropped silently
    port = free_port()
    down = subprocess.run(
        [*base, "--collector", f"127.0.0.1:{port}", "--collector-wait", "0.5",
         *_run_flags(certs), *command],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert "0 of 5 records delivered, 5 NOT delivered within 0.5s (UNAVAILABLE" in down.stderr
    kept = Path(down.stderr.split("the undelivered records are kept in ")[1].split()[0])
    try:
        spool = Spool(kept)
        publisher = Publisher(
            spool, f"127.0.0.1:{server.port}", node=NODE, tls=certs.tls(), producer="run"
        )
        publisher.start()
        try:
            assert publisher.wait_drained(TIMEOUT)
        finally:
            publisher.stop()
            spool.close()
        assert len(collectors.events()) == 10
    finally:
        import shutil  # noqa: PLC0415

        shutil.rmtree(kept.parent, ignore_errors=True)
