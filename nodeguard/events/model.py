"""The canonical violation record, decoded from the kernel and enriched in user space.

This is the one internal representation; OCSF JSON (``events/ocsf.py``), the summary
and the ``nodeguard.v1`` protobuf (``events/wire.py``) are projections of it.

The per-record classes are plain (not frozen) slotted dataclasses: a frozen dataclass's
``__init__`` costs about 4x as much, and one of each is built per kernel record, tens of
thousands per second. Treat them as values all the same: nothing mutates a record after
it was built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["egress", "exec", "syscall", "socket", "limit"]
Verdict = Literal["blocked", "audited"]
SyscallMechanism = Literal["seccomp-kill", "tracepoint"]
SocketHook = Literal["cgroup-sock-create", "seccomp-notify", "tracepoint"]
LimitName = Literal["maxProcesses", "forksPerSecond", "execsPerSecond"]


@dataclass(frozen=True, slots=True)
class PolicyRef:
    name: str
    uid: str
    version: str
    mode: Literal["enforce", "audit"]


@dataclass(slots=True)
class EgressDetail:
    ip: str  # IPv4 dotted quad for IPv4 and IPv4-mapped destinations, else IPv6 text
    port: int
    protocol: Literal["tcp", "udp"] | str  # str: other IPPROTO numbers as "ip-proto-N"
    family: Literal[4, 6]  # address family the caller used (6 for ::ffff:a.b.c.d)
    hook: Literal["connect4", "connect6", "sendmsg4", "sendmsg6"]


@dataclass(slots=True)
class ExecDetail:
    path: str
    truncated: bool  # path longer than the kernel checks (always denied)


@dataclass(slots=True)
class SyscallDetail:
    """A denied syscall. ``seccomp-kill``: the filter killed the caller before the call
    ran; ``tracepoint``: seen at sys_enter under audit, the call went ahead."""

    name: str  # e.g. "ptrace"; "syscall_<nr>(<arch>)" when the table has no such number
    number: int  # in the caller's ABI
    arch: Literal["x86_64", "i386", "arm64"] | str  # str: "audit-arch-0x<hex>" (unknown)
    mechanism: SyscallMechanism


@dataclass(slots=True)
class SocketDetail:
    """A denied socket(family, type, protocol)."""

    family: str  # readable AF_* name, e.g. "packet", "netlink", "inet6"; "af<N>" if unknown
    family_number: int
    type: str  # readable SOCK_* name, e.g. "raw", "dgram"
    type_number: int
    protocol: int
    protocol_name: str | None  # netlink protocols by name (e.g. "audit"), else None
    hook: SocketHook


@dataclass(slots=True)
class LimitDetail:
    """A broken process budget. ``budget`` is maxProcesses or the rate per second;
    ``burst`` only for rates. None: not known (a residual record of a key whose records
    were all lost: the aggregate map holds the kind and the count, not the numbers)."""

    limit: LimitName | str  # str: "limit-<N>", an unknown kind read from the aggregate map
    budget: int | None
    burst: int | None
    observed_processes: int | None  # live processes in the pod when it was broken


@dataclass(slots=True)
class ProcessInfo:
    """Best-effort enrichment from /proc (the process may already be gone)."""

    pid: int
    tid: int
    name: str  # kernel comm
    path: str | None = None  # /proc/PID/exe
    cmd_line: str | None = None
    ppid: int | None = None


@dataclass(frozen=True, slots=True)
class WorkloadRef:
    """Pod/container identity (filled by the node agent; None under ``nodeguard run``)."""

    namespace: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None
    pod_labels: dict[str, str] = field(default_factory=dict)
    container_id: str | None = None
    container_name: str | None = None
    image: str | None = None  # image reference, e.g. ghcr.io/acme/agent:1.2
    image_id: str | None = None  # resolved image id (CRI imageRef, sha256:...)


@dataclass(slots=True)
class Violation:
    """One record. Exactly one of the details (``egress``, ``exec``, ``syscall``,
    ``socket``, ``limit``) is set: the one named by ``kind``."""

    uid: str  # UUIDv7
    sequence: int  # per-producer monotonically increasing
    kind: Kind
    time_ms: int  # wall clock, ms since epoch, of the latest attempt in this record
    # wall clock of the earliest attempt this record may stand for: the aggregate's first
    # attempt for its first record, else the previous record's time (a lower bound)
    first_time_ms: int
    count: int  # attempts this record stands for (>= 1), all in [first_time_ms, time_ms]
    verdict: Verdict
    cgroup_id: int
    process: ProcessInfo
    policy: PolicyRef
    egress: EgressDetail | None = None
    exec: ExecDetail | None = None
    workload: WorkloadRef | None = None
    node: str | None = None
    syscall: SyscallDetail | None = None
    socket: SocketDetail | None = None
    limit: LimitDetail | None = None
