"""Protobuf framing of stream records by hand, so each record is serialized exactly once.

A ``nodeguard.v1.Record`` is stored in the spool as its final wire bytes, already framed
as one ``PublishRequest.records`` entry (field 3, length-delimited). A PublishRequest is
then its small header (node, epoch, producer, version) followed by the concatenated
entries of a batch: protobuf fields may come in any order and repeated fields
concatenate, so the collector parses exactly what ``pb.PublishRequest(records=[...])``
would have produced, while the producer never parses or re-encodes a record.

Bodies (the ``Record.body`` oneof) are framed once when a record is made
(:func:`violation_body`, :func:`loss_body`, :func:`telemetry_body`); the sequence number
and the priority are prepended when the spool assigns the seq (:func:`record_entry`).
"""

from __future__ import annotations

from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

# Wire tags: (field number << 3) | wire type (0 varint, 2 length-delimited). Written
# inline below: 0x08 Record.seq (1), 0x1a PublishRequest.records (3), 0x52
# Record.violation (10).
_TAG_PRIORITY = b"\x10"  # Record.priority = 2
_TAG_LOSS = b"\x5a"  # Record.loss = 11
_TAG_TELEMETRY = b"\x62"  # Record.telemetry = 12

_SMALL = [bytes((i,)) for i in range(128)]

PRIORITIES: tuple[int, ...] = (
    pb.PRIORITY_TELEMETRY,
    pb.PRIORITY_AUDIT,
    pb.PRIORITY_VIOLATION,
    pb.PRIORITY_LOSS,
)
_PRIORITY_FIELD: dict[int, bytes] = {p: _TAG_PRIORITY + _SMALL[p] for p in PRIORITIES}


def varint(value: int) -> bytes:
    """The protobuf base-128 varint of a non-negative integer."""
    if value < 0x80:
        return _SMALL[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def violation_body(message: pb.Violation) -> bytes:
    """``Record.violation`` (field 10) of a serialized violation."""
    return violation_body_bytes(message.SerializeToString())


def violation_body_bytes(data: bytes) -> bytes:
    """``Record.violation`` of an already serialized ``pb.Violation``."""
    return b"\x52%b%b" % (varint(len(data)), data)


def loss_body(message: pb.Loss) -> bytes:
    data = message.SerializeToString()
    return _TAG_LOSS + varint(len(data)) + data


def telemetry_body(message: pb.Telemetry) -> bytes:
    data = message.SerializeToString(deterministic=True)
    return _TAG_TELEMETRY + varint(len(data)) + data


def record_entry(seq: int, priority: int, body: bytes) -> bytes:
    """One ``PublishRequest.records`` entry: the Record (seq, priority, body) framed as
    field 3. ``priority`` is one of :data:`PRIORITIES`."""
    s = varint(seq)
    field = _PRIORITY_FIELD[priority]
    return b"\x1a%b\x08%b%b%b" % (varint(len(s) + len(field) + len(body) + 1), s, field, body)


def request_header(node: str, epoch: int, producer: str, version: str) -> bytes:
    """The PublishRequest fields other than ``records`` (prepend to a batch's entries)."""
    return pb.PublishRequest(
        node=node, epoch=epoch, producer=producer, version=version
    ).SerializeToString()
