"""The publisher: a thread that streams the spool to the collector over mutual TLS.

One bidirectional ``nodeguard.v1.Collector/Publish`` stream at a time. Batches are read
from the spool in order (one epoch each, ascending seqs, at most ``batch_records``
records and about ``batch_bytes`` bytes), sent as PublishRequest bytes built by
concatenation (no record is parsed or re-encoded, see :mod:`.framing`), and deleted from
the spool only when the collector's ack for them arrives (it acks after a durable
commit). At most ``window`` batches are unacknowledged: a slow collector slows the
publisher, memory stays bounded, and the spool absorbs the rest.

On any stream error the state turns ``disconnected``, the error is kept for ``nodeguard
status``, and after an exponential backoff with full jitter (:mod:`.backoff`, reset by
the first ack) a new stream resends everything still in the spool from the start: the
collector drops what it already has (it deduplicates on node, epoch and seq), so a
record is stored exactly once whatever broke and when.

Records the collector refuses (``PublishAck.rejected``) are acknowledged like the rest
(resending cannot fix them) and counted, persistently, as lost (reason: rejected).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from nodeguard import __version__, log
from nodeguard.collector.identity import IdentityError, identity_from_certificate
from nodeguard.delivery.backoff import Backoff
from nodeguard.delivery.framing import request_header
from nodeguard.delivery.spool import Batch, Spool, SpoolError
from nodeguard.errors import NodeguardError
from nodeguard.events import wire
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

_log = log.get("nodeguard.delivery.publisher")

METHOD = "/nodeguard.v1.Collector/Publish"
DEFAULT_WINDOW = 4
DEFAULT_BATCH_RECORDS = 2000
DEFAULT_BATCH_BYTES = 1 << 20
IDLE_POLL_S = 0.25  # how often an idle stream looks at the spool without a notify()
REJECT_LOG_INTERVAL_S = 10.0
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 20_000),  # a collector that vanished is noticed in ~30 s
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),  # the publisher resends itself
    ("grpc.max_receive_message_length", 1 << 20),  # acks are small
]


class PublisherError(NodeguardError):
    """The collector link is misconfigured (certificates unreadable or not usable)."""


@dataclass(frozen=True, slots=True)
class PublisherTLS:
    """Mutual TLS towards the collector: the CA that signed its server certificate, this
    producer's node certificate and key, and optionally the name to check the server
    certificate against (``grpc.ssl_target_name_override``) when the dialled address is
    not in it."""

    ca: Path
    cert: Path
    key: Path
    server_name: str | None = None
    # how errors name the three files (the agent's config keys, or run's flags)
    names: tuple[str, str, str] = ("collectorTLS.ca", "collectorTLS.cert", "collectorTLS.key")

    def _read(self, path: Path, what: str, key: str) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise PublisherError(
                f"cannot read the {what} {path} ({key}): {err.strerror or err}",
                fix=f"check {key} and the file's permissions",
            ) from err
        if b"-----BEGIN" not in data:
            raise PublisherError(
                f"the {what} {path} ({key}) is not PEM",
                fix=f"point {key} at a PEM file ('-----BEGIN ...')",
            )
        return data

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) as PEM; :class:`PublisherError` naming the file and its
        setting when one cannot be read or is not PEM. Touches no gRPC state (safe before
        a fork)."""
        ca, cert, key = self.names
        return (
            self._read(self.ca, "collector CA certificate", ca),
            self._read(self.cert, "node certificate", cert),
            self._read(self.key, "node key", key),
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials, the files read now (so renewed certificates are picked up
        at the next connection)."""
        ca, cert, key = self.read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def options(self) -> list[tuple[str, Any]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def certificate_node(path: Path, key: str = "collectorTLS.cert") -> str:
    """The node a node certificate names (URI SAN ``nodeguard-node:<name>``, else CN): the
    node the collector will accept records for on that certificate."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as err:
        raise PublisherError(
            f"cannot read the node certificate {path} ({key}): {err.strerror or err}",
            fix=f"check {key} and the file's permissions",
        ) from err
    except ValueError as err:
        raise PublisherError(
            f"the node certificate {path} ({key}) is not a PEM certificate: {err}",
            fix="use the certificate issued for this node (nodeguard collector certs)",
        ) from err
    try:
        return identity_from_certificate(cert).node
    except IdentityError as err:
        raise PublisherError(f"{path} ({key}): {err.message}") from err


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """A snapshot of the link (for ``nodeguard status`` and metrics)."""

    state: str  # connecting | connected | disconnected | stopped
    address: str
    node: str
    epoch: int
    sent: int = 0  # records sent (resends included)
    sent_batches: int = 0
    acked: int = 0  # records acknowledged (stored + duplicates + rejected)
    stored: int = 0  # records the collector stored
    duplicates: int = 0  # records it already had (resends)
    rejected: int = 0  # records it refused (lost), ever (persistent)
    rejected_attempts: int = 0
    in_flight: int = 0  # batches sent and not yet acknowledged
    in_flight_records: int = 0
    spool_records: int = 0
    spool_bytes: int = 0
    spool_oldest_age_s: float | None = None
    spool_max_bytes: int = 0
    spool_path: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)  # priority -> records, ever
    dropped_attempts: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_error_ms: int | None = None
    last_ack_ms: int | None = None
    reconnects: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def dropped_attempts_total(self) -> int:
        return sum(self.dropped_attempts.values())


class _Stream:
    """One Publish stream's bookkeeping."""

    def __init__(self) -> None:
        self.inflight: deque[Batch] = deque()
        self.cursor = 0  # last chunk id sent on this stream
        self.closed = False
        self.acks = 0


class _ProtocolError(Exception):
    pass


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Publisher:
    """Streams ``spool`` to the collector at ``address`` (``host:port``) as ``node``.

    ``tls`` None dials without TLS (only a collector configured ``insecure`` on loopback
    accepts that). :meth:`notify` after appending wakes an idle stream at once."""

    def __init__(
        self,
        spool: Spool,
        address: str,
        *,
        node: str,
        tls: PublisherTLS | None,
        producer: str = "agent",
        window: int = DEFAULT_WINDOW,
        batch_records: int = DEFAULT_BATCH_RECORDS,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        backoff: Backoff | None = None,
    ) -> None:
        if window < 1 or batch_records < 1 or batch_bytes < 1:
            raise ValueError("window, batch_records and batch_bytes must be >= 1")
        self.spool = spool
        self.address = address
        self.node = node
        self.tls = tls
        self.producer = producer
        self.window = window
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        self.backoff = backoff or Backoff()
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._call: Any = None
        self._headers: dict[int, bytes] = {}
        self._state = "connecting"
        self._channel_ready = False
        self._stream: _Stream | None = None
        self._sent = self._sent_batches = 0
        self._acked = self._stored = self._duplicates = 0
        self._last_error: str | None = None
        self._last_error_ms: int | None = None
        self._last_ack_ms: int | None = None
        self._reconnects = 0
        self._failures = 0  # consecutive failed connections (for logging)
        self._down_since: float | None = None
        self._last_reject_log = float("-inf")
        self._unacked_at_close = 0

    # ---------------------------------------------------------------- lifecycle --

    def start(self) -> None:
        """Check the certificates (a clear error now rather than a failing stream later)
        and start the thread."""
        if self._thread is not None:
            raise RuntimeError("the publisher is already started")
        if self.tls is not None:
            self.tls.read()
        self._thread = threading.Thread(target=self._run, name="nodeguard-publisher", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def notify(self) -> None:
        """New records are in the spool."""
        self._wake.set()

    def wait_drained(self, timeout: float) -> bool:
        """Wait until every spooled record is acknowledged (True), or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                stream = self._stream
                idle = stream is None or not stream.inflight
                if self.spool.records == 0 and idle:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))

    def stop(self, timeout: float = 5.0) -> None:
        """End the stream and the thread. What is not acknowledged stays in the spool."""
        self._stopping.set()
        self._wake.set()
        call = self._call
        if call is not None:
            call.cancel()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            self._state = "stopped"

    # ------------------------------------------------------------------- status --

    def stats(self) -> PublisherStats:
        spool = self.spool.stats()
        now = _now_ms()
        with self._cond:
            stream = self._stream
            inflight = list(stream.inflight) if stream is not None else []
            return PublisherStats(
                state=self._state,
                address=self.address,
                node=self.node,
                epoch=spool.epoch,
                sent=self._sent,
                sent_batches=self._sent_batches,
                acked=self._acked,
                stored=self._stored,
                duplicates=self._duplicates,
                rejected=spool.rejected,
                rejected_attempts=spool.rejected_attempts,
                in_flight=len(inflight),
                in_flight_records=sum(b.records for b in inflight),
                spool_records=spool.records,
                spool_bytes=spool.bytes,
                spool_oldest_age_s=(
                    max(0.0, (now - spool.oldest_ms) / 1000) if spool.oldest_ms else None
                ),
                spool_max_bytes=spool.max_bytes,
                spool_path=spool.path,
                dropped=spool.dropped,
                dropped_attempts=spool.dropped_attempts,
                last_error=self._last_error,
                last_error_ms=self._last_error_ms,
                last_ack_ms=self._last_ack_ms,
                reconnects=self._reconnects,
            )

    # ----------------------------------------------------------------- the loop --

    def _run(self) -> None:
        while not self._stopping.is_set():
            error = self._connect_once()
            if self._stopping.is_set():
                break
            self._note_failure(error)
            delay = self.backoff.next_delay()
            _log.debug("collector_retry", address=self.address, in_s=round(delay, 3))
            self._stopping.wait(delay)
            if not self._stopping.is_set():
                with self._cond:
                    self._reconnects += 1

    def _channel(self) -> grpc.Channel:
        options = list(CHANNEL_OPTIONS)
        if self.tls is None:
            return grpc.insecure_channel(self.address, options)
        credentials = self.tls.credentials()
        return grpc.secure_channel(self.address, credentials, options + self.tls.options())

    def _on_connectivity(self, state: grpc.ChannelConnectivity) -> None:
        with self._cond:
            ready = state == grpc.ChannelConnectivity.READY
            self._channel_ready = ready
            stream = self._stream
            if ready and stream is not None and not stream.closed and self._state != "connected":
                self._set_connected()
            self._cond.notify_all()

    def _set_connected(self) -> None:
        """(lock held)"""
        self._state = "connected"
        down = None if self._down_since is None else time.monotonic() - self._down_since
        _log.info(
            "collector_connected",
            address=self.address,
            node=self.node,
            after_s=None if down is None else round(down, 1),
            spool_records=self.spool.records,
        )
        self._down_since = None
        self._failures = 0

    def _connect_once(self) -> str:
        """One stream, until it breaks. Returns the error that ended it."""
        stream = _Stream()
        with self._cond:
            self._state = "connecting"
            self._channel_ready = False
            self._stream = stream
        try:
            channel = self._channel()
        except PublisherError as err:
            stream.closed = True
            return err.message
        try:
            channel.subscribe(self._on_connectivity, try_to_connect=True)
            publish = channel.stream_stream(
                METHOD, request_serializer=None, response_deserializer=pb.PublishAck.FromString
            )
            call = publish(self._requests(stream), wait_for_ready=False)
            self._call = call
            if self._stopping.is_set():
                call.cancel()
            try:
                for ack in call:
                    self._on_ack(stream, ack)
                return "the collector ended the stream"
            except grpc.RpcError as err:
                return _rpc_error_text(err)
            except _ProtocolError as err:
                call.cancel()
                return str(err)
            except SpoolError as err:
                call.cancel()
                return f"spool: {err.message}"
        finally:
            with self._cond:
                stream.closed = True
                # Unacknowledged batches stay in the spool; the next stream resends them.
                self._unacked_at_close = sum(b.records for b in stream.inflight)
                stream.inflight.clear()
                self._cond.notify_all()
            self._call = None
            with contextlib.suppress(Exception):
                channel.unsubscribe(self._on_connectivity)
            _await_poller_exit(channel)
            channel.close()

    def _note_failure(self, error: str) -> None:
        with self._cond:
            was = self._state
            self._state = "disconnected"
            self._last_error = error
            self._last_error_ms = _now_ms()
            unacked = self._unacked_at_close
            self._failures += 1
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            self._cond.notify_all()
        fields = {
            "address": self.address,
            "error": error,
            "was": was,
            "unacked_records": unacked,
            "spool_records": self.spool.records,
            "failures": self._failures,
        }
        if first:
            _log.warning("collector_disconnected", **fields)
        else:  # a long outage retries every <= 30 s: not worth a warning each time
            _log.debug("collector_still_down", **fields)

    def _header(self, epoch: int) -> bytes:
        header = self._headers.get(epoch)
        if header is None:
            header = request_header(self.node, epoch, self.producer, __version__)
            self._headers[epoch] = header
        return header

    def _requests(self, stream: _Stream) -> Iterator[bytes]:
        """The request side (runs on gRPC's thread): the next batch whenever the window
        has room and the spool has one. Nothing is read before the connection is up: a
        batch handed over counts as sent (protected from drops until acknowledged)."""
        with self._cond:
            while not self._channel_ready and not stream.closed and not self._stopping.is_set():
                self._cond.wait(0.5)
        while True:
            with self._cond:
                while (
                    len(stream.inflight) >= self.window
                    and not stream.closed
                    and not self._stopping.is_set()
                ):
                    self._cond.wait(0.5)
                if stream.closed or self._stopping.is_set():
                    return
                cursor = stream.cursor
            self._wake.clear()
            try:
                batch = self.spool.next_batch(
                    cursor, max_records=self.batch_records, max_bytes=self.batch_bytes
                )
            except SpoolError as err:
                _log.error("spool_read_failed", error=err.message)
                batch = None
            if batch is None:
                self._wake.wait(IDLE_POLL_S)
                continue
            data = self._header(batch.epoch) + batch.entries
            with self._cond:
                if stream.closed:
                    return
                stream.inflight.append(batch)
                stream.cursor = batch.last_id
                self._sent += batch.records
                self._sent_batches += 1
            yield data

    def _on_ack(self, stream: _Stream, ack: pb.PublishAck) -> None:
        with self._cond:
            if not stream.inflight:
                raise _ProtocolError(
                    f"the collector acknowledged epoch {ack.epoch} seqs {ack.first_seq}-"
                    f"{ack.last_seq}, but no batch is in flight"
                )
            batch = stream.inflight[0]
        if (ack.epoch, ack.first_seq, ack.last_seq) != (
            batch.epoch,
            batch.first_seq,
            batch.last_seq,
        ):
            raise _ProtocolError(
                f"the collector acknowledged epoch {ack.epoch} seqs {ack.first_seq}-"
                f"{ack.last_seq}; expected epoch {batch.epoch} seqs {batch.first_seq}-"
                f"{batch.last_seq} (acks come in order)"
            )
        if ack.rejected:
            self._note_rejected(batch, ack)
        self.spool.ack(batch)
        with self._cond:
            stream.inflight.popleft()
            stream.acks += 1
            self._acked += batch.records
            self._stored += ack.stored
            self._duplicates += ack.duplicates
            self._last_ack_ms = _now_ms()
            if self._state != "connected":
                self._set_connected()
            self._cond.notify_all()
        self.backoff.reset()

    def _note_rejected(self, batch: Batch, ack: pb.PublishAck) -> None:
        rejected = min(int(ack.rejected), batch.records)
        attempts = rejected_attempts(batch, rejected, self.node)
        self.spool.note_rejected(rejected, attempts)
        now = time.monotonic()
        if now - self._last_reject_log >= REJECT_LOG_INTERVAL_S:
            self._last_reject_log = now
            _log.warning(
                "collector_rejected_records",
                address=self.address,
                epoch=batch.epoch,
                first_seq=batch.first_seq,
                last_seq=batch.last_seq,
                rejected=rejected,
                attempts=attempts,
                reason=ack.reject_reason,
            )


def rejected_attempts(batch: Batch, rejected: int, node: str) -> int:
    """The violation attempts ``rejected`` records of ``batch`` stood for. Exact when the
    whole batch was refused, or when exactly ``rejected`` of its violations fail the
    checks the collector makes (a complete record, naming the publishing node); otherwise
    the batch's average per record. Only runs when something was rejected."""
    if rejected >= batch.records:
        return batch.attempts
    request = pb.PublishRequest.FromString(batch.entries)
    invalid = 0
    attempts = 0
    for record in request.records:
        if record.WhichOneof("body") != "violation":
            continue
        v = record.violation
        try:
            wire.from_proto(v)
            bad = v.HasField("node") and v.node != node
        except wire.WireFormatError:
            bad = True
        if bad:
            invalid += 1
            attempts += v.count
    if invalid == rejected:
        return attempts
    return round(batch.attempts * rejected / batch.records)


def _rpc_error_text(err: grpc.RpcError) -> str:
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else None
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {details or 'no details'}"


def _await_poller_exit(channel: grpc.Channel, limit_s: float = 0.5) -> None:
    """Give grpcio's connectivity poller thread time to see the unsubscribe and end.

    The poller wakes every 0.2 s; closing the channel while it waits makes it die with an
    unhandled "Cannot monitor channel state: Channel closed!" (a traceback on stderr, seen
    in CI). grpcio has no public way to join it: its flag is read defensively, and without
    it the wait is one poll period.
    """
    state = getattr(channel, "_connectivity_state", None)
    if state is None or not hasattr(state, "polling"):
        time.sleep(0.25)
        return
    deadline = time.monotonic() + limit_s
    while getattr(state, "polling", False) and time.monotonic() < deadline:
        time.sleep(0.01)
