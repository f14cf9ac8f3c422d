"""EventStore on a real SQLite file: dedup, rejections, filters, retention, cursors,
persistence across reopen, concurrent writer and reader, close while threads use it,
rows whose body does not decode, unusable paths."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from nodeguard.collector.records import EventQuery, Retention, StoredLoss
from nodeguard.collector.store import EventStore, StoreError
from nodeguard.events import ocsf
from nodeguard.events.model import (
    EgressDetail,
    ExecDetail,
    Kind,
    LimitDetail,
    PolicyRef,
    ProcessInfo,
    SocketDetail,
    SyscallDetail,
    Violation,
    WorkloadRef,
)
from nodeguard.events.wire import to_proto
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

T = 1_700_000_000_000
NODE = "node-a"
EPOCH = 1_700_000_000_000
WAIT_S = 30.0

POLICY = PolicyRef(name="research-agent", uid="research-agent@v1", version="3f2a", mode="enforce")
PROC = ProcessInfo(pid=4242, tid=4243, name="curl", path="/usr/bin/curl", cmd_line="curl x", ppid=1)
POD = WorkloadRef(
    namespace="agents",
    pod_name="research-0",
    pod_uid="0f3c8a4e-7f43-4a55-a0a2-1b9b1d5a8a11",
    pod_labels={"app": "research-agent"},
    container_id="containerd://abc123",
    container_name="agent",
    image="ghcr.io/acme/agent:1.2",
    image_id="sha256:0123abcd",
)
DETAILS: dict[Kind, dict[str, Any]] = {
    "egress": {"egress": EgressDetail("10.20.1.5", 443, "tcp", 4, "connect4")},
    "exec": {"exec": ExecDetail("/usr/bin/nc", truncated=False)},
    "syscall": {"syscall": SyscallDetail("ptrace", 101, "x86_64", "seccomp-kill")},
    "socket": {"socket": SocketDetail("packet", 17, "raw", 3, 768, None, "cgroup-sock-create")},
    "limit": {"limit": LimitDetail("forksPerSecond", 20, 40, 12)},
}


def violation(seq: int, kind: Kind = "egress", **fields: Any) -> Violation:
    """A complete violation of ``kind``; ``fields`` override any attribute."""
    base = Violation(
        uid=f"01890a5d-ac96-774b-bcce-{seq:012x}",
        sequence=seq,
        kind=kind,
        time_ms=T + seq * 1000,
        first_time_ms=T + seq * 1000,
        count=1,
        verdict="blocked",
        cgroup_id=9876,
        process=PROC,
        policy=POLICY,
        workload=POD,
        node=NODE,
        **DETAILS[kind],
    )
    return dataclasses.replace(base, **fields)


def vrec(v: Violation, seq: int | None = None) -> pb.Record:
    return pb.Record(
        seq=v.sequence if seq is None else seq,
        priority=pb.PRIORITY_VIOLATION,
        violation=to_proto(v),
    )


def loss_rec(seq: int, **fields: Any) -> pb.Record:
    loss = pb.Loss(
        reason=pb.LOSS_REASON_SPOOL_FULL,
        priority=pb.PRIORITY_AUDIT,
        count=5,
        total=7,
        time_ms=T + seq * 1000,
        first_seq=10,
        last_seq=14,
        attempts=9,
    )
    for name, value in fields.items():
        setattr(loss, name, value)
    return pb.Record(seq=seq, priority=pb.PRIORITY_LOSS, loss=loss)


def tel_rec(seq: int, state: str = "ready") -> pb.Record:
    tel = pb.Telemetry(time_ms=T + seq, state=state, counters={"sent": seq})
    return pb.Record(seq=seq, priority=pb.PRIORITY_TELEMETRY, telemetry=tel)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store" / "events.db"


@pytest.fixture
def store(db: Path) -> Iterator[EventStore]:
    s = EventStore(db, durable=False)
    yield s
    s.close()


# ------------------------------------------------------------------- insert ---


def test_insert_stores_every_body(store: EventStore) -> None:
    v = violation(1)
    result = store.insert(NODE, EPOCH, [vrec(v), loss_rec(2), tel_rec(3)], received_ms=T)
    assert (result.stored, result.duplicates, result.rejected) == (3, 0, 0)
    assert result.reject_reason is None
    assert result.last_rowid == store.last_rowid() == store.first_rowid() > 0

    [event] = store.query(EventQuery())
    assert (event.node, event.epoch, event.seq, event.received_ms) == (NODE, EPOCH, 1, T)
    assert event.violation == v
    assert event.rowid == result.last_rowid

    [loss] = store.losses()
    assert loss == StoredLoss(
        rowid=loss.rowid,
        node=NODE,
        epoch=EPOCH,
        seq=2,
        received_ms=T,
        reason="spool_full",
        priority="audit",
        count=5,
        total=7,
        attempts=9,
        time_ms=T + 2000,
        first_seq=10,
        last_seq=14,
    )
    telemetry = store.telemetry()
    assert list(telemetry) == [NODE]
    received, tel = telemetry[NODE]
    assert received == T
    assert (tel.state, dict(tel.counters)) == ("ready", {"sent": 3})


def test_violation_without_node_gets_the_streams_node(store: EventStore) -> None:
    store.insert(NODE, EPOCH, [vrec(violation(1, node=None))])
    [event] = store.query(EventQuery())
    assert event.violation.node == NODE
    assert event.violation == violation(1)


def test_every_kind_is_stored_with_its_ocsf_class(store: EventStore, db: Path) -> None:
    kinds: list[Kind] = ["egress", "exec", "syscall", "socket", "limit"]
    vs = [violation(i + 1, kind) for i, kind in enumerate(kinds)]
    assert store.insert(NODE, EPOCH, [vrec(v) for v in vs]).stored == len(kinds)
    assert [e.violation for e in store.query(EventQuery())] == vs
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT kind, class_uid FROM events ORDER BY rowid").fetchall()
    assert rows == [(v.kind, ocsf.to_ocsf(v)["class_uid"]) for v in vs]
    assert [uid for _, uid in rows] == [4001, 1007, 2004, 2004, 2004]


def test_loss_without_time_or_known_enums(store: EventStore) -> None:
    rec = loss_rec(1, time_ms=0, reason=99, priority=0, first_seq=0, last_seq=0)
    store.insert(NODE, EPOCH, [rec], received_ms=T + 5)
    [loss] = store.losses()
    assert (loss.time_ms, loss.reason, loss.priority) == (T + 5, "unspecified", "unspecified")


def test_telemetry_keeps_the_latest_per_node(store: EventStore) -> None:
    store.insert(NODE, EPOCH, [tel_rec(5, "first")], received_ms=T)
    store.insert(NODE, EPOCH, [tel_rec(4, "older")], received_ms=T + 1)  # late: kept out
    assert store.telemetry()[NODE][1].state == "first"
    store.insert(NODE, EPOCH, [tel_rec(6, "newer")], received_ms=T + 2)
    store.insert(NODE, EPOCH + 1, [tel_rec(1, "restarted")], received_ms=T + 3)
    store.insert("node-b", EPOCH, [tel_rec(1, "b")], received_ms=T + 4)
    telemetry = store.telemetry()
    assert {n: (r, t.state) for n, (r, t) in telemetry.items()} == {
        NODE: (T + 3, "restarted"),
        "node-b": (T + 4, "b"),
    }


# -------------------------------------------------------------------- dedup ---


def test_resent_batch_is_all_duplicates(store: EventStore) -> None:
    batch = [vrec(violation(1)), loss_rec(2), tel_rec(3), vrec(violation(4))]
    first = store.insert(NODE, EPOCH, batch)
    again = store.insert(NODE, EPOCH, batch)
    assert (first.stored, first.duplicates) == (4, 0)
    assert (again.stored, again.duplicates, again.rejected) == (0, 4, 0)
    assert again.last_rowid == first.last_rowid
    assert len(store.query(EventQuery())) == 2
    assert len(store.losses()) == 1
    assert store.stats().duplicates_total == 4


def test_dedup_key_is_node_epoch_seq_across_bodies(store: EventStore) -> None:
    store.insert(NODE, EPOCH, [loss_rec(1), tel_rec(2)])
    # the same seqs carrying other bodies are still duplicates
    result = store.insert(NODE, EPOCH, [vrec(violation(1)), vrec(violation(2))])
    assert (result.stored, result.duplicates) == (0, 2)
    # twice in one batch: the second is a duplicate
    result = store.insert(NODE, EPOCH, [vrec(violation(3)), vrec(violation(3))])
    assert (result.stored, result.duplicates) == (1, 1)
    # another epoch or another node is another key
    assert store.insert(NODE, EPOCH + 1, [vrec(violation(3))]).stored == 1
    other = violation(3, node="node-b")
    assert store.insert("node-b", EPOCH, [vrec(other)]).stored == 1
    assert [(e.node, e.epoch, e.seq) for e in store.query(EventQuery())] == [
        (NODE, EPOCH, 3),
        (NODE, EPOCH + 1, 3),
        ("node-b", EPOCH, 3),
    ]


# ---------------------------------------------------------------- rejection ---


def _raw(v: Violation) -> pb.Violation:
    return to_proto(v)


def _set(message: pb.Violation, **fields: Any) -> pb.Violation:
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def _clear(message: pb.Violation, *names: str) -> pb.Violation:
    for name in names:
        message.ClearField(name)
    return message


def _policy_mode(message: pb.Violation, mode: str) -> pb.Violation:
    message.policy.mode = mode
    return message


def _family(message: pb.Violation, family: int) -> pb.Violation:
    message.egress.family = family
    return message


def _other_detail(message: pb.Violation) -> pb.Violation:
    message.exec.path = "/bin/sh"
    return message  # kind egress, detail exec


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (_set(_raw(violation(1)), kind=0), "unknown kind 0"),
        (_set(_raw(violation(1)), kind=17), "unknown kind 17"),
        (_set(_raw(violation(1)), verdict=0), "unknown verdict 0"),
        (_other_detail(_raw(violation(1))), "kind egress carries detail exec"),
        (_clear(_raw(violation(1)), "egress"), "kind egress carries detail none"),
        (_set(_raw(violation(1)), uid=""), "no uid"),
        (_clear(_raw(violation(1)), "policy"), "no policy name"),
        (_policy_mode(_raw(violation(1)), "monitor"), "policy mode 'monitor'"),
        (_set(_raw(violation(1)), count=0), "count 0 < 1"),
        (_family(_raw(violation(1)), 5), "egress family 5"),
        (_set(_raw(violation(1)), node="node-b"), "names node 'node-b'"),
    ],
)
def test_invalid_violation_is_rejected(
    store: EventStore, broken: pb.Violation, reason: str
) -> None:
    rec = pb.Record(seq=1, priority=pb.PRIORITY_VIOLATION, violation=broken)
    result = store.insert(NODE, EPOCH, [rec, vrec(violation(2))])
    assert (result.stored, result.duplicates, result.rejected) == (1, 0, 1)
    assert result.reject_reason is not None
    assert result.reject_reason.startswith("record seq 1: violation ")
    assert reason in result.reject_reason
    assert [e.seq for e in store.query(EventQuery())] == [2]
    # a rejected record is not remembered: a valid one under its key is stored later
    assert store.insert(NODE, EPOCH, [vrec(violation(1))]).stored == 1


def test_records_without_body_or_seq_are_rejected_first_reason_kept(store: EventStore) -> None:
    no_body = pb.Record(seq=3, priority=pb.PRIORITY_VIOLATION)
    no_seq = vrec(violation(1), seq=0)
    result = store.insert(NODE, EPOCH, [no_body, vrec(violation(2)), no_seq])
    assert (result.stored, result.rejected) == (1, 2)
    assert result.reject_reason == "record seq 3: no body (violation, loss or telemetry)"
    result = store.insert(NODE, EPOCH, [no_seq])
    assert result.reject_reason is not None
    assert "record seq 0: sequence numbers run from 1" in result.reject_reason
    assert store.stats().rejected_total == 3


def test_epoch_out_of_range_rejects_the_batch(store: EventStore) -> None:
    result = store.insert(NODE, 2**63, [vrec(violation(1)), tel_rec(2)])
    assert (result.stored, result.rejected) == (0, 2)
    assert result.reject_reason == f"epoch {2**63} out of range"


# ------------------------------------------------------------------ queries ---


@pytest.fixture
def filled(store: EventStore) -> EventStore:
    """Ten violations over two nodes, two namespaces, three pods, two policies, kinds."""
    other_policy = dataclasses.replace(POLICY, name="coder")
    pod_b = dataclasses.replace(POD, pod_name="research-1")
    pod_c = dataclasses.replace(POD, namespace="ci", pod_name="builder-0")
    plan: list[tuple[str, Kind, WorkloadRef | None, PolicyRef]] = [
        (NODE, "egress", POD, POLICY),
        (NODE, "exec", POD, POLICY),
        (NODE, "egress", pod_b, POLICY),
        ("node-b", "syscall", pod_c, other_policy),
        ("node-b", "egress", pod_c, other_policy),
        (NODE, "socket", pod_b, POLICY),
        (NODE, "limit", None, other_policy),
        ("node-b", "exec", pod_c, POLICY),
        (NODE, "egress", POD, other_policy),
        ("node-b", "egress", None, POLICY),
    ]
    for seq, (node, kind, workload, policy) in enumerate(plan, start=1):
        v = violation(seq, kind, node=node, workload=workload, policy=policy)
        assert store.insert(node, EPOCH, [vrec(v)]).stored == 1
    return store


def _seqs(store: EventStore, **q: Any) -> list[int]:
    return [e.seq for e in store.query(EventQuery(**q))]


def test_query_each_filter(filled: EventStore) -> None:
    assert _seqs(filled) == list(range(1, 11))
    assert _seqs(filled, since_ms=T + 8000) == [8, 9, 10]
    assert _seqs(filled, until_ms=T + 2000) == [1, 2]
    assert _seqs(filled, since_ms=T + 4000, until_ms=T + 5000) == [4, 5]
    assert _seqs(filled, node="node-b") == [4, 5, 8, 10]
    assert _seqs(filled, namespace="ci") == [4, 5, 8]
    assert _seqs(filled, namespace="agents") == [1, 2, 3, 6, 9]
    assert _seqs(filled, pod="research-1") == [3, 6]
    assert _seqs(filled, policy="coder") == [4, 5, 7, 9]
    assert _seqs(filled, kind="egress") == [1, 3, 5, 9, 10]
    assert _seqs(filled, kind="limit") == [7]
    assert _seqs(filled, node="nobody") == []


def test_query_filters_are_anded(filled: EventStore) -> None:
    assert _seqs(filled, node="node-b", kind="egress") == [5, 10]
    assert _seqs(filled, namespace="agents", policy="coder", kind="egress") == [9]
    assert _seqs(filled, node=NODE, pod="builder-0") == []


def test_query_order_limit_and_after_rowid(filled: EventStore) -> None:
    rowids = [e.rowid for e in filled.query(EventQuery())]
    assert rowids == sorted(rowids)
    assert _seqs(filled, limit=3) == [1, 2, 3]
    assert _seqs(filled, limit=3, newest_first=True) == [10, 9, 8]
    assert _seqs(filled, limit=None, newest_first=True) == list(range(10, 0, -1))
    assert _seqs(filled, kind="egress", limit=2, newest_first=True) == [10, 9]
    assert _seqs(filled, after_rowid=rowids[6]) == [8, 9, 10]
    assert _seqs(filled, after_rowid=rowids[6], node="node-b") == [8, 10]
    assert [e.seq for e in filled.read_after(rowids[3], 2)] == [5, 6]
    assert filled.read_after(rowids[-1], 100) == []
    assert (filled.first_rowid(), filled.last_rowid()) == (rowids[0], rowids[-1])


def test_losses_filters(store: EventStore) -> None:
    store.insert(NODE, EPOCH, [loss_rec(1), loss_rec(5)])
    store.insert("node-b", EPOCH, [loss_rec(3)])
    assert [(x.node, x.seq) for x in store.losses()] == [(NODE, 1), (NODE, 5), ("node-b", 3)]
    assert [x.seq for x in store.losses(node="node-b")] == [3]
    assert [x.seq for x in store.losses(since_ms=T + 3000)] == [5, 3]
    assert [x.seq for x in store.losses(since_ms=T + 3000, node=NODE)] == [5]


def test_stats(store: EventStore) -> None:
    empty = store.stats()
    assert (empty.events, empty.losses, empty.attempts) == (0, 0, 0)
    assert (empty.oldest_ms, empty.newest_ms) == (None, None)
    assert (store.first_rowid(), store.last_rowid()) == (0, 0)
    store.insert(NODE, EPOCH, [vrec(violation(3, count=4)), vrec(violation(1)), loss_rec(9)])
    stats = store.stats()
    assert (stats.events, stats.losses, stats.attempts) == (2, 1, 5)
    assert (stats.oldest_ms, stats.newest_ms) == (T + 1000, T + 3000)
    assert stats.size_bytes > 0
    assert (stats.duplicates_total, stats.rejected_total) == (0, 0)


# ---------------------------------------------------------------- retention ---


def test_retention_by_age(db: Path) -> None:
    store = EventStore(db, Retention(max_age_s=10, max_events=None), durable=False)
    try:
        store.insert(NODE, EPOCH, [vrec(violation(s)) for s in range(1, 21)])
        store.insert(NODE, EPOCH, [loss_rec(21, time_ms=T + 5000), loss_rec(30)])
        # now = T + 25 s: keep times >= T + 15 s (events 15..20, the loss at 30 s)
        assert store.apply_retention(now_ms=T + 25_000) == 14 + 1
        assert _seqs(store) == list(range(15, 21))
        assert [x.seq for x in store.losses()] == [30]
        stats = store.stats()
        assert (stats.events, stats.losses, stats.attempts) == (6, 1, 6)
        assert stats.oldest_ms == T + 15_000
        assert store.apply_retention(now_ms=T + 25_000) == 0
    finally:
        store.close()


def test_retention_by_count_keeps_the_newest_arrivals(db: Path) -> None:
    store = EventStore(db, Retention(max_age_s=None, max_events=3), durable=False)
    try:
        # arrival order differs from time order: count retention goes by arrival
        for seq in (5, 1, 4, 2, 3):
            store.insert(NODE, EPOCH, [vrec(violation(seq, count=seq))])
        store.insert(NODE, EPOCH, [loss_rec(s) for s in range(10, 15)])
        assert store.apply_retention() == 2 + 2
        assert _seqs(store) == [4, 2, 3]
        assert [x.seq for x in store.losses()] == [12, 13, 14]
        assert store.stats().attempts == 4 + 2 + 3
    finally:
        store.close()


def test_retention_forgets_keys_and_never_reuses_rowids(db: Path) -> None:
    store = EventStore(db, Retention(max_age_s=1, max_events=None), durable=False)
    try:
        first = store.insert(NODE, EPOCH, [vrec(violation(1)), vrec(violation(2))]).last_rowid
        assert store.apply_retention(now_ms=T + 3600_000) == 2
        assert (store.first_rowid(), store.last_rowid()) == (0, 0)
        # the keys went with the rows: a resend is stored again, under a new rowid
        again = store.insert(NODE, EPOCH, [vrec(violation(2))])
        assert again.stored == 1
        assert again.last_rowid > first
    finally:
        store.close()


# ------------------------------------------------------------------ cursors ---


def test_cursors(store: EventStore) -> None:
    assert store.cursor("syslog") == 0
    store.set_cursor("syslog", 42)
    store.set_cursor("nats", 7)
    store.set_cursor("syslog", 43)
    assert (store.cursor("syslog"), store.cursor("nats"), store.cursor("other")) == (43, 7, 0)


# -------------------------------------------------------------- persistence ---


def test_everything_survives_close_and_reopen(db: Path) -> None:
    batch = [vrec(violation(1)), vrec(violation(2, "exec")), loss_rec(3), tel_rec(4)]
    with EventStore(db) as store:
        first = store.insert(NODE, EPOCH, batch)
        store.insert(NODE, EPOCH, [pb.Record(seq=9)])  # rejected
        store.set_cursor("syslog", first.last_rowid)
        before = (store.query(EventQuery()), store.losses(), store.stats())
    with EventStore(db) as store:
        stats = store.stats()
        # the size changes (close checkpoints the write-ahead log into the database)
        unsized = dataclasses.replace(stats, size_bytes=before[2].size_bytes)
        assert (store.query(EventQuery()), store.losses(), unsized) == before
        assert (stats.events, stats.losses, stats.rejected_total) == (2, 1, 1)
        assert store.telemetry()[NODE][1].state == "ready"
        assert store.cursor("syslog") == first.last_rowid
        assert store.insert(NODE, EPOCH, batch).duplicates == 4
    with EventStore(db, read_only=True) as reader:
        assert len(reader.query(EventQuery())) == 2
        with pytest.raises(StoreError, match="read-only"):
            reader.set_cursor("x", 1)


def test_durable_sets_synchronous_full(db: Path, tmp_path: Path) -> None:
    with EventStore(db) as durable, EventStore(tmp_path / "fast.db", durable=False) as fast:
        full = durable._conn().execute("PRAGMA synchronous").fetchone()[0]
        normal = fast._conn().execute("PRAGMA synchronous").fetchone()[0]
        mode = durable._conn().execute("PRAGMA journal_mode").fetchone()[0]
    assert (full, normal, mode) == (2, 1, "wal")
    assert db.stat().st_mode & 0o777 == 0o600


# -------------------------------------------------------------- concurrency ---


def test_writer_and_reader_threads(store: EventStore) -> None:
    """One thread inserts 40 batches of 50 while another follows with read_after and
    wait_for_new: the reader sees every event exactly once, in order."""
    batches, size = 40, 50
    total = batches * size
    seen: list[int] = []
    rowids: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for b in range(batches):
                recs = [vrec(violation(b * size + i + 1)) for i in range(size)]
                assert store.insert(NODE, EPOCH, recs).stored == size
        except BaseException as err:
            errors.append(err)

    def read() -> None:
        try:
            cursor = 0
            while len(seen) < total:
                if not store.wait_for_new(cursor, WAIT_S):
                    raise AssertionError(f"no new event after rowid {cursor} in {WAIT_S}s")
                for event in store.read_after(cursor, 64):
                    seen.append(event.seq)
                    rowids.append(event.rowid)
                    cursor = event.rowid
        except BaseException as err:
            errors.append(err)

    reader = threading.Thread(target=read)
    writer = threading.Thread(target=write)
    reader.start()
    writer.start()
    writer.join(WAIT_S * 2)
    reader.join(WAIT_S * 2)
    assert not writer.is_alive()
    assert not reader.is_alive()
    assert errors == []
    assert seen == list(range(1, total + 1))
    assert rowids == sorted(set(rowids))


def test_wait_for_new(store: EventStore) -> None:
    assert store.wait_for_new(0, 0.01) is False
    timer = threading.Timer(0.05, lambda: store.insert(NODE, EPOCH, [vrec(violation(1))]))
    timer.start()
    try:
        assert store.wait_for_new(0, WAIT_S) is True
    finally:
        timer.join()
    last = store.last_rowid()
    assert store.wait_for_new(last - 1, 0) is True
    assert store.wait_for_new(last, 0.01) is False


# ------------------------------------------------------------------- errors ---


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a regular file") as info:
        EventStore(tmp_path)
    assert info.value.fix is not None


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(StoreError, match="cannot create the event store"):
        EventStore(tmp_path / "plain" / "events.db")


def test_corrupt_file(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite at all, " * 200)
    with pytest.raises(StoreError, match="corrupt") as info:
        EventStore(db)
    assert "move the file" in str(info.value)


def test_schema_too_new(db: Path) -> None:
    EventStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99; this nodeguard reads version 1"):
        EventStore(db)


def test_foreign_database(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(StoreError, match="not a nodeguard event store"):
        EventStore(db)


def test_read_only_needs_an_existing_store(db: Path) -> None:
    with pytest.raises(StoreError, match="no event store at"):
        EventStore(db, read_only=True)
    assert not db.exists()


def test_closed_store(db: Path) -> None:
    store = EventStore(db, durable=False)
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.last_rowid()
    with pytest.raises(StoreError, match="is closed"):
        store.insert(NODE, EPOCH, [vrec(violation(1))])


def _close_under_load(db: Path, base: int) -> None:
    store = EventStore(db, durable=False)
    done: list[int] = []  # seqs of inserts that returned
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        seq = base + worker * 10_000
        try:
            while True:
                seqs = range(seq + 1, seq + 21)
                assert store.insert(NODE, EPOCH, [vrec(violation(s)) for s in seqs]).stored
                done.extend(seqs)
                seq += 20
        except StoreError as err:
            assert "is closed" in err.message
        except BaseException as err:
            errors.append(err)

    def read() -> None:
        try:
            while True:
                store.read_after(max(0, store.last_rowid() - 50), 50)
                store.stats()
                store.wait_for_new(store.last_rowid(), 0.001)
        except StoreError as err:
            assert "is closed" in err.message
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while len(done) < 200 and time.monotonic() < deadline:  # let them get going
            time.sleep(0.005)
    finally:
        store.close()
        for thread in threads:
            thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    with pytest.raises(StoreError, match="is closed"):
        store.read_after(0, 1)
    with EventStore(db, durable=False) as reopened:
        kept = {e.seq for e in reopened.query(EventQuery(limit=None))}
    assert len(done) >= 200
    assert set(done) <= kept


def test_close_while_threads_use_the_store(db: Path) -> None:
    """Writers and readers keep using the store while another thread closes it: close
    waits for the uses under way, every later use fails with StoreError (never a crash,
    never another error), and every insert that returned is in the reopened file."""
    for attempt in range(5):
        _close_under_load(db, attempt * 100_000)


def _corrupt(db: Path, seq: int, body: bytes) -> None:
    """Overwrite a stored event's body behind the store's back (raw SQL)."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("UPDATE events SET body = ? WHERE seq = ?", (body, seq)).rowcount == 1
    conn.close()


def test_undecodable_rows_are_skipped_counted_and_logged_once(store: EventStore, db: Path) -> None:
    store.insert(NODE, EPOCH, [vrec(violation(s)) for s in range(1, 7)])
    rowids = [e.rowid for e in store.read_after(0, 10)]
    _corrupt(db, 2, b"\xff\xff\xff not a protobuf")
    # valid protobuf, not a valid violation (no kind, no uid)
    _corrupt(db, 6, pb.Violation(count=1).SerializeToString())
    with capture_logs() as logs:
        assert [e.seq for e in store.read_after(0, 10)] == [1, 3, 4, 5]
        assert [e.seq for e in store.read_after(rowids[0], 2)] == [3]  # read 2, one decodes
        span = store.read_span(0, 10)
        assert [e.seq for e in span.events] == [1, 3, 4, 5]
        assert (span.end_rowid, span.undecodable) == (rowids[-1], 2)
        # past the last decodable row: nothing to hand out, but the end moves on
        tail = store.read_span(rowids[4], 10)
        assert (tail.events, tail.end_rowid, tail.undecodable) == ([], rowids[-1], 1)
        empty = store.read_span(rowids[-1], 10)
        assert (empty.events, empty.end_rowid, empty.undecodable) == ([], rowids[-1], 0)
        assert [e.seq for e in store.query(EventQuery())] == [1, 3, 4, 5]
    assert store.stats().undecodable == 2
    errors = [e for e in logs if e["event"] == "store_event_undecodable"]
    assert [(e["log_level"], e["rowid"], e["seq"]) for e in errors] == [
        ("error", rowids[1], 2),
        ("error", rowids[5], 6),
    ]
    assert all(e["error"] for e in errors)
