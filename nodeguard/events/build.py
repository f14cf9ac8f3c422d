"""Decoded records and aggregate map entries -> canonical :class:`Violation` records.

One :class:`ViolationBuilder` per producer (node agent, ``nodeguard run``): it owns the
sequence numbers, the cumulative-count tracker and, per aggregation key, the details of
the last record seen, which residual records (attempts no record reported, recovered from
the aggregate map) reuse because the map entry alone holds no path, pid or hook.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
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
from nodeguard.events.decode import (
    AF_INET,
    AF_INET6,
    AnyRecord,
    RawEgress,
    RawExec,
    RawLimit,
    RawSocket,
    RawSyscall,
)
from nodeguard.events.enrich import ProcessEnricher
from nodeguard.events.model import (
    EgressDetail,
    ExecDetail,
    Kind,
    LimitDetail,
    LimitName,
    PolicyRef,
    ProcessInfo,
    SocketDetail,
    SocketHook,
    SyscallDetail,
    SyscallMechanism,
    Verdict,
    Violation,
    WorkloadRef,
)
from nodeguard.events.uuid7 import uuid7
from nodeguard.policy.sockets import AF_NETLINK, family_name, netlink_protocol_name, type_name
from nodeguard.policy.syscalls import syscall_name

_log = structlog.get_logger("nodeguard.events.build")

IPPROTO_TCP = 6
_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
IPPROTO_UDP = 17

Hook = Literal["connect4", "connect6", "sendmsg4", "sendmsg6"]
_HOOKS: dict[int, Hook] = {
    abi.Hook.CONNECT4: "connect4",
    abi.Hook.CONNECT6: "connect6",
    abi.Hook.SENDMSG4: "sendmsg4",
    abi.Hook.SENDMSG6: "sendmsg6",
}
_KINDS: dict[int, Kind] = {
    abi.Op.EGRESS: "egress",
    abi.Op.EXEC: "exec",
    abi.Op.SYSCALL: "syscall",
    abi.Op.SOCKET: "socket",
    abi.Op.LIMIT: "limit",
}

# AUDIT_ARCH_* (linux/audit.h): the ABI a syscall was made in
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCHES: dict[int, str] = {
    AUDIT_ARCH_X86_64: "x86_64",
    AUDIT_ARCH_I386: "i386",
    AUDIT_ARCH_AARCH64: "arm64",
}
_MECHANISMS: dict[int, SyscallMechanism] = {
    abi.SyscallMechanism.SECCOMP_KILL: "seccomp-kill",
    abi.SyscallMechanism.TRACEPOINT: "tracepoint",
}
_SOCK_HOOKS: dict[int, SocketHook] = {
    abi.SockHook.CGROUP: "cgroup-sock-create",
    abi.SockHook.SECCOMP_NOTIFY: "seccomp-notify",
    abi.SockHook.TRACEPOINT: "tracepoint",
}
_LIMIT_NAMES: dict[int, LimitName] = {
    abi.Limit.PROCESSES: "maxProcesses",
    abi.Limit.FORK_RATE: "forksPerSecond",
    abi.Limit.EXEC_RATE: "execsPerSecond",
}
_U32 = 0xFFFFFFFF


class WallClock(Protocol):
    def wall_ms(self, mono_ns: int) -> int: ...


WorkloadResolver = Callable[[int], WorkloadRef | None]  # cgroup id -> pod/container


# ------------------------------------------------------------------ pure helpers ---


def ip_text(addr: bytes) -> str:
    """IPv4 dotted quad for IPv4-mapped addresses, else compressed IPv6 text."""
    if addr[:12] == _V4_MAPPED_PREFIX:  # the common case, without ipaddress objects
        return socket.inet_ntop(socket.AF_INET, bytes(addr[12:16]))
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


# ---- syscall, socket and limit records ----


def arch_name(audit_arch: int) -> str:
    """``x86_64``, ``i386``, ``arm64``, or ``audit-arch-0x<hex>`` for any other ABI."""
    return AUDIT_ARCHES.get(audit_arch) or f"audit-arch-0x{audit_arch:08x}"


def syscall_text(number: int, arch: str) -> str:
    """The syscall's name, or ``syscall_<number>(<arch>)`` when the tables of ``arch``
    have no such number (or there are no tables for ``arch``)."""
    try:
        name = syscall_name(number, arch)
    except (ValueError, LookupError):  # an ABI without tables: still a violation
        name = None
    return name or f"syscall_{number}({arch})"


def syscall_detail(nr: int, audit_arch: int, mechanism: SyscallMechanism) -> SyscallDetail:
    arch = arch_name(audit_arch)
    return SyscallDetail(name=syscall_text(nr, arch), number=nr, arch=arch, mechanism=mechanism)


def socket_detail(family: int, sock_type: int, protocol: int, hook: SocketHook) -> SocketDetail:
    return SocketDetail(
        family=family_name(family),
        family_number=family,
        type=type_name(sock_type),
        type_number=sock_type,
        protocol=protocol,
        protocol_name=netlink_protocol_name(protocol) if family == AF_NETLINK else None,
        hook=hook,
    )


def limit_name(limit: int) -> LimitName | str:
    return _LIMIT_NAMES.get(limit) or f"limit-{limit}"


def raw_syscall_detail(raw: RawSyscall) -> SyscallDetail:
    return syscall_detail(raw.nr, raw.arch, _MECHANISMS[raw.mechanism])  # decode() checked


def raw_socket_detail(raw: RawSocket) -> SocketDetail:
    return socket_detail(raw.family, raw.type, raw.protocol, _SOCK_HOOKS[raw.hook])


def raw_limit_detail(raw: RawLimit) -> LimitDetail:
    return LimitDetail(
        limit=limit_name(raw.limit),
        budget=raw.budget,
        burst=None if raw.limit == abi.Limit.PROCESSES else raw.burst,
        observed_processes=raw.observed,
    )


# ---- aggregation keys of syscall, socket and limit records (struct ng_agg_key.addr) ----


def syscall_key_addr(nr: int, audit_arch: int) -> bytes:
    """nr, arch as u32 LE in [0..8), zeros after."""
    return struct.pack("<II8x", nr & _U32, audit_arch & _U32)


def socket_key_addr(family: int, sock_type: int, protocol: int) -> bytes:
    """family, type, protocol as u32 LE in [0..12), zeros after."""
    return struct.pack("<III4x", family & _U32, sock_type & _U32, protocol & _U32)


def limit_key_addr(limit: int) -> bytes:
    """The limit kind as u32 LE in [0..4), zeros after."""
    return struct.pack("<I12x", limit & _U32)


def _addr_words(key: AggregationKey) -> tuple[int, int, int, int]:
    words: tuple[int, int, int, int] = struct.unpack("<4I", bytes(key.addr[:16]).ljust(16, b"\0"))
    return words


def record_key(raw: AnyRecord) -> AggregationKey:
    """The key the kernel counted this record under (every op; egress and exec keys come
    from :func:`nodeguard.events.aggregate.key_of_record`)."""
    h = raw.hdr
    if isinstance(raw, RawSyscall):
        addr = syscall_key_addr(raw.nr, raw.arch)
    elif isinstance(raw, RawSocket):
        addr = socket_key_addr(raw.family, raw.type, raw.protocol)
    elif isinstance(raw, RawLimit):
        addr = limit_key_addr(raw.limit)
    else:
        return key_of_record(raw)
    return AggregationKey(h.cgroup_id, h.policy_id, h.op, 0, addr, 0, 0)


def guessed_syscall_detail(key: AggregationKey, verdict: Verdict) -> SyscallDetail:
    """Syscall details from an aggregation key alone (the mechanism follows the verdict,
    as the kernel's does)."""
    nr, audit_arch, _, _ = _addr_words(key)
    return syscall_detail(nr, audit_arch, "tracepoint" if verdict == "audited" else "seccomp-kill")


def guessed_socket_detail(key: AggregationKey, verdict: Verdict) -> SocketDetail:
    """Socket details from an aggregation key alone (the hook is a guess: the kernel
    counts only its own hooks, cgroup sock_create for AF_INET/AF_INET6 and the
    tracepoint in audit; seccomp notifications are counted by the supervisor)."""
    family, sock_type, protocol, _ = _addr_words(key)
    hook: SocketHook
    if verdict == "audited":
        hook = "tracepoint"
    elif family in (AF_INET, AF_INET6):
        hook = "cgroup-sock-create"
    else:
        hook = "seccomp-notify"
    return socket_detail(family, sock_type, protocol, hook)


def guessed_limit_detail(key: AggregationKey) -> LimitDetail:
    """Limit details from an aggregation key alone: the kind; the numbers are unknown."""
    limit = _addr_words(key)[0]
    return LimitDetail(limit=limit_name(limit), budget=None, burst=None, observed_processes=None)


def unknown_policy(policy_id: int, verdict: Verdict) -> PolicyRef:
    return PolicyRef(
        name="unknown",
        uid=f"unknown:{policy_id}",
        version="",
        mode="audit" if verdict == "audited" else "enforce",
    )


@dataclass(slots=True)  # not frozen: built per record, frozen init costs 4x
class _Template:
    """What a residual record of a key reuses from the key's last record."""

    verdict: Verdict
    process: ProcessInfo
    egress: EgressDetail | None = None
    exec: ExecDetail | None = None
    syscall: SyscallDetail | None = None
    socket: SocketDetail | None = None
    limit: LimitDetail | None = None


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

    def take_reported(self) -> list[tuple[AggregationKey, int, int, int]]:
        """The tracker's keys changed since the last call (see CountTracker.take_dirty)."""
        with self._lock:
            return self._tracker.take_dirty()

    def from_record(self, raw: AnyRecord) -> Violation | None:
        """The violation a ring buffer record stands for, or None when every attempt it
        carries was already counted (a stale, out-of-order record)."""
        h = raw.hdr
        with self._lock:
            key = record_key(raw)
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

    def _template_of(self, raw: AnyRecord) -> _Template:
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
            syscall=raw_syscall_detail(raw) if isinstance(raw, RawSyscall) else None,
            socket=raw_socket_detail(raw) if isinstance(raw, RawSocket) else None,
            limit=raw_limit_detail(raw) if isinstance(raw, RawLimit) else None,
        )

    def _guessed_template(self, key: AggregationKey, kind: Kind) -> _Template:
        policy = self._policies.get(key.policy_id)
        verdict: Verdict = "audited" if policy is not None and policy.mode == "audit" else "blocked"
        return _Template(
            verdict=verdict,
            process=ProcessInfo(pid=0, tid=0, name=""),
            egress=guessed_egress_detail(key) if kind == "egress" else None,
            exec=unknown_exec_detail(key) if kind == "exec" else None,
            syscall=guessed_syscall_detail(key, verdict) if kind == "syscall" else None,
            socket=guessed_socket_detail(key, verdict) if kind == "socket" else None,
            limit=guessed_limit_detail(key) if kind == "limit" else None,
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
            syscall=template.syscall,
            socket=template.socket,
            limit=template.limit,
        )
