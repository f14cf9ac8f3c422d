"""The collector: a gRPC server that takes producers' violation streams over mutual TLS,
commits every batch to the store before acknowledging it, and feeds the SIEM sinks.

``CollectorServer(config).start()`` opens the store, starts the sinks, binds and serves;
:func:`serve` is what ``nodeguard collector --config FILE`` runs (until SIGTERM/SIGINT).
See docs/collector.md for the delivery guarantees.

:meth:`CollectorServer.stop` goes in an order that never leaves a Publish handler using a
closed store: health NOT_SERVING; no new streams; no new batches (a stream that sends
one ends with UNAVAILABLE, the batch not stored); the batches under way finish and are
acknowledged (within the grace); the remaining streams are cancelled; the retention
thread and the sinks stop; the store closes last, and it waits for any insert that
outlived the grace (an insert after that fails with StoreError, never runs on a closed
connection).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nodeguard import log
from nodeguard.agent.metrics import MetricsServer
from nodeguard.collector.config import CollectorConfig, TlsConfig
from nodeguard.collector.metrics import CollectorMetrics, StoreFigures
from nodeguard.collector.records import InsertResult
from nodeguard.collector.service import SERVICE, CollectorStats, PublishService
from nodeguard.collector.sinks.runner import SinkRunner, build_runners
from nodeguard.collector.store import EventStore, StoreError
from nodeguard.errors import NodeguardError
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

_log = log.get("nodeguard.collector.server")

RETENTION_INTERVAL_S = 60.0
# Threads beyond maxStreams for short calls (health checks, a refused stream's answer).
EXTRA_THREADS = 16
KEEPALIVE_TIME_MS = 30_000  # ping idle producers; a dead one's stream ends ~40 s later
KEEPALIVE_TIMEOUT_MS = 10_000
HEALTH_SERVICES = ("", SERVICE)
# After the streams are cancelled, how long stop() waits for gRPC to finish shutting down.
SERVER_SHUTDOWN_WAIT_S = 10.0


class CollectorError(NodeguardError):
    """The collector cannot start: certificates unreadable, address not bindable, ..."""

    exit_code = 1


def _read_pem(path: Path, what: str, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CollectorError(
            f"cannot read {what} {path} (tls.{key}): {err.strerror or err}",
            fix=f"check tls.{key} in the configuration and the file's permissions",
        ) from err


def load_tls(tls: TlsConfig) -> tuple[bytes, bytes, bytes]:
    """(cert chain, key, client CA) as PEM, checked: certificates parse, the key is a
    private key and belongs to the certificate. Errors name the file and the key."""
    cert = _read_pem(tls.cert, "the server certificate", "cert")
    key = _read_pem(tls.key, "the server key", "key")
    client_ca = _read_pem(tls.client_ca, "the client CA", "clientCA")
    try:
        leaf = x509.load_pem_x509_certificate(cert)
    except ValueError as err:
        raise CollectorError(
            f"tls.cert {tls.cert} is not a PEM certificate: {err}",
            fix="point tls.cert at the server certificate (PEM, '-----BEGIN CERTIFICATE-----')",
        ) from err
    try:
        x509.load_pem_x509_certificate(client_ca)
    except ValueError as err:
        raise CollectorError(
            f"tls.clientCA {tls.client_ca} is not a PEM certificate: {err}",
            fix="point tls.clientCA at the CA certificate that signs the node certificates",
        ) from err
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as err:
        raise CollectorError(
            f"tls.key {tls.key} is not an unencrypted PEM private key: {err}",
            fix="point tls.key at the server certificate's private key (PEM, no passphrase)",
        ) from err
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if private.public_key().public_bytes(encoding, public) != leaf.public_key().public_bytes(
        encoding, public
    ):
        raise CollectorError(
            f"tls.key {tls.key} does not belong to the certificate tls.cert {tls.cert}",
            fix="use the key the server certificate was issued for",
        )
    return cert, key, client_ca


class CollectorServer:
    """One collector. Not restartable: make a new one after :meth:`stop`."""

    def __init__(
        self, config: CollectorConfig, *, retention_interval_s: float = RETENTION_INTERVAL_S
    ) -> None:
        self.config = config
        self._retention_interval_s = retention_interval_s
        self._store: EventStore | None = None
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer()
        self._service = PublishService(
            self._insert,
            require_identity=not config.insecure,
            max_records_per_batch=config.limits.max_records_per_batch,
            max_streams=config.limits.max_streams,
        )
        self._sinks: list[SinkRunner] = []
        self._port = 0
        self._serving = False
        self._stop = threading.Event()
        self._retention_thread: threading.Thread | None = None
        self._retention_deleted = 0
        self.metrics = CollectorMetrics(
            self.stats, store=self._store_figures, sinks=self._sink_stats, up=lambda: self._serving
        )
        self._metrics_server: MetricsServer | None = None

    # ------------------------------------------------------------------ accessors --

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise RuntimeError("the collector is not started: call start() first")
        return self._store

    @property
    def port(self) -> int:
        """The bound port (the one the kernel picked when listen asked for port 0)."""
        if self._server is None:
            raise RuntimeError("the collector is not started: call start() first")
        return self._port

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics_server is None else self._metrics_server.port

    @property
    def sinks(self) -> list[SinkRunner]:
        return list(self._sinks)

    def stats(self) -> CollectorStats:
        return self._service.stats()

    def _insert(self, node: str, epoch: int, records: Sequence[pb.Record]) -> InsertResult:
        store = self._store
        if store is None:
            raise StoreError(
                "the event store is closed: the collector is stopping",
                fix="send the batch again to a running collector",
            )
        return store.insert(node, epoch, records)

    def _store_figures(self) -> StoreFigures | None:
        store = self._store
        if store is None:
            return None
        s = store.stats()
        return StoreFigures(
            events=s.events,
            losses=s.losses,
            size_bytes=s.size_bytes,
            retention_deleted=self._retention_deleted,
        )

    def _sink_stats(self) -> list[Any]:
        return [runner.stats() for runner in self._sinks]

    # ------------------------------------------------------------------- lifecycle --

    def start(self) -> None:
        """Open the store, start the sinks, bind and serve; health turns SERVING."""
        if self._server is not None or self._stop.is_set():
            raise RuntimeError("a collector starts once: make a new CollectorServer")
        config = self.config
        credentials = None if config.insecure else self._credentials()
        try:
            config.store.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CollectorError(
                f"cannot create the store directory {config.store.path.parent}: "
                f"{err.strerror or err}",
                fix="set store.path to a writable location",
            ) from err
        self._store = EventStore(
            config.store.path,
            config.store.retention.to_retention(),
            durable=config.store.durable,
        )
        try:
            self._sinks = build_runners(config.sinks, self._store, cluster=config.cluster)
            for runner in self._sinks:
                runner.start()
            self._bind_and_start(credentials)
            if config.metrics_address is not None:
                self._metrics_server = MetricsServer(
                    str(config.metrics_address), self.metrics.registry, ready=self._ready
                )
                self._metrics_server.start()
        except NodeguardError as err:
            self._teardown(grace_s=0)
            if isinstance(err, CollectorError):
                raise
            # a sink or the metrics endpoint cannot start: a start-up error (exit 1)
            raise CollectorError(err.message, fix=err.fix) from err
        except BaseException:
            self._teardown(grace_s=0)
            raise
        self._serving = True
        for service in HEALTH_SERVICES:
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._retention_thread = threading.Thread(
            target=self._retention_loop, name="nodeguard-retention", daemon=True
        )
        self._retention_thread.start()
        _log.info(
            "collector_listening",
            address=str(config.listen),
            port=self._port,
            tls="off (insecure, loopback)" if config.insecure else "mtls",
            store=str(config.store.path),
            durable=config.store.durable,
            sinks=[runner.name for runner in self._sinks],
            metrics=None if self._metrics_server is None else self._metrics_server.port,
        )

    def _credentials(self) -> grpc.ServerCredentials:
        assert self.config.tls is not None
        cert, key, client_ca = load_tls(self.config.tls)
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=True
        )

    def _bind_and_start(self, credentials: grpc.ServerCredentials | None) -> None:
        limits = self.config.limits
        threads = limits.max_streams + EXTRA_THREADS
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nodeguard-rpc"),
            maximum_concurrent_rpcs=threads,
            options=[
                ("grpc.max_receive_message_length", limits.max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ],
        )
        server.add_generic_rpc_handlers((self._service.generic_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = str(self.config.listen)
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as err:
            port = 0
            _log.debug("bind_failed", address=address, error=str(err))
        if not port:
            server.stop(None)
            raise CollectorError(
                f"cannot listen on {address}: the address is in use or not an address of this host",
                fix="pick a free port for listen, stop what listens on it, or use 0.0.0.0",
            )
        server.start()
        self._server = server
        self._port = port

    def _ready(self) -> tuple[bool, str]:
        return (True, "") if self._serving else (False, "not serving")

    def _retention_loop(self) -> None:
        while not self._stop.is_set():
            store = self._store
            if store is None:
                return
            started = time.monotonic()
            try:
                deleted = store.apply_retention()
            except Exception as err:
                _log.error("retention_failed", error=str(err))
            else:
                self._retention_deleted += deleted
                if deleted:
                    _log.info(
                        "retention_applied",
                        deleted=deleted,
                        seconds=round(time.monotonic() - started, 3),
                    )
            if self._stop.wait(self._retention_interval_s):
                return

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop in order (see the module docstring): batches under way get ``grace_s``
        to be stored and acknowledged, then open streams are cancelled, the sinks stop
        and the store closes."""
        if not self._serving and self._server is None:
            return
        _log.info("collector_stopping", grace_s=grace_s, streams=self.stats().streams)
        self._teardown(grace_s)
        _log.info("collector_stopped")

    def _teardown(self, grace_s: float) -> None:
        self._serving = False
        self._health.enter_graceful_shutdown()  # every service NOT_SERVING
        self._stop.set()
        server, self._server = self._server, None
        # no new RPCs from here on; the calls still open after the grace are cancelled
        shutdown = None if server is None else server.stop(max(grace_s, 0.0))
        self._service.shut_down()  # no new batches either
        idle = self._service.wait_idle(max(grace_s, 0.0))
        if not idle and grace_s > 0:
            _log.warning(
                "collector_batches_unfinished",
                grace_s=grace_s,
                batches=self._service.in_flight(),
                hint="their producers resend them; the store closes after the inserts",
            )
        # Publish streams end now that their batches are done (other calls, such as a
        # health Watch, keep the rest of the grace)
        self._service.cancel_streams()
        if shutdown is not None and not shutdown.wait(grace_s + SERVER_SHUTDOWN_WAIT_S):
            _log.warning("grpc_shutdown_slow", waited_s=grace_s + SERVER_SHUTDOWN_WAIT_S)
        if self._retention_thread is not None:
            self._retention_thread.join(timeout=30)
            self._retention_thread = None
        for runner in self._sinks:
            try:
                runner.stop()
            except Exception as err:
                _log.error("sink_stop_failed", sink=runner.name, error=str(err))
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def __enter__(self) -> CollectorServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: CollectorConfig) -> int:
    """Run a collector until SIGTERM or SIGINT, then stop it cleanly. Returns 0."""
    stop = threading.Event()
    received: list[int] = []

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    server = CollectorServer(config)
    try:
        server.start()
        while not stop.wait(1.0):
            pass
        _log.info("signal_received", signal=signal.Signals(received[0]).name)
        server.stop()
    finally:
        server.stop(grace_s=0)
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
    return 0
