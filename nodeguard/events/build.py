"""Decoded records and aggregate map entries -> canonical :class:`Violation` records.

One :class:`ViolationBuilder` per producer (node agent, ``nodeguard run``): it owns the
sequence numbers, the cumulative-count tracker and, per aggregation key, the details of
the last record seen, which residual records (attempts no record reported, recovered from
the aggregate map) reuse because the map entry alone holds no path, pid or hook.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from nodeguard.bpf import abi
from nodeguard.events.aggregate import (
    AggregationKey,
    CountTracker,
    exec_path_hash,
    key_of_agg,
    key_of_record,
)
from nodeguard.events.decode import AF_INET, RawEgress, RawExec, RawRecord
from nodeguard.events.enrich import ProcessEnricher
from nodeguard.events.model import (
    EgressDetail,
    ExecDetail,
    Kind,
    PolicyRef,
    ProcessInfo,
    Verdict,
    Violation,
    WorkloadRef,
)
from nodeguard.events.uuid7 import uuid7

_log = structlog.get_logger("nodeguard.events.build")

IPPROTO_TCP = 6
IPPROTO_UDP = 17

Hook = Literal["connect4", "connect6", "sendmsg4", "sendmsg6"]
_HOOKS: dict[int, Hook] = {
    abi.Hook.CONNECT4: "connect4",
    abi.Hook.CONNECT6: "connect6",
    abi.Hook.SENDMSG4: "sendmsg4",
    abi.Hook.SENDMSG6: "sendmsg6",
}
_KINDS: dict[int, Kind] = {abi.Op.EGRESS: "egress", abi.Op.EXEC: "exec"}


class WallClock(Protocol):
    def wall_ms(self, mono_ns: int) -> int: ...


WorkloadResolver = Callable[[int], WorkloadRef | None]  # cgroup id -> pod/container


# ------------------------------------------------------------------ pure helpers ---


def ip_text(addr: bytes) -> str:
    """IPv4 dotted quad for IPv4-mapped addresses, else compressed IPv6 text."""
    ip6 = ipaddress.IPv6Address(bytes(addr[:16]))
    mapped = ip6.ipv4_mapped
    return str(mapped) if mapped is not None else str(ip6)


def protocol_name(protocol: int) -> str:
    if protocol == IPPROTO_TCP:
        return "tcp"
    if protocol == IPPROTO_UDP:
        return "udp"
    return f"ip-proto-{protocol}"


def protocol_number(name: str) -> int | None:
    """Inverse of :func:`protocol_name`."""
    if name == "tcp":
        return IPPROTO_TCP
    if name == "udp":
        return IPPROTO_UDP
    prefix = "ip-proto-"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return int(name[len(prefix) :])
    return None


def ip_version(family: int) -> Literal[4, 6]:
    return 4 if family == AF_INET else 6


def verdict_name(verdict: int) -> Verdict:
    return "audited" if verdict == abi.Verdict.AUDITED else "blocked"


def egress_detail(raw: RawEgress) -> EgressDetail:
    return EgressDetail(
        ip=ip_text(raw.addr),
        port=raw.port,
        protocol=protocol_name(raw.protocol),
        family=ip_version(raw.family),
        hook=_HOOKS[raw.hook],  # decode() rejects unknown hooks
    )


def exec_detail(raw: RawExec) -> ExecDetail:
    return ExecDetail(path=raw.path, truncated=raw.truncated)


def guess_hook(protocol: int, version: Literal[4, 6]) -> Hook:
    """The likeliest hook for a destination seen only in the aggregate map."""
    if protocol == IPPROTO_TCP:
        return "connect4" if version == 4 else "connect6"
    return "sendmsg4" if version == 4 else "sendmsg6"


def guessed_egress_detail(key: AggregationKey) -> EgressDetail:
    """Egress details from an aggregation key alone (the hook is a guess)."""
    version = ip_version(key.family)
    return EgressDetail(
        ip=ip_text(key.addr),
        port=key.port,
        protocol=protocol_name(key.protocol),
        family=version,
        hook=guess_hook(key.protocol, version),
    )


def unknown_exec_detail(key: AggregationKey) -> ExecDetail:
    return ExecDetail(path=f"<unknown path, fnv1a64 {exec_path_hash(key):016x}>", truncated=False)


def unknown_policy(policy_id: int, verdict: Verdict) -> PolicyRef:
    return PolicyRef(
        name="unknown",
        uid=f"unknown:{policy_id}",
        version="",
        mode="audit" if verdict == "audited" else "enforce",
    )


@dataclass(frozen=True, slots=True)
class _Template:
    """What a residual record of a key reuses from the key's last record."""

    verdict: Verdict
    process: ProcessInfo
    egress: EgressDetail | None
    exec: ExecDetail | None


# ----------------------------------------------------------------------- builder ---


class ViolationBuilder:
    """Turns records and aggregate map entries into numbered :class:`Violation` records.

    ``policies`` maps kernel policy ids to the policy (with its *effective* mode); it is
    read at every call, so a live dict may gain entries. Thread-safe.
    """

    def __init__(
        self,
        policies: Mapping[int, PolicyRef],
        clock: WallClock,
        tracker: CountTracker | None = None,
        node: str | None = None,
        enrich: bool = True,
        *,
        workload_of: WorkloadResolver | None = None,
        enricher: ProcessEnricher | None = None,
        new_uid: Callable[[], str] = uuid7,
    ) -> None:
        self._policies = policies
        self._clock = clock
        self._tracker = tracker if tracker is not None else CountTracker()
        self._node = node
        self._enricher = (enricher or ProcessEnricher()) if enrich else None
        self._workload_of = workload_of
        self._new_uid = new_uid
        self._templates: dict[AggregationKey, _Template] = {}
        self._sequence = 0
        self._lock = threading.Lock()

    @property
    def sequence(self) -> int:
        """The last sequence number handed out (0 before the first violation)."""
        return self._sequence

    @property
    def tracker(self) -> CountTracker:
        return self._tracker

    def from_record(self, raw: RawRecord) -> Violation | None:
        """The violation a ring buffer record stands for, or None when every attempt it
        carries was already counted (a stale, out-of-order record)."""
        h = raw.hdr
        with self._lock:
            key = key_of_record(raw)
            if h.count_total == 0:
                count, since_ns = 1, h.ts_ns
            else:
                count, since_ns = self._tracker.advance(
                    key, h.count_total, first_ns=h.first_ns, at_ns=h.ts_ns
                )
            if count == 0:
                return None
            template = self._template_of(raw)
            if h.count_total:
                self._templates[key] = template
            return self._violation(
                kind=_KINDS[h.op],
                key=key,
                template=template,
                count=count,
                since_ns=since_ns or h.first_ns or h.ts_ns,
                at_ns=h.ts_ns,
            )

    def from_residual(self, agg_key: abi.AggKey, agg_value: abi.AggValue) -> Violation | None:
        """A record for the attempts of an aggregate map entry that no record reported,
        or None when there are none."""
        with self._lock:
            key = key_of_agg(agg_key)
            kind = _KINDS.get(key.op)
            if kind is None:
                return None
            count, since_ns = self._tracker.advance(
                key, agg_value.count, first_ns=agg_value.first_ns, at_ns=agg_value.last_ns
            )
            if count == 0:
                return None
            template = self._templates.get(key) or self._guessed_template(key, kind)
            return self._violation(
                kind=kind,
                key=key,
                template=template,
                count=count,
                since_ns=since_ns or agg_value.first_ns or agg_value.last_ns,
                at_ns=agg_value.last_ns,
            )

    def flush(self, entries: Iterable[tuple[abi.AggKey, abi.AggValue]]) -> list[Violation]:
        """Residual records for every aggregate map entry (e.g. ``Guard.aggregates()``)."""
        out = []
        for agg_key, agg_value in entries:
            v = self.from_residual(agg_key, agg_value)
            if v is not None:
                out.append(v)
        return out

    def forget_cgroup(self, cgroup_id: int) -> None:
        """Drop all state of a cgroup (after its aggregate entries were flushed and
        deleted, and the ring buffer drained)."""
        with self._lock:
            self._tracker.forget_cgroup(cgroup_id)
            for key in [k for k in self._templates if k.cgroup_id == cgroup_id]:
                del self._templates[key]

    # ------------------------------------------------------------------ internals ---

    def _template_of(self, raw: RawRecord) -> _Template:
        h = raw.hdr
        is_exec = isinstance(raw, RawExec)
        if self._enricher is not None:
            process = self._enricher.lookup(h.pid, h.tid, h.comm, fresh=is_exec)
        else:
            process = ProcessInfo(pid=h.pid, tid=h.tid, name=h.comm)
        return _Template(
            verdict=verdict_name(h.verdict),
            process=process,
            egress=egress_detail(raw) if isinstance(raw, RawEgress) else None,
            exec=exec_detail(raw) if isinstance(raw, RawExec) else None,
        )

    def _guessed_template(self, key: AggregationKey, kind: Kind) -> _Template:
        policy = self._policies.get(key.policy_id)
        verdict: Verdict = "audited" if policy is not None and policy.mode == "audit" else "blocked"
        return _Template(
            verdict=verdict,
            process=ProcessInfo(pid=0, tid=0, name=""),
            egress=guessed_egress_detail(key) if kind == "egress" else None,
            exec=unknown_exec_detail(key) if kind == "exec" else None,
        )

    def _workload(self, cgroup_id: int) -> WorkloadRef | None:
        if self._workload_of is None:
            return None
        try:
            return self._workload_of(cgroup_id)
        except Exception as err:  # identity lookups must never stop event delivery
            _log.debug("workload_lookup_failed", cgroup_id=cgroup_id, error=str(err))
            return None

    def _violation(
        self,
        *,
        kind: Kind,
        key: AggregationKey,
        template: _Template,
        count: int,
        since_ns: int,
        at_ns: int,
    ) -> Violation:
        policy = self._policies.get(key.policy_id) or unknown_policy(
            key.policy_id, template.verdict
        )
        time_ms = self._clock.wall_ms(at_ns)
        self._sequence += 1
        return Violation(
            uid=self._new_uid(),
            sequence=self._sequence,
            kind=kind,
            time_ms=time_ms,
            first_time_ms=min(self._clock.wall_ms(since_ns), time_ms),
            count=count,
            verdict=template.verdict,
            cgroup_id=key.cgroup_id,
            process=template.process,
            policy=policy,
            egress=template.egress,
            exec=template.exec,
            workload=self._workload(key.cgroup_id),
            node=self._node,
        )
