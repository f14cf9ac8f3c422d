"""The ``nodeguard.v1.Collector/Publish`` servicer: one stream per producer, one ack per
batch, sent only after the batch is committed to the store.

Flow control: a stream is served by one thread that handles one batch at a time. It
reads the next request from gRPC only after the previous batch is stored and its ack
written, so a producer that sends faster than the store commits fills gRPC's HTTP/2
receive window and then blocks in its own send: the collector never buffers more than
one decoded batch per stream.

Refusals end the stream with a gRPC status and are counted by reason (see
:class:`CollectorStats`); the server keeps serving every other stream.

Shutdown (:meth:`PublishService.shut_down`, then :meth:`PublishService.wait_idle`): a batch
whose insert is under way finishes and is acknowledged; every batch that arrives after
ends its stream with UNAVAILABLE (reason ``shutting_down``) without touching the store, so
the producer sends it again to the next collector (or this one after its restart).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from nodeguard import log
from nodeguard.collector.identity import IdentityError, identity_from_auth_context
from nodeguard.collector.records import InsertResult
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

_log = log.get("nodeguard.collector.service")

SERVICE = "nodeguard.v1.Collector"
METHOD = "Publish"

# Rejected-record reasons (metric label values).
REJECT_INVALID_RECORD = "invalid_record"  # the store refused the record (see the ack)
REJECT_EPOCH = "batch_epoch"  # epoch 0
REJECT_ORDER = "batch_order"  # seqs not strictly ascending

# Refusal reason of a batch that arrives while the collector stops (metric label value).
REFUSE_SHUTTING_DOWN = "shutting_down"

# How often one stream may log batch_rejected at warning.
_REJECT_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class CollectorStats:
    """The collector's counters since start (a snapshot)."""

    batches: int = 0  # acknowledged batches
    stored: int = 0  # records stored
    duplicates: int = 0  # records already stored (same node, epoch, seq)
    rejected: dict[str, int] = field(default_factory=dict)  # records, by reason
    refused: dict[str, int] = field(default_factory=dict)  # streams, by reason
    # streams whose receive failed: the producer cancelled, its connection broke, or it
    # sent a message over limits.maxMessageBytes (gRPC answers that one itself with
    # RESOURCE_EXHAUSTED and reports all three alike to the server)
    broken: int = 0
    streams: int = 0  # Publish streams open now
    producers: int = 0  # open streams that named their node (connected producers)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = 0
        self.stored = 0
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.broken = 0
        self.streams = 0
        self.producers = 0

    def snapshot(self) -> CollectorStats:
        with self.lock:
            return CollectorStats(
                batches=self.batches,
                stored=self.stored,
                duplicates=self.duplicates,
                rejected=dict(self.rejected),
                refused=dict(self.refused),
                broken=self.broken,
                streams=self.streams,
                producers=self.producers,
            )


@dataclass(frozen=True, slots=True)
class Malformed:
    """What the request deserializer hands the servicer for bytes that are not a
    PublishRequest (raising there would end the call with INTERNAL)."""

    size: int
    error: str


def deserialize_request(data: bytes) -> pb.PublishRequest | Malformed:
    try:
        return pb.PublishRequest.FromString(data)
    except DecodeError as err:
        return Malformed(len(data), str(err) or "cannot be decoded")


class PublishService:
    """The Publish handler. ``insert(node, epoch, records)`` commits one batch and returns
    its :class:`InsertResult`; ``require_identity``: take the node from the client
    certificate (mTLS) rather than from the request (insecure, loopback only)."""

    def __init__(
        self,
        insert: Callable[[str, int, Sequence[pb.Record]], InsertResult],
        *,
        require_identity: bool,
        max_records_per_batch: int,
        max_streams: int,
    ) -> None:
        self._insert = insert
        self._require_identity = require_identity
        self._max_records = max_records_per_batch
        self._max_streams = max_streams
        self._counters = _Counters()
        self._flow = threading.Condition()  # guards _closing and _in_flight
        self._closing = False
        self._in_flight = 0  # batches between "taken" and "ack sent"
        self._contexts: set[grpc.ServicerContext] = set()  # of the open streams

    def stats(self) -> CollectorStats:
        return self._counters.snapshot()

    # ------------------------------------------------------------------- shutdown --

    def shut_down(self) -> None:
        """Take no new batch: from now on a stream that sends one is ended with
        UNAVAILABLE (the batch is not stored). Batches under way go on (wait_idle)."""
        with self._flow:
            self._closing = True

    def in_flight(self) -> int:
        """Batches taken and not yet acknowledged."""
        with self._flow:
            return self._in_flight

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no batch is under way (its insert done and its ack handed to gRPC),
        at most ``timeout_s``; True when none is. Call after :meth:`shut_down`."""
        deadline = time.monotonic() + timeout_s
        with self._flow:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._flow.wait(remaining)
            return True

    def cancel_streams(self) -> None:
        """Cancel every open Publish stream (after :meth:`shut_down`): their handlers
        waiting for a request end."""
        with self._flow:
            contexts = list(self._contexts)
        for context in contexts:
            context.cancel()

    def _take_batch(self) -> bool:
        with self._flow:
            if self._closing:
                return False
            self._in_flight += 1
            return True

    def _batch_done(self) -> None:
        with self._flow:
            self._in_flight -= 1
            if not self._in_flight:
                self._flow.notify_all()

    def method_handler(self) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(
            self.publish,
            request_deserializer=deserialize_request,
            response_serializer=pb.PublishAck.SerializeToString,
        )

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD: self.method_handler()})

    # ----------------------------------------------------------------- the stream --

    def _refuse(
        self,
        context: grpc.ServicerContext,
        reason: str,
        code: grpc.StatusCode,
        message: str,
        **fields: Any,
    ) -> NoReturn:
        with self._counters.lock:
            self._counters.refused[reason] += 1
        if reason == REFUSE_SHUTTING_DOWN:  # expected, one per open stream: not a warning
            _log.info("stream_refused", reason=reason, peer=context.peer(), **fields)
        else:
            _log.warning(
                "stream_refused", reason=reason, peer=context.peer(), error=message, **fields
            )
        context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def publish(
        self, requests: Iterator[pb.PublishRequest | Malformed], context: grpc.ServicerContext
    ) -> Iterator[pb.PublishAck]:
        peer = context.peer()
        cert_node: str | None = None
        if self._require_identity:
            try:
                cert_node = identity_from_auth_context(context.auth_context()).node
            except IdentityError as err:
                self._refuse(context, err.reason, grpc.StatusCode.UNAUTHENTICATED, err.message)
        with self._counters.lock:
            full = self._counters.streams >= self._max_streams
            if not full:
                self._counters.streams += 1
        if full:
            self._refuse(
                context,
                "too_many_streams",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the collector serves at most {self._max_streams} Publish streams "
                "(limits.maxStreams) and all are in use; retry later",
                node=cert_node,
            )
        stream = _Stream(peer=peer, cert_node=cert_node)
        with self._flow:
            self._contexts.add(context)
        try:
            yield from self._serve(stream, requests, context)
        finally:
            if stream.end == "open":  # closed by gRPC while an ack was being sent
                stream.end = "shutdown" if self._closing else "cancelled"
            with self._flow:
                self._contexts.discard(context)
            with self._counters.lock:
                self._counters.streams -= 1
                if stream.node is not None:
                    self._counters.producers -= 1
            if stream.node is not None:
                _log.info(
                    "producer_disconnected",
                    node=stream.node,
                    peer=peer,
                    batches=stream.batches,
                    stored=stream.stored,
                    duplicates=stream.duplicates,
                    rejected=stream.rejected,
                    end=stream.end,
                )

    def _serve(
        self,
        stream: _Stream,
        requests: Iterator[pb.PublishRequest | Malformed],
        context: grpc.ServicerContext,
    ) -> Iterator[pb.PublishAck]:
        while True:
            try:
                request = next(requests)
            except StopIteration:
                stream.end = "closed"
                return
            except grpc.RpcError:
                if self._closing:  # cancelled by the server's stop
                    stream.end = "shutdown"
                    return
                stream.end = "broken"
                with self._counters.lock:
                    self._counters.broken += 1
                return
            if isinstance(request, Malformed):
                stream.end = "malformed"
                self._refuse(
                    context,
                    "malformed",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"malformed PublishRequest: {request.size} bytes that are not a "
                    f"nodeguard.v1.PublishRequest ({request.error}); check that the producer "
                    "speaks nodeguard.v1",
                    node=stream.node,
                )
            self._check_node(stream, request, context)
            if not self._take_batch():
                stream.end = "shutdown"
                self._refuse(
                    context,
                    REFUSE_SHUTTING_DOWN,
                    grpc.StatusCode.UNAVAILABLE,
                    "the collector is shutting down and did not store this batch; send it "
                    "again (reconnect to another collector, or to this one after its restart)",
                    node=stream.node,
                )
            try:
                ack = self._batch(stream, request, context)
                # the generator resumes (or is closed) once gRPC has sent the ack
                yield ack
            finally:
                self._batch_done()

    def _check_node(
        self, stream: _Stream, request: pb.PublishRequest, context: grpc.ServicerContext
    ) -> None:
        node = request.node
        if stream.cert_node is not None and node != stream.cert_node:
            stream.end = "wrong_node"
            self._refuse(
                context,
                "wrong_node",
                grpc.StatusCode.PERMISSION_DENIED,
                f"PublishRequest for node {node!r} on a connection whose client certificate "
                f"belongs to node {stream.cert_node!r}; a node may only publish its own "
                "events (use that node's certificate)",
                node=stream.cert_node,
                claimed=node,
            )
        if not node:
            stream.end = "no_node"
            self._refuse(
                context,
                "no_node",
                grpc.StatusCode.INVALID_ARGUMENT,
                "PublishRequest without node; set PublishRequest.node to the producer's node name",
            )
        if stream.node is None:
            stream.node = node
            with self._counters.lock:
                self._counters.producers += 1
            _log.info(
                "producer_connected",
                node=node,
                peer=stream.peer,
                epoch=request.epoch,
                producer=request.producer,
                version=request.version,
            )
        elif node != stream.node:
            stream.end = "node_changed"
            self._refuse(
                context,
                "node_changed",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"PublishRequest for node {node!r} on a stream that publishes for "
                f"{stream.node!r}; open one stream per node",
                node=stream.node,
                claimed=node,
            )

    def _batch_problem(self, request: pb.PublishRequest) -> tuple[str, str] | None:
        records = request.records
        if request.epoch == 0:
            return REJECT_EPOCH, "batch with epoch 0; the producer epoch must be > 0"
        previous: int | None = None
        for record in records:
            if previous is not None and record.seq <= previous:
                return REJECT_ORDER, (
                    f"batch seqs are not strictly ascending ({previous} then {record.seq})"
                )
            previous = record.seq
        return None

    def _batch(
        self, stream: _Stream, request: pb.PublishRequest, context: grpc.ServicerContext
    ) -> pb.PublishAck:
        records = request.records
        node = stream.node
        assert node is not None
        ack = pb.PublishAck(epoch=request.epoch)
        if records:
            ack.first_seq = records[0].seq
            ack.last_seq = records[-1].seq
        if len(records) > self._max_records:
            # A configuration mismatch, not bad records: refuse the stream without an ack
            # so the producer keeps them spooled (its status shows this error) until
            # someone lowers its batch size or raises this limit.
            self._refuse(
                context,
                "batch_too_large",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch of {len(records)} records exceeds limits.maxRecordsPerBatch "
                f"({self._max_records}): nothing of it was stored; set the producer's "
                f"spool.batchRecords to at most {self._max_records} or raise the limit",
                node=node,
            )
        bad = self._batch_problem(request)
        if bad is not None:
            reason, message = bad
            result = InsertResult(0, 0, len(records), message, 0)
            self._note_rejects(stream, node, request, {reason: len(records)}, message)
        elif records:
            try:
                result = self._insert(node, request.epoch, records)
            except Exception as err:
                if self._closing:  # the store closed under a batch that outlived the grace
                    stream.end = "shutdown"
                    self._refuse(
                        context,
                        REFUSE_SHUTTING_DOWN,
                        grpc.StatusCode.UNAVAILABLE,
                        "the collector is shutting down and did not store this batch; "
                        "send it again",
                        node=node,
                        error=str(err),
                    )
                stream.end = "store_error"
                _log.error("store_insert_failed", node=node, epoch=request.epoch, error=str(err))
                self._refuse(
                    context,
                    "store_error",
                    grpc.StatusCode.UNAVAILABLE,
                    f"the collector could not store the batch ({err}); retry later",
                    node=node,
                )
            if result.rejected:
                self._note_rejects(
                    stream,
                    node,
                    request,
                    {REJECT_INVALID_RECORD: result.rejected},
                    result.reject_reason or "invalid record",
                )
        else:
            result = InsertResult(0, 0, 0, None, 0)
        ack.stored = result.stored
        ack.duplicates = result.duplicates
        ack.rejected = result.rejected
        if result.reject_reason:
            ack.reject_reason = result.reject_reason
        stream.batches += 1
        stream.stored += result.stored
        stream.duplicates += result.duplicates
        stream.rejected += result.rejected
        with self._counters.lock:
            self._counters.batches += 1
            self._counters.stored += result.stored
            self._counters.duplicates += result.duplicates
        _log.debug(
            "batch_stored",
            node=node,
            epoch=request.epoch,
            first_seq=ack.first_seq,
            last_seq=ack.last_seq,
            stored=result.stored,
            duplicates=result.duplicates,
            rejected=result.rejected,
        )
        return ack

    def _note_rejects(
        self,
        stream: _Stream,
        node: str,
        request: pb.PublishRequest,
        by_reason: dict[str, int],
        message: str,
    ) -> None:
        with self._counters.lock:
            for reason, count in by_reason.items():
                self._counters.rejected[reason] += count
        now = time.monotonic()
        if now - stream.last_reject_log < _REJECT_LOG_INTERVAL_S:
            stream.rejects_unlogged += 1
            return
        _log.warning(
            "batch_rejected",
            node=node,
            epoch=request.epoch,
            records=len(request.records),
            rejected=sum(by_reason.values()),
            reason=next(iter(by_reason)),
            error=message,
            unlogged_before=stream.rejects_unlogged,
        )
        stream.last_reject_log = now
        stream.rejects_unlogged = 0


@dataclass
class _Stream:
    """One Publish stream's state."""

    peer: str
    cert_node: str | None
    node: str | None = None
    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    end: str = "open"
    last_reject_log: float = float("-inf")
    rejects_unlogged: int = 0
