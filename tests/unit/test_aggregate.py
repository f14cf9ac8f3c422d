"""Cumulative kernel counts -> per-record deltas, and aggregation keys."""

from __future__ import annotations

import ctypes as ct
import dataclasses
import random

import pytest

from nodeguard.bpf import abi
from nodeguard.events.aggregate import (
    FNV64_OFFSET,
    AggregationKey,
    CountTracker,
    exec_path_addr,
    exec_path_hash,
    fnv1a64,
    key_of_agg,
    key_of_record,
    to_abi,
)
from nodeguard.events.decode import AF_INET, AF_INET6
from tests.unit.test_decode import egress, exec_record, mapped

KEY = AggregationKey(1, 2, int(abi.Op.EGRESS), 443, mapped("10.0.0.1"), 6, AF_INET)
OTHER = KEY._replace(port=80)


# ------------------------------------------------------------------------ fnv ---


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0xCBF29CE484222325),
        (b"a", 0xAF63DC4C8601EC8C),
        (b"foobar", 0x85944171F73967E8),
    ],
)
def test_fnv1a64_reference_vectors(data: bytes, expected: int) -> None:
    assert fnv1a64(data) == expected


def test_fnv1a64_matches_c_definition() -> None:
    # h ^= b; h *= prime (mod 2^64), written out independently.
    data = b"/usr/bin/python3"
    h = FNV64_OFFSET
    for b in data:
        h = ((h ^ b) * 0x100000001B3) % (1 << 64)
    assert fnv1a64(data) == h


def test_exec_path_addr_layout() -> None:
    addr = exec_path_addr(b"/bin/sh")
    assert len(addr) == 16
    assert addr[:8] == fnv1a64(b"/bin/sh").to_bytes(8, "little")
    assert addr[8:] == bytes(8)


def test_exec_path_addr_stops_at_nul_and_path_max() -> None:
    assert exec_path_addr(b"/bin/sh\0garbage") == exec_path_addr(b"/bin/sh")
    long_path = b"/" + b"x" * 400
    assert exec_path_addr(long_path) == exec_path_addr(long_path[: abi.PATH_MAX])


# ----------------------------------------------------------------------- keys ---


def agg_key(**fields: int | bytes) -> abi.AggKey:
    k = abi.AggKey()
    for name, value in fields.items():
        if name == "addr":
            assert isinstance(value, bytes)
            ct.memmove(k.addr, value, 16)
        else:
            setattr(k, name, value)
    return k


def test_egress_record_and_map_entry_share_a_key() -> None:
    raw = egress("10.9.8.7", cgroup_id=77, policy_id=5)
    kernel = agg_key(
        cgroup_id=77,
        policy_id=5,
        op=int(abi.Op.EGRESS),
        port=443,
        addr=mapped("10.9.8.7"),
        protocol=6,
        family=AF_INET,
    )
    assert key_of_record(raw) == key_of_agg(kernel)


def test_exec_record_and_map_entry_share_a_key() -> None:
    raw = exec_record(b"/usr/bin/nc", cgroup_id=77, policy_id=5)
    h = fnv1a64(b"/usr/bin/nc")
    kernel = agg_key(
        cgroup_id=77, policy_id=5, op=int(abi.Op.EXEC), addr=h.to_bytes(8, "little") + bytes(8)
    )
    key = key_of_record(raw)
    assert key == key_of_agg(kernel)
    assert exec_path_hash(key) == h
    assert (key.port, key.protocol, key.family) == (0, 0, 0)


def test_keys_differ_by_every_field() -> None:
    base = key_of_record(egress())
    variants = [
        egress(cgroup_id=999),
        egress(policy_id=999),
        egress("10.1.2.4"),
    ]
    keys = {key_of_record(v) for v in variants} | {base}
    assert len(keys) == 4
    assert key_of_record(exec_record(b"/a")) != key_of_record(exec_record(b"/b"))


def test_family_is_part_of_the_key() -> None:
    # connect6 to ::ffff:10.1.2.3 and connect4 to 10.1.2.3 are different aggregates.
    v4 = egress("10.1.2.3")
    v6 = dataclasses.replace(v4, family=AF_INET6, hook=int(abi.Hook.CONNECT6))
    assert key_of_record(v4) != key_of_record(v6)


def test_to_abi_round_trip() -> None:
    key = key_of_record(exec_record(b"/x"))
    back = to_abi(key)
    assert key_of_agg(back) == key
    assert bytes(back._pad) == bytes(6)


# -------------------------------------------------------------------- tracker ---


def test_first_record_counts_its_cumulative_value() -> None:
    t = CountTracker()
    assert t.observe(KEY, 1) == 1
    assert t.cumulative(KEY) == 1


def test_deltas_between_records() -> None:
    t = CountTracker()
    assert [t.observe(KEY, c) for c in (1, 5, 6, 50)] == [1, 4, 1, 44]


def test_unaggregated_record_counts_one_and_leaves_tracker_alone() -> None:
    t = CountTracker()
    assert t.observe(KEY, 3) == 3
    assert t.observe(KEY, 0) == 1
    assert t.observe(KEY, 0) == 1
    assert t.cumulative(KEY) == 3
    assert t.observe(OTHER, 0) == 1
    assert t.cumulative(OTHER) is None


def test_lost_records_are_covered_by_the_next_one() -> None:
    t = CountTracker()
    assert t.observe(KEY, 1) == 1
    # records with 10 and 20 were lost (ring buffer full)
    assert t.observe(KEY, 30) == 29


def test_out_of_order_records() -> None:
    t = CountTracker()
    assert t.observe(KEY, 1) == 1
    assert t.observe(KEY, 9) == 8
    assert t.observe(KEY, 7) == 0  # stale: already counted by 9
    assert t.cumulative(KEY) == 9
    assert t.observe(KEY, 10) == 1


def test_duplicate_record_counts_nothing() -> None:
    t = CountTracker()
    assert t.observe(KEY, 4) == 4
    assert t.observe(KEY, 4) == 0


def test_residual() -> None:
    t = CountTracker()
    t.observe(KEY, 1)
    t.observe(KEY, 12)
    assert t.residual(KEY, 20) == 8
    assert t.residual(KEY, 20) == 0  # flushing twice reports nothing new
    assert t.residual(OTHER, 5) == 5  # never seen a record: all attempts are residual


def test_residual_below_seen_is_zero() -> None:
    t = CountTracker()
    t.observe(KEY, 12)
    assert t.residual(KEY, 11) == 0


def test_keys_are_independent() -> None:
    t = CountTracker()
    assert t.observe(KEY, 10) == 10
    assert t.observe(OTHER, 3) == 3
    assert t.observe(KEY, 11) == 1
    assert len(t) == 2


def test_seed_marks_attempts_as_reported() -> None:
    t = CountTracker()
    t.seed(KEY, 100)
    assert t.observe(KEY, 100) == 0
    assert t.observe(KEY, 101) == 1


def test_new_generation_after_delete_restarts_counting() -> None:
    t = CountTracker()
    assert t.observe(KEY, 5, first_ns=1000) == 5
    assert t.residual(KEY, 7, first_ns=1000) == 2
    # user space deleted the entry; the kernel created it again later
    assert t.observe(KEY, 1, first_ns=5000) == 1
    assert t.observe(KEY, 3, first_ns=5000) == 2
    # a late record of the old generation counts nothing and does not reset
    assert t.observe(KEY, 7, first_ns=1000) == 0
    assert t.observe(KEY, 4, first_ns=5000) == 1


def test_advance_reports_window_start() -> None:
    t = CountTracker()
    first = t.advance(KEY, 1, first_ns=100, at_ns=100)
    assert first == (1, 100)
    second = t.advance(KEY, 9, first_ns=100, at_ns=2000)
    assert second == (8, 100)  # attempts 2..9 happened after the record at 100
    stale = t.advance(KEY, 5, first_ns=100, at_ns=1500)
    assert stale.attempts == 0
    third = t.advance(KEY, 10, first_ns=100, at_ns=3000)
    assert third == (1, 2000)
    # aggregate seen first in the map: its whole life is the window
    assert t.advance(OTHER, 4, first_ns=50, at_ns=70) == (4, 50)


def test_forget() -> None:
    t = CountTracker()
    t.observe(KEY, 5)
    t.observe(OTHER._replace(cgroup_id=99), 5)
    t.forget(KEY)
    assert t.cumulative(KEY) is None
    t.forget(KEY)  # forgetting twice is fine
    t.forget_cgroup(99)
    assert len(t) == 0


@pytest.mark.parametrize("seed", range(20))
def test_sum_of_counts_equals_final_cumulative(seed: int) -> None:
    """Simulate the kernel: many attempts on a few keys, a record at the first attempt
    and then at most every Nth, records lost at random and delivered slightly out of
    order; the records' counts plus the residual flush equal the cumulative count."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible simulation, not crypto)
    keys = [KEY._replace(port=p) for p in range(1, 6)]
    cumulative = dict.fromkeys(keys, 0)
    first_ns: dict[AggregationKey, int] = {}
    emitted: list[tuple[AggregationKey, int, int]] = []
    unaggregated = 0
    for now in range(1, rng.randrange(200, 2000)):
        key = rng.choice(keys)
        if rng.random() < 0.02:  # aggregate table full: record of its own, count_total 0
            emitted.append((key, 0, now))
            unaggregated += 1
            continue
        cumulative[key] += 1
        first_ns.setdefault(key, now)
        if cumulative[key] == 1 or rng.random() < 0.2:
            emitted.append((key, cumulative[key], now))
    delivered = [r for r in emitted if rng.random() > 0.3]  # ring buffer full
    for i in range(len(delivered) - 1):  # per-CPU reordering
        if rng.random() < 0.2:
            delivered[i], delivered[i + 1] = delivered[i + 1], delivered[i]

    t = CountTracker()
    per_key = dict.fromkeys(keys, 0)
    records_without_key = 0
    for key, total, _now in delivered:
        n = t.observe(key, total, first_ns=first_ns.get(key, 0) if total else 0)
        assert n >= 0
        if total:
            per_key[key] += n
        else:
            records_without_key += n
    for key in keys:
        if cumulative[key]:
            per_key[key] += t.residual(key, cumulative[key], first_ns=first_ns[key])
    assert per_key == cumulative
    assert records_without_key == sum(1 for r in delivered if r[1] == 0) <= unaggregated
