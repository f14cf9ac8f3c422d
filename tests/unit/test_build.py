"""ViolationBuilder (records + residuals -> Violation), and its helpers: uuid7, clock,
process enrichment."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from nodeguard.bpf import abi
from nodeguard.events import enrich as enrich_mod
from nodeguard.events.aggregate import CountTracker, fnv1a64, key_of_record, to_abi
from nodeguard.events.build import ViolationBuilder, ip_text, protocol_name, protocol_number
from nodeguard.events.clock import MonotonicClock, capture_offset_ns
from nodeguard.events.decode import AF_INET6, RawEgress, RawExec, decode, encode
from nodeguard.events.enrich import ProcessEnricher
from nodeguard.events.model import PolicyRef, ProcessInfo, Violation, WorkloadRef
from nodeguard.events.uuid7 import Uuid7Generator, format_uuid, pack, unix_ms_of, uuid7
from tests.unit.test_decode import egress, exec_record, mapped

EPOCH_MS = 1_700_000_000_000
MS = 1_000_000
POLICY = PolicyRef(name="research-agent", uid="research-agent@abc", version="abc", mode="enforce")
AUDIT_POLICY = dataclasses.replace(POLICY, name="auditor", mode="audit")


class FakeClock:
    def wall_ms(self, mono_ns: int) -> int:
        return EPOCH_MS + mono_ns // MS


def uids() -> Iterator[str]:
    return (f"uid-{n}" for n in itertools.count(1))


def builder(**kwargs: object) -> ViolationBuilder:
    ids = uids()
    options: dict[str, object] = {
        "policies": {7: POLICY, 8: AUDIT_POLICY},
        "clock": FakeClock(),
        "tracker": CountTracker(),
        "node": "node-a",
        "enrich": False,
        "new_uid": lambda: next(ids),
    }
    options.update(kwargs)
    return ViolationBuilder(**options)  # type: ignore[arg-type]


def agg_value(count: int, first_ns: int, last_ns: int) -> abi.AggValue:
    v = abi.AggValue()
    v.count, v.first_ns, v.last_ns, v.last_emit_ns = count, first_ns, last_ns, last_ns
    return v


def at(raw: RawEgress | RawExec, total: int, ts_ms: int, first_ms: int = 1) -> bytes:
    """The record's bytes with a cumulative count and times (in ms of monotonic time)."""
    hdr = dataclasses.replace(
        raw.hdr, count_total=total, ts_ns=ts_ms * MS, first_ns=first_ms * MS if total else 0
    )
    return encode(dataclasses.replace(raw, hdr=hdr))


def build(b: ViolationBuilder, data: bytes) -> Violation | None:
    raw = decode(data)
    assert raw is not None
    return b.from_record(raw)


# ------------------------------------------------------------------- records ---


def test_egress_record() -> None:
    b = builder()
    v = b.from_record(egress("10.1.2.3"))
    assert v is not None
    assert v.uid == "uid-1"
    assert v.sequence == 1
    assert v.kind == "egress"
    assert v.verdict == "blocked"
    assert v.count == 1
    assert v.time_ms == v.first_time_ms == EPOCH_MS + 5000
    assert v.cgroup_id == 0x1234
    assert v.policy == POLICY
    assert v.node == "node-a"
    assert v.exec is None
    assert v.egress is not None
    assert (v.egress.ip, v.egress.port, v.egress.protocol, v.egress.family, v.egress.hook) == (
        "10.1.2.3",
        443,
        "tcp",
        4,
        "connect4",
    )
    assert v.process == ProcessInfo(pid=4242, tid=4243, name="curl")
    assert v.workload is None


def test_ipv6_and_mapped_destinations() -> None:
    b = builder()
    v6 = dataclasses.replace(
        egress("2001:db8::10"), family=AF_INET6, hook=int(abi.Hook.CONNECT6), protocol=17
    )
    got = b.from_record(v6)
    assert got is not None and got.egress is not None
    assert (got.egress.ip, got.egress.family, got.egress.protocol, got.egress.hook) == (
        "2001:db8::10",
        6,
        "udp",
        "connect6",
    )
    # A v4-mapped destination via an AF_INET6 socket: shown as IPv4, family stays 6.
    mapped_v6 = dataclasses.replace(
        egress("192.0.2.1"), family=AF_INET6, hook=int(abi.Hook.SENDMSG6)
    )
    got = b.from_record(mapped_v6)
    assert got is not None and got.egress is not None
    assert (got.egress.ip, got.egress.family, got.egress.hook) == ("192.0.2.1", 6, "sendmsg6")


def test_helpers() -> None:
    assert ip_text(mapped("8.8.8.8")) == "8.8.8.8"
    assert ip_text(mapped("::1")) == "::1"
    assert ip_text(mapped("fe80::1:2")) == "fe80::1:2"
    assert [protocol_name(p) for p in (6, 17, 1)] == ["tcp", "udp", "ip-proto-1"]
    assert [protocol_number(n) for n in ("tcp", "udp", "ip-proto-58", "sctp")] == [6, 17, 58, None]


def test_exec_record_audited() -> None:
    b = builder()
    v = b.from_record(exec_record(b"/usr/bin/nc", policy_id=8, verdict=int(abi.Verdict.AUDITED)))
    assert v is not None
    assert v.kind == "exec"
    assert v.verdict == "audited"
    assert v.policy == AUDIT_POLICY
    assert v.exec is not None
    assert (v.exec.path, v.exec.truncated) == ("/usr/bin/nc", False)
    assert v.egress is None


def test_exec_truncated() -> None:
    raw = dataclasses.replace(exec_record(b"/" + b"a" * 246), path_len=abi.PATH_MAX)
    v = builder().from_record(raw)
    assert v is not None and v.exec is not None
    assert v.exec.truncated


def test_unknown_policy_never_crashes() -> None:
    b = builder()
    v = b.from_record(egress(policy_id=999))
    assert v is not None
    assert v.policy.name == "unknown"
    assert v.policy.uid == "unknown:999"
    assert v.policy.mode == "enforce"
    audited = b.from_record(exec_record(policy_id=999, verdict=int(abi.Verdict.AUDITED)))
    assert audited is not None
    assert audited.policy.mode == "audit"


def test_policies_mapping_is_read_live() -> None:
    policies: dict[int, PolicyRef] = {}
    b = builder(policies=policies)
    first = b.from_record(egress(policy_id=7))
    policies[7] = POLICY
    second = b.from_record(egress(policy_id=7, count_total=2))
    assert first is not None and second is not None
    assert first.policy.name == "unknown"
    assert second.policy == POLICY


def test_sequence_and_stale_records() -> None:
    b = builder()
    raw = egress()
    v1 = build(b, at(raw, 1, 1000))
    v2 = build(b, at(raw, 9, 2000))
    stale = build(b, at(raw, 5, 1500))
    v3 = build(b, at(raw, 10, 3000))
    assert stale is None
    assert [(v.sequence, v.count, v.uid) for v in (v1, v2, v3) if v is not None] == [
        (1, 1, "uid-1"),
        (2, 8, "uid-2"),
        (3, 1, "uid-3"),
    ]
    assert b.sequence == 3


def test_time_window_of_aggregated_records() -> None:
    b = builder()
    raw = egress()
    v1 = build(b, at(raw, 1, 1000, first_ms=1000))
    v2 = build(b, at(raw, 40, 2500, first_ms=1000))
    assert v1 is not None and v2 is not None
    assert (v1.first_time_ms, v1.time_ms) == (EPOCH_MS + 1000, EPOCH_MS + 1000)
    # attempts 2..40 happened after the first record and up to the second
    assert (v2.first_time_ms, v2.time_ms, v2.count) == (EPOCH_MS + 1000, EPOCH_MS + 2500, 39)
    v3 = build(b, at(raw, 41, 4000, first_ms=1000))
    assert v3 is not None
    assert (v3.first_time_ms, v3.time_ms) == (EPOCH_MS + 2500, EPOCH_MS + 4000)


def test_first_seen_record_covers_the_whole_aggregate() -> None:
    # The first records were lost: the window starts at the aggregate's first attempt.
    v = build(builder(), at(egress(), 25, 9000, first_ms=100))
    assert v is not None
    assert (v.count, v.first_time_ms, v.time_ms) == (25, EPOCH_MS + 100, EPOCH_MS + 9000)


def test_unaggregated_record() -> None:
    b = builder()
    raw = egress()
    v1 = build(b, at(raw, 0, 3000))
    v2 = build(b, at(raw, 0, 3000))  # each one is an attempt of its own
    assert v1 is not None and v2 is not None
    assert v1.count == v2.count == 1
    assert v1.first_time_ms == v1.time_ms == EPOCH_MS + 3000
    assert b.tracker.cumulative(key_of_record(raw)) is None


# ----------------------------------------------------------------- residuals ---


def test_residual_reuses_last_record_details() -> None:
    b = builder()
    raw = exec_record(b"/usr/bin/nc")
    assert build(b, at(raw, 1, 1000, first_ms=1000)) is not None
    assert build(b, at(raw, 5, 2000, first_ms=1000)) is not None
    key = to_abi(key_of_record(raw))
    v = b.from_residual(key, agg_value(12, 1000 * MS, 2800 * MS))
    assert v is not None
    assert v.kind == "exec"
    assert v.count == 7
    assert v.exec is not None and v.exec.path == "/usr/bin/nc"
    assert v.process.pid == 4242
    assert v.verdict == "blocked"
    assert (v.first_time_ms, v.time_ms) == (EPOCH_MS + 2000, EPOCH_MS + 2800)
    assert v.sequence == 3
    assert b.from_residual(key, agg_value(12, 1000 * MS, 2800 * MS)) is None


def test_residual_without_a_record_exec() -> None:
    b = builder()
    key = to_abi(key_of_record(exec_record(b"/bin/secret", policy_id=8)))
    v = b.from_residual(key, agg_value(3, 100 * MS, 900 * MS))
    assert v is not None
    assert v.count == 3
    assert v.verdict == "audited"  # from the policy's mode
    assert v.exec is not None
    assert f"{fnv1a64(b'/bin/secret'):016x}" in v.exec.path
    assert v.process == ProcessInfo(pid=0, tid=0, name="")
    assert (v.first_time_ms, v.time_ms) == (EPOCH_MS + 100, EPOCH_MS + 900)


@pytest.mark.parametrize(
    ("protocol", "family", "hook", "ip"),
    [
        (6, 2, "connect4", "10.0.0.9"),
        (17, 2, "sendmsg4", "10.0.0.9"),
        (6, AF_INET6, "connect6", "2001:db8::9"),
    ],
)
def test_residual_without_a_record_egress(protocol: int, family: int, hook: str, ip: str) -> None:
    raw = dataclasses.replace(egress(ip), protocol=protocol, family=family)
    v = builder().from_residual(to_abi(key_of_record(raw)), agg_value(2, MS, 2 * MS))
    assert v is not None and v.egress is not None
    assert (v.egress.hook, v.egress.ip, v.egress.port) == (hook, ip, 443)
    assert v.verdict == "blocked"


def test_residual_of_unknown_op_is_ignored() -> None:
    key = to_abi(key_of_record(egress()))
    key.op = 77
    assert builder().from_residual(key, agg_value(5, 1, 2)) is None


def test_flush_completes_counts() -> None:
    b = builder()
    a, c = egress("10.0.0.1"), exec_record(b"/bin/x")
    got = [build(b, at(a, 1, 10)), build(b, at(a, 30, 20)), build(b, at(c, 4, 30))]
    entries = [
        (to_abi(key_of_record(a)), agg_value(31, MS, 25 * MS)),
        (to_abi(key_of_record(c)), agg_value(4, MS, 30 * MS)),
    ]
    residuals = b.flush(entries)
    assert len(residuals) == 1
    assert all(v is not None for v in got)
    total = sum(v.count for v in [*got, *residuals] if v is not None)
    assert total == 31 + 4
    assert [v.sequence for v in residuals] == [4]


# ------------------------------------------------------- workload, enrichment ---


def test_workload_resolver() -> None:
    pod = WorkloadRef(namespace="agents", pod_name="research-0", container_id="abc")
    seen: list[int] = []

    def resolve(cgroup_id: int) -> WorkloadRef | None:
        seen.append(cgroup_id)
        return pod

    v = builder(workload_of=resolve).from_record(egress(cgroup_id=55))
    assert v is not None and v.workload == pod
    assert seen == [55]


def test_failing_workload_resolver_is_ignored() -> None:
    def resolve(cgroup_id: int) -> WorkloadRef | None:
        raise RuntimeError("CRI is down")

    v = builder(workload_of=resolve).from_record(egress())
    assert v is not None and v.workload is None


def test_enrichment_of_a_live_process() -> None:
    b = builder(enrich=True)
    v = b.from_record(egress(pid=os.getpid(), tid=os.getpid(), comm="pytest"))
    assert v is not None
    assert v.process.name == "pytest"
    assert v.process.path == os.path.realpath(sys.executable)
    assert v.process.ppid == os.getppid()
    assert v.process.cmd_line is not None


# ---------------------------------------------------------------------- enrich ---


def test_enricher_gone_process() -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(child.stdout)
    info = ProcessEnricher().lookup(pid, pid, "python3")
    assert info == ProcessInfo(pid=pid, tid=pid, name="python3")


def test_enricher_invalid_pids() -> None:
    e = ProcessEnricher()
    assert e.lookup(0, 0, "x") == ProcessInfo(pid=0, tid=0, name="x")
    assert e.lookup(2**31 - 1, 1, "x") == ProcessInfo(pid=2**31 - 1, tid=1, name="x")


def test_enricher_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_exe = enrich_mod._exe

    def counting_exe(proc: object) -> str | None:
        calls.append(1)
        return real_exe(proc)  # type: ignore[arg-type]

    monkeypatch.setattr(enrich_mod, "_exe", counting_exe)
    now = [0.0]
    e = ProcessEnricher(ttl_s=2.0, now=lambda: now[0])
    pid = os.getpid()
    first = e.lookup(pid, pid, "a")
    second = e.lookup(pid, pid + 1, "a")
    assert len(calls) == 1
    assert second.path == first.path
    assert second.tid == pid + 1  # kernel facts always come from the record
    assert e.lookup(pid, pid, "a") is e.lookup(pid, pid, "a")  # repeat hits: same object
    assert len(calls) == 1
    e.lookup(pid, pid, "a", fresh=True)  # exec records bypass the cache
    assert len(calls) == 2
    renamed = e.lookup(pid, pid, "b")  # another comm: an exec happened, read again
    assert len(calls) == 3
    assert renamed.name == "b"
    now[0] = 10.0
    e.lookup(pid, pid, "b")
    assert len(calls) == 4


def test_enricher_cleans_and_bounds_text() -> None:
    assert enrich_mod.clean_text("sh \udcff", 100) == "sh \ufffd"  # invalid byte -> U+FFFD
    long = enrich_mod.clean_text("x" * 10_000, enrich_mod.MAX_CMD_LINE)
    assert len(long) == enrich_mod.MAX_CMD_LINE
    assert long.endswith(enrich_mod.TRUNCATED)
    assert enrich_mod.clean_text("ok", 100) == "ok"


def test_enricher_cache_is_bounded() -> None:
    e = ProcessEnricher(max_entries=2)
    for _ in range(3):
        e.lookup(os.getpid(), 0, "x")
    e._put((1, 1.0), (None, None))
    e._put((2, 1.0), (None, None))
    assert len(e._cache) == 2


# ----------------------------------------------------------------------- uuid7 ---

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_uuid7_format_version_variant() -> None:
    text = uuid7()
    assert UUID_RE.match(text), text
    parsed = uuid.UUID(text)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_uuid7_carries_the_time() -> None:
    before = time.time_ns() // MS
    text = uuid7()
    after = time.time_ns() // MS
    assert before <= unix_ms_of(text) <= after + 1


def test_uuid7_rfc9562_test_vector() -> None:
    # RFC 9562 appendix A.6: unix_ts_ms 0x017F22E279B0, rand_a 0xCC3, rand_b 0x18C4DC0C0C07398F
    rand74 = 0xCC3 << 62 | 0x18C4DC0C0C07398F
    assert format_uuid(pack(0x017F22E279B0, rand74)) == "017f22e2-79b0-7cc3-98c4-dc0c0c07398f"


def test_uuid7_strictly_increasing_and_unique() -> None:
    made = [uuid7() for _ in range(5000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_uuid7_monotonic_within_one_ms_and_clock_steps_back() -> None:
    now = [1_000]
    gen = Uuid7Generator(now_ms=lambda: now[0])
    made = [gen() for _ in range(1000)]
    now[0] = 900  # wall clock stepped back
    made += [gen() for _ in range(10)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(UUID_RE.match(u) for u in made)
    assert {unix_ms_of(u) for u in made} == {1_000}


def test_uuid7_counter_overflow_moves_to_next_ms() -> None:
    gen = Uuid7Generator(now_ms=lambda: 5)
    gen()
    gen._last_rand = (1 << 74) - 2
    nxt = gen()
    assert unix_ms_of(nxt) == 6
    assert UUID_RE.match(nxt)


# ----------------------------------------------------------------------- clock ---


def test_capture_offset_uses_tightest_reading() -> None:
    mono = iter([100, 180, 1000, 1002, 2000, 2050])
    wall = iter([10_140, 11_001, 12_020])
    offset = capture_offset_ns(wall_ns=lambda: next(wall), mono_ns=lambda: next(mono))
    assert offset == 11_001 - 1001


def test_monotonic_clock_conversion() -> None:
    clock = MonotonicClock(offset_ns=EPOCH_MS * MS)
    assert clock.offset_ns == EPOCH_MS * MS
    assert clock.wall_ms(0) == EPOCH_MS
    assert clock.wall_ms(1_999_999) == EPOCH_MS + 1
    assert clock.wall_ns(5) == EPOCH_MS * MS + 5


def test_monotonic_clock_against_the_real_clocks() -> None:
    clock = MonotonicClock()
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert abs(clock.wall_ms(mono) - time.time_ns() // MS) < 50
    clock.resync()
    assert abs(clock.wall_ms(mono) - time.time_ns() // MS) < 50
