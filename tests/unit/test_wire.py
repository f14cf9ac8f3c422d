"""events/wire.py: Violation <-> nodeguard.v1 protobuf, lossless; WireEncoder's bytes are
the same message as to_proto's."""

from __future__ import annotations

import dataclasses

import pytest

from nodeguard.events.model import (
    EgressDetail,
    ExecDetail,
    LimitDetail,
    PolicyRef,
    ProcessInfo,
    SocketDetail,
    SyscallDetail,
    Violation,
    WorkloadRef,
)
from nodeguard.events.wire import WireEncoder, WireFormatError, from_proto, to_proto
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

POLICY = PolicyRef("research-agent", "6f1c", "3", "enforce")
PROC = ProcessInfo(pid=41, tid=42, name="python3", path="/usr/bin/python3", cmd_line="a b", ppid=1)
POD = WorkloadRef(
    namespace="agents",
    pod_name="research-0",
    pod_uid="0f3c",
    pod_labels={"app": "research-agent", "team": "ml"},
    container_id="abc",
    container_name="agent",
    image="ghcr.io/acme/agent:1.2",
    image_id="sha256:0123",
)
DETAILS: dict[str, dict[str, object]] = {
    "egress": {"egress": EgressDetail("fd00::1", 443, "tcp", 6, "connect6")},
    "exec": {"exec": ExecDetail("/bin/wget", truncated=False)},
    "syscall": {"syscall": SyscallDetail("ptrace", 101, "x86_64", "seccomp-kill")},
    "socket": {"socket": SocketDetail("netlink", 16, "raw", 3, 9, "audit", "seccomp-notify")},
    "limit": {"limit": LimitDetail("forksPerSecond", 20, 40, None)},
}


def violation(kind: str, n: int = 0, **fields: object) -> Violation:
    base: dict[str, object] = {
        "uid": f"01900000-0000-7000-8000-{n:012x}",
        "sequence": n + 1,
        "kind": kind,
        "time_ms": 1_700_000_000_000 + n,
        "first_time_ms": 1_700_000_000_000,
        "count": 1 + n,
        "verdict": "blocked",
        "cgroup_id": 4242,
        "process": PROC,
        "policy": POLICY,
        "workload": POD,
        "node": "node-a",
        **DETAILS[kind],
    }
    base.update(fields)
    return Violation(**base)  # type: ignore[arg-type]


ALL = [violation(k, i) for i, k in enumerate(DETAILS)] + [
    violation("egress", 9, workload=None, node=None, verdict="audited"),
    violation("exec", 10, process=ProcessInfo(pid=0, tid=0, name="")),
]


@pytest.mark.parametrize("v", ALL, ids=lambda v: f"{v.kind}-{v.sequence}")
def test_round_trip_is_lossless(v: Violation) -> None:
    assert from_proto(pb.Violation.FromString(to_proto(v).SerializeToString())) == v


@pytest.mark.parametrize("v", ALL, ids=lambda v: f"{v.kind}-{v.sequence}")
def test_encoder_bytes_are_the_same_message(v: Violation) -> None:
    encoder = WireEncoder()
    for _ in range(2):  # cold, then from the cache
        assert pb.Violation.FromString(encoder.encode(v)) == to_proto(v)


def test_encoder_never_reuses_another_objects_part() -> None:
    encoder = WireEncoder(max_entries=2)
    a = violation("egress", 1)
    b = dataclasses.replace(a, process=ProcessInfo(pid=7, tid=7, name="curl"), uid="x")
    c = dataclasses.replace(a, workload=dataclasses.replace(POD, pod_name="other"), uid="y")
    for v in (a, b, c, a, b, c):
        assert from_proto(pb.Violation.FromString(encoder.encode(v))) == v


def test_incomplete_messages_are_refused() -> None:
    m = to_proto(violation("exec"))
    m.ClearField("exec")
    with pytest.raises(WireFormatError, match="carries detail none"):
        from_proto(m)
    m = to_proto(violation("egress"))
    m.kind = 99  # type: ignore[assignment]
    with pytest.raises(WireFormatError, match="unknown kind"):
        from_proto(m)
