"""The producer's on-disk spool (real SQLite files in tmp_path), its hand-made protobuf
framing, and the producer front end that feeds it (no collector: see
tests/collector/test_publisher.py for delivery)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodeguard.delivery import spool as spool_mod
from nodeguard.delivery.framing import (
    loss_body,
    record_entry,
    request_header,
    telemetry_body,
    varint,
    violation_body,
)
from nodeguard.delivery.producer import Producer
from nodeguard.delivery.spool import Batch, Records, Spool, SpoolError, new_epoch
from nodeguard.events.model import EgressDetail, PolicyRef, ProcessInfo, Violation, WorkloadRef
from nodeguard.events.wire import from_proto, to_proto
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

NODE = "node-a"
T0 = 1_735_725_600_000
V, A, T, L = pb.PRIORITY_VIOLATION, pb.PRIORITY_AUDIT, pb.PRIORITY_TELEMETRY, pb.PRIORITY_LOSS


def violation(i: int, *, verdict: str = "blocked", count: int = 1, node: str = NODE) -> Violation:
    """A complete egress violation; ``i`` makes it unique."""
    return Violation(
        uid=f"0190a1b2-c3d4-7e5f-8a9b-{i:012x}",
        sequence=i,
        kind="egress",
        time_ms=T0 + i,
        first_time_ms=T0 + i,
        count=count,
        verdict="audited" if verdict == "audited" else "blocked",
        cgroup_id=4242,
        process=ProcessInfo(pid=100, tid=100, name="agent", path="/usr/bin/python3"),
        policy=PolicyRef(
            name="research-agent",
            uid="u-1",
            version="1",
            mode="audit" if verdict == "audited" else "enforce",
        ),
        egress=EgressDetail(ip="203.0.113.7", port=443, protocol="tcp", family=4, hook="connect4"),
        workload=WorkloadRef(namespace="agents", pod_name="research-0", pod_uid="p-1"),
        node=node,
    )


def body(i: int, **kw: object) -> bytes:
    return violation_body(to_proto(violation(i, **kw)))  # type: ignore[arg-type]


def telemetry(i: int) -> bytes:
    m = pb.Telemetry(time_ms=T0 + i, state="ready")
    m.counters["records"] = i
    return telemetry_body(m)


def decode(batch: Batch) -> list[pb.Record]:
    """The batch as the collector parses it (header + the spooled entries)."""
    request = pb.PublishRequest.FromString(
        request_header(NODE, batch.epoch, "agent", "0") + batch.entries
    )
    assert request.node == NODE and request.epoch == batch.epoch
    return list(request.records)


def everything(spool: Spool) -> list[tuple[int, pb.Record]]:
    return [(b.epoch, r) for b in spool.pending() for r in decode(b)]


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def open_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Spool]]:
    """Spools on a fixed clock, whose new epochs are the clock's ms exactly (the random
    digits new_epoch adds are tested on their own)."""
    monkeypatch.setattr(spool_mod, "new_epoch", lambda now_ms: now_ms)
    opened: list[Spool] = []

    def _open(name: str = "spool.db", **kw: object) -> Spool:
        kw.setdefault("clock_ms", Clock(T0))
        spool = Spool(tmp_path / name, **kw)  # type: ignore[arg-type]
        opened.append(spool)
        return spool

    yield _open
    for spool in opened:
        spool.close()  # a no-op when the test closed it


# ---------------------------------------------------------------------- framing --


@pytest.mark.parametrize("n", [1, 127, 128, 300, 16383, 16384, 2**35 + 7, 2**63 - 1])
def test_varint_matches_protobuf(n: int) -> None:
    # field 1 (seq) of a Record is a varint: compare with protobuf's own encoding
    assert b"\x08" + varint(n) == pb.Record(seq=n).SerializeToString()


def test_hand_framed_records_parse_as_protobuf_would_build_them() -> None:
    v = to_proto(violation(7, count=3))
    loss = pb.Loss(reason=pb.LOSS_REASON_KERNEL, priority=V, count=5, total=9, time_ms=T0)
    entries = (
        record_entry(1, V, violation_body(v))
        + record_entry(200, L, loss_body(loss))
        + record_entry(70000, T, telemetry_body(pb.Telemetry(time_ms=T0, state="ready")))
    )
    built = pb.PublishRequest(
        node=NODE,
        epoch=T0,
        producer="agent",
        version="1.2",
        records=[
            pb.Record(seq=1, priority=V, violation=v),
            pb.Record(seq=200, priority=L, loss=loss),
            pb.Record(seq=70000, priority=T, telemetry=pb.Telemetry(time_ms=T0, state="ready")),
        ],
    )
    parsed = pb.PublishRequest.FromString(request_header(NODE, T0, "agent", "1.2") + entries)
    assert parsed == built
    assert from_proto(parsed.records[0].violation) == violation(7, count=3)


# ------------------------------------------------------------------ append/ack --


def test_append_pending_ack(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool()
    assert spool.epoch == T0 and spool.records == 0
    result = spool.append({V: [(body(i), 1) for i in range(5)], T: [(telemetry(1), 0)]})
    assert (result.appended, result.dropped) == (6, 0)
    spool.append({V: [(body(i), 2) for i in range(5, 8)]})
    assert spool.records == 9 and spool.bytes > 0
    records = everything(spool)
    # one append: violations first, then telemetry, each a contiguous seq range
    assert [(r.seq, r.priority) for _, r in records] == [
        (1, V), (2, V), (3, V), (4, V), (5, V), (6, T), (7, V), (8, V), (9, V)
    ]  # fmt: skip
    assert all(epoch == T0 for epoch, _ in records)
    assert [from_proto(r.violation).sequence for _, r in records if r.priority == V] == [
        0, 1, 2, 3, 4, 5, 6, 7
    ]  # fmt: skip
    assert records[5][1].telemetry.counters["records"] == 1
    batches = spool.pending()
    # a batch never repeats a seq: 1-5 | 6 | 7-9 could merge as 1-5 + 6 + 7-9 (ascending)
    assert [(b.first_seq, b.last_seq, b.records) for b in batches] == [(1, 9, 9)]
    assert batches[0].attempts == 5 * 1 + 3 * 2
    assert spool.ack(batches[0]) == 9
    assert spool.records == 0 and spool.bytes == 0
    assert spool.pending() == []


def test_batches_respect_the_record_limit_and_ascending_seqs(
    open_spool: Callable[..., Spool],
) -> None:
    spool = open_spool(chunk_records=4)
    spool.append({V: [(body(i), 1) for i in range(10)], T: [(telemetry(0), 0)]})
    spool.append({A: [(body(i, verdict="audited"), 1) for i in range(3)]})
    first = spool.next_batch(0, max_records=8)
    assert first is not None
    assert (first.first_seq, first.last_seq, first.records) == (1, 8, 8)  # two chunks of 4
    second = spool.next_batch(first.last_id, max_records=8)
    assert second is not None
    assert (second.first_seq, second.last_seq) == (9, 14)  # 9-10, telemetry 11, audit 12-14
    assert [r.priority for r in decode(second)] == [V, V, T, A, A, A]
    assert spool.next_batch(second.last_id) is None
    spool.ack(first)
    assert [b.first_seq for b in spool.pending()] == [9, 12]  # 4 records a batch by default


def test_restart_keeps_records_and_opens_a_new_epoch(open_spool: Callable[..., Spool]) -> None:
    clock = Clock(T0)
    spool = open_spool(clock_ms=clock)
    spool.append({V: [(body(i), 1) for i in range(3)]})
    spool.close()
    again = open_spool(clock_ms=clock)  # same millisecond: the epoch still moves on
    assert again.epoch == T0 + 1
    assert again.records == 3
    again.append({V: [(body(i), 1) for i in range(3, 5)]})
    clock.ms = T0 - 5000  # a clock that went back
    again.close()
    third = open_spool(clock_ms=clock)
    assert third.epoch == T0 + 2
    batches = third.pending()
    # the old epochs' records, under their own epochs and seqs, never mixed in one batch
    assert [(b.epoch, b.first_seq, b.last_seq) for b in batches] == [(T0, 1, 3), (T0 + 1, 1, 2)]
    third.append({V: [(body(9), 1)]})
    assert [(b.epoch, b.first_seq) for b in third.pending()][-1] == (T0 + 2, 1)


def test_an_explicit_epoch_continues_its_sequence(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool(epoch=42)
    spool.append({V: [(body(1), 1), (body(2), 1)]})
    spool.close()
    again = open_spool(epoch=42)
    assert again.next_seq == 3


# ------------------------------------------------------------------------ drops --


def _fill(spool: Spool) -> None:
    """100 telemetry, 100 audited (2 attempts each), 100 blocked (3 attempts each), in
    appends of 25 per priority."""
    for round_ in range(4):
        base = round_ * 25
        spool.append(
            {
                T: [(telemetry(base + i), 0) for i in range(25)],
                A: [(body(base + i, verdict="audited", count=2), 2) for i in range(25)],
                V: [(body(1000 + base + i, count=3), 3) for i in range(25)],
            }
        )


def test_a_full_spool_drops_telemetry_then_audit_then_violations(
    open_spool: Callable[..., Spool],
) -> None:
    spool = open_spool(max_records=150, chunk_records=25)
    _fill(spool)
    stats = spool.stats()
    # 300 records for 150 places (loss records count too): every telemetry record goes
    # first, then the oldest audited chunks; no blocked violation
    assert stats.dropped["telemetry"] == 100
    assert stats.dropped["violation"] == 0
    dropped_audit = stats.dropped["audit"]
    assert dropped_audit in (50, 75)
    assert stats.dropped_attempts == {"telemetry": 0, "audit": 2 * dropped_audit, "violation": 0}
    kept = everything(spool)
    assert sum(1 for _, r in kept if r.priority == T) == 0
    audited = [from_proto(r.violation).sequence for _, r in kept if r.priority == A]
    assert audited == list(range(dropped_audit, 100))  # the newest audited records stay
    assert sum(1 for _, r in kept if r.priority == V) == 100
    assert spool.records <= 150 + 2  # + the loss records of the last append
    # more blocked violations: every audited record goes, then the oldest violations
    spool.append({V: [(body(2000 + i, count=3), 3) for i in range(100)]})
    stats = spool.stats()
    assert (stats.dropped["telemetry"], stats.dropped["audit"]) == (100, 100)
    dropped_v = stats.dropped["violation"]
    assert dropped_v > 0 and dropped_v % 25 == 0
    assert stats.dropped_attempts["violation"] == 3 * dropped_v
    kept_v = [from_proto(r.violation).sequence for _, r in everything(spool) if r.priority == V]
    assert kept_v == (list(range(1000, 1100)) + list(range(2000, 2100)))[dropped_v:]


def test_every_drop_is_stated_in_band(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool(max_records=150, chunk_records=25)
    _fill(spool)
    stats = spool.stats()
    kept = everything(spool)
    losses = [(epoch, r) for epoch, r in kept if r.priority == L]
    assert all(r.WhichOneof("body") == "loss" for _, r in losses)
    assert all(epoch == T0 for epoch, _ in losses)
    by_priority: dict[int, list[pb.Loss]] = {}
    for _, r in losses:
        by_priority.setdefault(r.loss.priority, []).append(r.loss)
    assert set(by_priority) == {T, A}
    assert all(r.loss.reason == pb.LOSS_REASON_SPOOL_FULL for _, r in losses)
    assert all(r.loss.time_ms == T0 for _, r in losses)
    assert sum(x.count for x in by_priority[T]) == stats.dropped["telemetry"] == 100
    assert sum(x.count for x in by_priority[A]) == stats.dropped["audit"]
    assert sum(x.attempts for x in by_priority[A]) == stats.dropped_attempts["audit"]
    assert all(x.attempts == 0 for x in by_priority[T])
    for xs in by_priority.values():  # total: cumulative per (epoch, priority)
        running = 0
        for x in xs:
            running += x.count
            assert x.total == running
    # append 1 held seqs 1-25 (violations), 26-50 (audit), 51-75 (telemetry), append 2
    # 76-150, append 3 151-225: the first drop (in append 3) took the telemetry chunks of
    # appends 1-3, seqs 51-75, 126-150 and 201-225
    first = by_priority[T][0]
    assert (first.count, first.first_seq, first.last_seq) == (75, 51, 225)
    # loss records have seqs of their own: unique, and after what they describe
    seqs = [r.seq for _, r in kept]
    assert len(seqs) == len(set(seqs))
    assert all(r.seq > r.loss.last_seq for _, r in losses)


def test_drop_counts_persist_across_restarts(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool(max_records=150, chunk_records=25)
    _fill(spool)
    before = spool.stats()
    assert before.dropped_total > 0
    spool.close()
    again = open_spool(max_records=150, chunk_records=25)
    assert again.stats().dropped == before.dropped
    assert again.stats().dropped_attempts == before.dropped_attempts
    again.note_rejected(3, 7)
    again.close()
    third = open_spool()
    assert (third.stats().rejected, third.stats().rejected_attempts) == (3, 7)


def test_drops_of_an_old_epoch_are_stated_in_that_epoch(
    open_spool: Callable[..., Spool],
) -> None:
    clock = Clock(T0)
    old = open_spool(max_records=60, chunk_records=10, clock_ms=clock)
    old.append({T: [(telemetry(i), 0) for i in range(30)]})
    old.close()
    clock.ms = T0 + 60_000
    new = open_spool(max_records=60, chunk_records=10, clock_ms=clock)
    new.append({V: [(body(i), 1) for i in range(40)]})  # 70 > 60: old telemetry goes
    records = everything(new)
    loss = [(epoch, r) for epoch, r in records if r.priority == L]
    assert len(loss) == 1
    epoch, rec = loss[0]
    assert epoch == T0  # in the dropped records' epoch ...
    assert rec.seq == 31  # ... after its last record (the old producer used 1-30)
    assert (rec.loss.count, rec.loss.first_seq, rec.loss.last_seq) == (10, 1, 10)


def test_records_sent_and_not_acknowledged_are_not_dropped(
    open_spool: Callable[..., Spool],
) -> None:
    spool = open_spool(max_records=50, chunk_records=10)
    spool.append({T: [(telemetry(i), 0) for i in range(20)]})
    sent = spool.next_batch(0, max_records=10)  # the publisher sent telemetry 1-10
    assert sent is not None and sent.last_seq == 10
    spool.append({V: [(body(i), 1) for i in range(40)]})  # 60 > 50
    kept_t = [r.seq for _, r in everything(spool) if r.priority == T]
    assert kept_t == list(range(1, 11))  # 11-20 went, the unacknowledged 1-10 stayed
    assert spool.stats().dropped["telemetry"] == 10
    # still protected after a restart (the collector may have stored them)
    spool.close()
    again = open_spool(max_records=50, chunk_records=10)
    again.append({V: [(body(100 + i), 1) for i in range(20)]})
    assert [r.seq for _, r in everything(again) if r.priority == T] == list(range(1, 11))


def test_bytes_bound(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool(max_bytes=1 << 20, chunk_records=100)
    size = len(record_entry(1, V, body(1)))
    rounds = 2 * (1 << 20) // (100 * size) + 1
    for r in range(rounds):
        spool.append({V: [(body(r * 100 + i), 1) for i in range(100)]})
    assert spool.bytes <= (1 << 20) + 1000  # the loss records may go a little over
    dropped = spool.stats().dropped["violation"]
    assert dropped > 0
    losses = sum(1 for _, r in everything(spool) if r.priority == L)
    assert spool.records - losses + dropped == rounds * 100
    assert spool.records * size >= (1 << 20) * 0.8


def test_meta_is_stored_with_the_records(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool()
    spool.append({}, meta={"reported.kernel": 12})
    assert spool.counter("reported.kernel") == 12
    spool.close()
    assert open_spool().counter("reported.kernel") == 12


# ----------------------------------------------------------------------- errors --


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match=r"spool .*/file/spool\.db: cannot open") as info:
        Spool(blocker / "spool.db")
    assert info.value.fix is not None


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(SpoolError, match="cannot open") as info:
        Spool(path)
    assert "move" in (info.value.fix or "") or "disk" in (info.value.fix or "")


def test_other_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(SpoolError, match="schema version 99"):
        Spool(path)


def test_file_is_private(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool()
    assert spool.path.stat().st_mode & 0o077 == 0


# --------------------------------------------------------------------- producer --


def test_producer_buffers_until_flush(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool()
    producer = Producer(spool)
    producer.add_violation(violation(1))
    producer.add_violation(violation(2, verdict="audited", count=4))
    producer.add_telemetry("ready", {"records": 2})
    assert spool.records == 0 and producer.buffered == 3
    assert producer.flush() == 3
    assert producer.flush() == 0
    records = [r for _, r in everything(spool)]
    assert [(r.seq, r.priority) for r in records] == [(1, V), (2, A), (3, T)]
    assert from_proto(records[1].violation) == violation(2, verdict="audited", count=4)
    assert records[2].telemetry.state == "ready"
    assert dict(records[2].telemetry.counters) == {"records": 2}
    assert spool.pending()[0].attempts == 5


def test_producer_flushes_a_full_buffer_by_itself(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool()
    producer = Producer(spool, flush_records=10)
    for i in range(25):
        producer.add_violation(violation(i))
    assert spool.records == 20 and producer.buffered == 5


def test_cumulative_losses_become_loss_records(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool()
    producer = Producer(spool)
    assert producer.report_loss(pb.LOSS_REASON_KERNEL, 5, persistent=True) == 5
    assert producer.report_loss(pb.LOSS_REASON_KERNEL, 5, persistent=True) == 0
    assert producer.report_loss(pb.LOSS_REASON_KERNEL, 8, persistent=True) == 3
    assert producer.report_loss(pb.LOSS_REASON_USERSPACE, 2) == 2
    producer.flush()
    losses = [r.loss for _, r in everything(spool)]
    assert [(x.reason, x.count, x.total, x.priority) for x in losses] == [
        (pb.LOSS_REASON_KERNEL, 5, 5, V),
        (pb.LOSS_REASON_KERNEL, 3, 8, V),
        (pb.LOSS_REASON_USERSPACE, 2, 2, V),
    ]
    spool.close()
    # the kernel's counter outlives the agent: a new one reports only what is new
    again = open_spool()
    producer = Producer(again)
    assert producer.report_loss(pb.LOSS_REASON_KERNEL, 10, persistent=True) == 2
    # user-space counters start again at 0 with the process: all of it is new
    assert producer.report_loss(pb.LOSS_REASON_USERSPACE, 1) == 1
    # a counter that went back was reset (pins recreated): all of it is new
    assert producer.report_loss(pb.LOSS_REASON_KERNEL, 4, persistent=True) == 4


def test_a_failing_spool_loses_records_countably(open_spool: Callable[..., Spool]) -> None:
    spool = open_spool()
    producer = Producer(spool)
    producer.add_violation(violation(1, count=3))
    spool.close()  # every later append fails
    assert producer.flush() == 0
    assert (producer.lost, producer.lost_attempts) == (1, 3)


def test_records_mapping_type_accepts_the_producer_lists() -> None:
    records: Records = {V: [(b"", 1)]}
    assert list(records) == [V]


def test_an_unencodable_violation_is_counted_as_lost_not_raised(
    open_spool: Callable[..., Spool],
) -> None:
    producer = Producer(open_spool())
    bad = violation(1, count=3)
    bad = Violation(**{**{f: getattr(bad, f) for f in bad.__slots__}, "uid": "\udcff"})
    producer.add_violation(bad)
    producer.add_violation(violation(2))
    assert (producer.lost, producer.lost_attempts) == (1, 3)
    assert producer.flush() == 1


def test_every_flush_commits_what_its_records_report(open_spool: Callable[..., Spool]) -> None:
    """Also the flush add_violation makes by itself when its buffer is full: the keys the
    records advanced go into the same transaction (an agent SIGKILLed after it must not
    report them again)."""
    pending = [[("k1", 5, 1, 2)], [("k2", 7, 1, 3)]]
    spool = open_spool()
    producer = Producer(spool, flush_records=2, reported=lambda: pending.pop(0) if pending else [])
    producer.add_violation(violation(1))
    producer.add_violation(violation(2))  # buffer full: flushes by itself
    assert spool.records == 2
    assert spool.reported_rows() == [("k1", 5, 1, 2)]
    producer.add_violation(violation(3))
    producer.flush()
    assert sorted(spool.reported_rows()) == [("k1", 5, 1, 2), ("k2", 7, 1, 3)]
    spool.clear_reported()
    assert spool.reported_rows() == []


def test_new_epochs_of_one_millisecond_differ() -> None:
    """Two producers of a node starting in the same millisecond (an agent and a
    `nodeguard run`) must not share an epoch: the collector dedups on (node, epoch, seq)."""
    epochs = {new_epoch(T0) for _ in range(50)}
    assert len(epochs) > 1
    assert all(e // 1000 == T0 for e in epochs)
