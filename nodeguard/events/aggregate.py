"""Cumulative kernel counters -> per-record attempt counts.

The kernel keeps one cumulative attempt counter per aggregation key (``struct
ng_agg_key``) and stamps the current value into each record it writes (``count_total``).
Records can be lost (ring buffer full) or arrive slightly out of order (per-CPU), but the
counter never loses an attempt; so a record stands for the attempts since the highest
cumulative value already seen for its key, and a final pass over the aggregate map
(:meth:`CountTracker.residual`) reports whatever no record carried. Summed over a key's
records, the counts equal the kernel's final cumulative count exactly.

A key is identified by ``first_ns`` too: when user space deletes an aggregate (its cgroup
is gone) and the kernel creates it again, the new entry has a later ``first_ns`` and the
counting restarts from zero (a *generation*). A record from an older generation arriving
late counts nothing.
"""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass
from typing import NamedTuple

from nodeguard.bpf import abi
from nodeguard.events.decode import RawEgress, RawExec, RawRecord, c_string

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a, as the kernel hashes exec paths."""
    h = FNV64_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV64_PRIME) & _U64
    return h


class AggregationKey(NamedTuple):
    """User-space twin of ``struct ng_agg_key`` (hashable; padding left out)."""

    cgroup_id: int
    policy_id: int
    op: int
    port: int
    addr: bytes  # 16 bytes
    protocol: int
    family: int


def exec_path_addr(path_bytes: bytes) -> bytes:
    """The ``addr`` field of an exec key: FNV-1a of the path (up to NUL, at most
    PATH_MAX bytes) as 8 little-endian bytes, then 8 zero bytes."""
    path = c_string(path_bytes[: abi.PATH_MAX])
    return fnv1a64(path).to_bytes(8, "little") + bytes(8)


def exec_path_hash(key: AggregationKey) -> int:
    """The path hash an exec key carries."""
    return int.from_bytes(key.addr[:8], "little")


def key_of_record(raw: RawRecord) -> AggregationKey:
    """The key the kernel counted this record under."""
    h = raw.hdr
    if isinstance(raw, RawEgress):
        return AggregationKey(
            h.cgroup_id, h.policy_id, h.op, raw.port, raw.addr, raw.protocol, raw.family
        )
    return _exec_key(raw)


def _exec_key(raw: RawExec) -> AggregationKey:
    h = raw.hdr
    return AggregationKey(h.cgroup_id, h.policy_id, h.op, 0, exec_path_addr(raw.path_bytes), 0, 0)


def key_of_agg(key: abi.AggKey) -> AggregationKey:
    """The key of an aggregate map entry (as read from the kernel)."""
    return AggregationKey(
        key.cgroup_id,
        key.policy_id,
        key.op,
        key.port,
        bytes(key.addr),
        key.protocol,
        key.family,
    )


def to_abi(key: AggregationKey) -> abi.AggKey:
    """Back to the kernel struct (padding zeroed), e.g. to delete a map entry."""
    out = abi.AggKey()
    out.cgroup_id = key.cgroup_id
    out.policy_id = key.policy_id
    out.op = key.op
    out.port = key.port
    ct.memmove(out.addr, key.addr, 16)
    out.protocol = key.protocol
    out.family = key.family
    return out


class Advance(NamedTuple):
    """Result of feeding one cumulative value to the tracker."""

    attempts: int  # attempts not counted before (>= 0)
    since_ns: int  # lower bound (monotonic ns) of when those attempts happened


@dataclass(slots=True)
class _KeyState:
    first_ns: int  # generation: the aggregate's first attempt (0 = unknown)
    cumulative: int  # highest cumulative count seen
    at_ns: int  # monotonic time of the attempt that reached ``cumulative``


class CountTracker:
    """Highest cumulative count seen per key; turns cumulative values into deltas.

    Not thread-safe on its own: :class:`~nodeguard.events.build.ViolationBuilder`
    serialises access.
    """

    def __init__(self) -> None:
        self._keys: dict[AggregationKey, _KeyState] = {}
        self._dirty: set[AggregationKey] = set()  # changed since take_dirty()

    def __len__(self) -> int:
        return len(self._keys)

    def advance(
        self, key: AggregationKey, cumulative: int, *, first_ns: int = 0, at_ns: int = 0
    ) -> Advance:
        """Feed a cumulative value (from a record or the map) observed at ``at_ns``."""
        state = self._keys.get(key)
        if state is not None and first_ns and state.first_ns and first_ns != state.first_ns:
            if first_ns < state.first_ns:
                return Advance(0, state.at_ns)  # late record of an older generation
            state = None  # the aggregate was deleted and created again: start over
        if state is None:
            self._keys[key] = _KeyState(first_ns, cumulative, at_ns)
            self._dirty.add(key)
            return Advance(max(0, cumulative), first_ns or at_ns)
        delta = max(0, cumulative - state.cumulative)
        since = state.at_ns
        if delta:
            state.cumulative = cumulative
            state.at_ns = at_ns
            self._dirty.add(key)
        if not state.first_ns:
            state.first_ns = first_ns
        return Advance(delta, since)

    def observe(self, key: AggregationKey, count_total: int, *, first_ns: int = 0) -> int:
        """Attempts a record stands for. ``count_total`` 0 (not aggregated) is one attempt
        and leaves the tracker alone."""
        if count_total == 0:
            return 1
        return self.advance(key, count_total, first_ns=first_ns).attempts

    def residual(self, key: AggregationKey, cumulative: int, *, first_ns: int = 0) -> int:
        """Attempts in the final map value that no record reported."""
        return self.advance(key, cumulative, first_ns=first_ns).attempts

    def seed(
        self, key: AggregationKey, cumulative: int, *, first_ns: int = 0, at_ns: int = 0
    ) -> None:
        """Mark ``cumulative`` attempts as already reported (e.g. by a previous agent
        before a restart adopted the pinned maps)."""
        self.advance(key, cumulative, first_ns=first_ns, at_ns=at_ns)

    def snapshot(self) -> list[tuple[AggregationKey, int, int, int]]:
        """(key, cumulative, first_ns, at_ns) of every key: what :meth:`seed` takes back
        (an agent checkpoints it, so a restarted agent does not report attempts twice)."""
        return [(k, st.cumulative, st.first_ns, st.at_ns) for k, st in self._keys.items()]

    def cumulative(self, key: AggregationKey) -> int | None:
        state = self._keys.get(key)
        return None if state is None else state.cumulative

    def take_dirty(self) -> list[tuple[AggregationKey, int, int, int]]:
        """(key, cumulative, first_ns, at_ns) of every key changed since the last call:
        what a producer persists together with the records of the same round, so that
        what it reported and what it spooled can never disagree after a crash."""
        out = []
        for key in self._dirty:
            st = self._keys.get(key)
            if st is not None:
                out.append((key, st.cumulative, st.first_ns, st.at_ns))
        self._dirty.clear()
        return out

    def forget(self, key: AggregationKey) -> None:
        """Drop a key (after its map entry was deleted)."""
        self._keys.pop(key, None)
        self._dirty.discard(key)

    def forget_cgroup(self, cgroup_id: int) -> None:
        for key in [k for k in self._keys if k.cgroup_id == cgroup_id]:
            del self._keys[key]
            self._dirty.discard(key)
