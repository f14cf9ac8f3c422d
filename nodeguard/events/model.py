"""The canonical violation record, decoded from the kernel and enriched in user space.

This is the one internal representation; OCSF JSON (``events/ocsf.py``), the summary
and (later) protobuf are projections of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["egress", "exec"]
Verdict = Literal["blocked", "audited"]


@dataclass(frozen=True, slots=True)
class PolicyRef:
    name: str
    uid: str
    version: str
    mode: Literal["enforce", "audit"]


@dataclass(frozen=True, slots=True)
class EgressDetail:
    ip: str  # IPv4 dotted quad for IPv4 and IPv4-mapped destinations, else IPv6 text
    port: int
    protocol: Literal["tcp", "udp"] | str  # str: other IPPROTO numbers as "ip-proto-N"
    family: Literal[4, 6]  # address family the caller used (6 for ::ffff:a.b.c.d)
    hook: Literal["connect4", "connect6", "sendmsg4", "sendmsg6"]


@dataclass(frozen=True, slots=True)
class ExecDetail:
    path: str
    truncated: bool  # path longer than the kernel checks (always denied)


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Violation:
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
