"""Issue 4 in user space: syscall, socket and limit records, end to end.

decode/encode -> aggregation keys (the kernel's ng_agg_key contract) -> ViolationBuilder
(records and residuals, exact counts) -> OCSF Detection Finding (2004) -> the
`nodeguard run` lines and summary.
"""

from __future__ import annotations

import ctypes as ct
import dataclasses
import json
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest

from nodeguard.bpf import abi
from nodeguard.events.aggregate import key_of_agg, to_abi
from nodeguard.events.build import (
    AUDIT_ARCH_AARCH64,
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    arch_name,
    limit_key_addr,
    record_key,
    socket_key_addr,
    syscall_key_addr,
    syscall_text,
)
from nodeguard.events.decode import (
    LIMIT_SIZE,
    SOCKET_SIZE,
    SYSCALL_SIZE,
    AnyRecord,
    DecodeStats,
    RawLimit,
    RawSocket,
    RawSyscall,
    decode,
    encode,
)
from nodeguard.events.model import (
    LimitDetail,
    ProcessInfo,
    SocketDetail,
    SyscallDetail,
    Violation,
    WorkloadRef,
)
from nodeguard.events.ocsf import OCSF_VERSION, message, to_json_line, to_ocsf
from nodeguard.runner.report import RunReport, describe_violation, render_summary
from tests.unit.test_build import EPOCH_MS, MS, POLICY, agg_value, builder
from tests.unit.test_decode import header

AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_VSOCK = 2, 10, 16, 17, 40
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 1, 2, 3
NETLINK_AUDIT = 9
NR_PTRACE_X86_64, NR_PTRACE_I386, NR_PTRACE_ARM64 = 101, 26, 117
NR_SETNS_X86_64 = 308


# ------------------------------------------------------------------ records ---


def syscall_record(
    nr: int = NR_PTRACE_X86_64,
    arch: int = AUDIT_ARCH_X86_64,
    mechanism: int = abi.SyscallMechanism.SECCOMP_KILL,
    **fields: object,
) -> RawSyscall:
    fields = {"size": SYSCALL_SIZE, "comm": "python3", **fields}
    return RawSyscall(
        hdr=header(abi.Op.SYSCALL, **fields),
        nr=nr,
        arch=arch,
        mechanism=int(mechanism),
    )


def socket_record(
    family: int = AF_PACKET,
    sock_type: int = SOCK_RAW,
    protocol: int = 0,
    hook: int = abi.SockHook.SECCOMP_NOTIFY,
    **fields: object,
) -> RawSocket:
    fields = {"size": SOCKET_SIZE, "comm": "scapy", **fields}
    return RawSocket(
        hdr=header(abi.Op.SOCKET, **fields),
        family=family,
        type=sock_type,
        protocol=protocol,
        hook=int(hook),
    )


def limit_record(
    limit: int = abi.Limit.FORK_RATE,
    budget: int = 20,
    burst: int = 40,
    observed: int = 37,
    **fields: object,
) -> RawLimit:
    fields = {"size": LIMIT_SIZE, "comm": "sh", **fields}
    return RawLimit(
        hdr=header(abi.Op.LIMIT, **fields),
        limit=int(limit),
        budget=budget,
        burst=burst,
        observed=observed,
    )


def with_hdr(raw: AnyRecord, **fields: object) -> AnyRecord:
    return dataclasses.replace(raw, hdr=dataclasses.replace(raw.hdr, **fields))  # type: ignore[arg-type]


RECORDS: dict[str, Callable[..., AnyRecord]] = {
    "syscall": syscall_record,
    "socket": socket_record,
    "limit": limit_record,
}


# ------------------------------------------------------------------- decode ---


@pytest.mark.parametrize("kind", sorted(RECORDS))
@pytest.mark.parametrize("verdict", [abi.Verdict.BLOCKED, abi.Verdict.AUDITED])
def test_round_trip(kind: str, verdict: abi.Verdict) -> None:
    stats = DecodeStats()
    raw = RECORDS[kind](verdict=int(verdict))
    data = encode(raw)
    assert len(data) == raw.hdr.size
    assert decode(data, stats) == raw
    assert stats.as_dict() == {"decoded": 1, "unknown_op": 0, "malformed": 0}


@pytest.mark.parametrize(
    ("raw", "struct_type"),
    [
        (syscall_record(), abi.SyscallEvent),
        (socket_record(), abi.SocketEvent),
        (limit_record(), abi.LimitEvent),
    ],
)
def test_encode_sizes_and_header(raw: AnyRecord, struct_type: type[ct.Structure]) -> None:
    data = encode(raw)
    assert len(data) == ct.sizeof(struct_type)
    op, size = struct.unpack_from("<HH", data)
    assert (op, size) == (raw.hdr.op, ct.sizeof(struct_type))


def test_sizes_match_the_abi() -> None:
    assert ct.sizeof(abi.SyscallEvent) == SYSCALL_SIZE
    assert ct.sizeof(abi.SocketEvent) == SOCKET_SIZE
    assert ct.sizeof(abi.LimitEvent) == LIMIT_SIZE


def test_syscall_from_ctypes_struct() -> None:
    ev = abi.SyscallEvent()
    ev.hdr.op = abi.Op.SYSCALL
    ev.hdr.size = ct.sizeof(ev)
    ev.hdr.verdict = abi.Verdict.BLOCKED
    ev.hdr.pid = 77
    ev.hdr.comm = b"gdb"
    ev.nr = NR_PTRACE_I386
    ev.arch = AUDIT_ARCH_I386
    ev.mechanism = abi.SyscallMechanism.SECCOMP_KILL
    raw = decode(bytes(ev))
    assert isinstance(raw, RawSyscall)
    assert (raw.nr, raw.arch, raw.mechanism) == (26, 0x40000003, 1)
    assert (raw.hdr.op, raw.hdr.pid, raw.hdr.comm) == (3, 77, "gdb")


def test_socket_from_ctypes_struct() -> None:
    ev = abi.SocketEvent()
    ev.hdr.op = abi.Op.SOCKET
    ev.hdr.size = ct.sizeof(ev)
    ev.hdr.verdict = abi.Verdict.AUDITED
    ev.family, ev.type, ev.protocol = AF_NETLINK, SOCK_RAW, NETLINK_AUDIT
    ev.hook = abi.SockHook.TRACEPOINT
    raw = decode(bytes(ev))
    assert isinstance(raw, RawSocket)
    assert (raw.family, raw.type, raw.protocol, raw.hook) == (16, 3, 9, 3)
    assert raw.hdr.verdict == abi.Verdict.AUDITED


def test_limit_from_ctypes_struct_with_negative_observed() -> None:
    ev = abi.LimitEvent()
    ev.hdr.op = abi.Op.LIMIT
    ev.hdr.size = ct.sizeof(ev)
    ev.hdr.verdict = abi.Verdict.BLOCKED
    ev.limit, ev.budget, ev.burst, ev.observed = abi.Limit.PROCESSES, 50, 0, -1
    raw = decode(bytes(ev))
    assert isinstance(raw, RawLimit)
    assert (raw.limit, raw.budget, raw.burst, raw.observed) == (1, 50, 0, -1)
    assert decode(encode(raw)) == raw


def test_unknown_arch_and_large_numbers_still_decode() -> None:
    raw = syscall_record(nr=0x7FFFFFFF, arch=0x12345678)
    assert decode(encode(raw)) == raw
    big = socket_record(family=0xFFFF, sock_type=0xF, protocol=0xFFFFFFFF)
    assert decode(encode(big)) == big


def test_supervisor_made_socket_record_round_trips() -> None:
    # What the `nodeguard run` supervisor synthesizes for a socket() its seccomp listener
    # refused: hook SECCOMP_NOTIFY, not aggregated (count_total 0).
    raw = socket_record(
        family=AF_VSOCK,
        sock_type=SOCK_STREAM,
        hook=abi.SockHook.SECCOMP_NOTIFY,
        count_total=0,
        first_ns=0,
        comm="agent-worker-01",  # 15 bytes: the longest comm there is
    )
    assert decode(encode(raw)) == raw
    v = builder().from_record(raw)
    assert v is not None and v.count == 1 and v.socket is not None
    assert (v.socket.family, v.socket.type, v.socket.hook) == ("vsock", "stream", "seccomp-notify")


@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_trailing_padding_and_larger_size_accepted(kind: str) -> None:
    raw = RECORDS[kind]()
    assert decode(encode(raw) + bytes(8)) == raw
    bigger = with_hdr(raw, size=raw.hdr.size + 8)
    got = decode(encode(bigger) + bytes(8))
    assert got is not None and type(got) is type(raw)


@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_malformed_sizes_are_counted(kind: str) -> None:
    stats = DecodeStats()
    raw = RECORDS[kind]()
    data = encode(raw)
    assert decode(data[:-1], stats) is None  # shorter than hdr.size
    assert decode(data[: ct.sizeof(abi.EventHdr) + 4], stats) is None  # truncated body
    assert decode(encode(with_hdr(raw, size=raw.hdr.size - 4)), stats) is None  # size < struct
    assert decode(encode(with_hdr(raw, size=raw.hdr.size + 64)), stats) is None  # size > data
    assert decode(encode(with_hdr(raw, verdict=0)), stats) is None
    assert stats.as_dict() == {"decoded": 0, "unknown_op": 0, "malformed": 5}


@pytest.mark.parametrize(
    "raw",
    [
        syscall_record(mechanism=0),
        syscall_record(mechanism=3),
        socket_record(hook=0),
        socket_record(hook=4),
        limit_record(limit=0),
        limit_record(limit=4),
    ],
)
def test_unknown_enum_values_are_malformed(raw: AnyRecord) -> None:
    stats = DecodeStats()
    assert decode(encode(raw), stats) is None
    assert stats.as_dict() == {"decoded": 0, "unknown_op": 0, "malformed": 1}


def test_op_6_is_still_unknown() -> None:
    stats = DecodeStats()
    assert decode(encode(with_hdr(limit_record(), op=6)), stats) is None
    assert stats.unknown_op == 1


def test_garbage_with_new_ops_never_raises() -> None:
    stats = DecodeStats()
    rng = random.Random(4)  # noqa: S311 (a reproducible fuzz, not crypto)
    enum_field = {3: abi.SyscallEvent.mechanism, 4: abi.SocketEvent.hook, 5: abi.LimitEvent.limit}
    verdict_offset = abi.EventHdr.verdict.offset
    for _ in range(3000):
        data = bytearray(rng.randrange(256) for _ in range(rng.randrange(0, LIMIT_SIZE + 16)))
        op = rng.choice([3, 4, 5])
        if len(data) >= 4:  # a new op with a plausible size
            data[0:4] = struct.pack("<HH", op, rng.randrange(SYSCALL_SIZE - 8, LIMIT_SIZE + 8))
        if len(data) >= verdict_offset + 4:
            data[verdict_offset : verdict_offset + 4] = struct.pack("<I", rng.choice([1, 2, 7]))
        offset = enum_field[op].offset
        if len(data) >= offset + 4:
            data[offset : offset + 4] = struct.pack("<I", rng.choice([0, 1, 2, 3, 9]))
        decode(bytes(data), stats)
    assert stats.decoded + stats.unknown_op + stats.malformed == 3000
    assert stats.decoded > 0 and stats.malformed > 0


# ------------------------------------------------------------ aggregation keys ---


def kernel_agg_key(raw: AnyRecord, words: tuple[int, ...]) -> abi.AggKey:
    """ng_agg_key as the BPF side fills it: zeroed, then u32 words memcpy'd into addr."""
    key = abi.AggKey()
    ct.memset(ct.addressof(key), 0, ct.sizeof(key))
    key.cgroup_id = raw.hdr.cgroup_id
    key.policy_id = raw.hdr.policy_id
    key.op = raw.hdr.op
    for i, word in enumerate(words):
        ct.memmove(ct.addressof(key.addr) + 4 * i, struct.pack("<I", word), 4)
    return key


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (syscall_record(), (NR_PTRACE_X86_64, AUDIT_ARCH_X86_64)),
        (syscall_record(NR_PTRACE_I386, AUDIT_ARCH_I386), (NR_PTRACE_I386, AUDIT_ARCH_I386)),
        (socket_record(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT), (AF_NETLINK, SOCK_RAW, 9)),
        (limit_record(abi.Limit.EXEC_RATE), (int(abi.Limit.EXEC_RATE),)),
    ],
)
def test_record_key_is_the_kernels_key(raw: AnyRecord, words: tuple[int, ...]) -> None:
    key = record_key(raw)
    assert key == key_of_agg(kernel_agg_key(raw, words))
    assert bytes(to_abi(key)) == bytes(kernel_agg_key(raw, words))
    assert (key.port, key.protocol, key.family) == (0, 0, 0)


def test_key_addr_layout() -> None:
    assert syscall_key_addr(0x65, 0xC000003E) == bytes.fromhex("650000003e0000c0") + bytes(8)
    assert socket_key_addr(17, 3, 0x0300) == bytes.fromhex("110000000300000000030000") + bytes(4)
    assert limit_key_addr(2) == bytes.fromhex("02000000") + bytes(12)


def test_keys_differ_per_detail() -> None:
    keys = {
        record_key(syscall_record()),
        record_key(syscall_record(nr=NR_SETNS_X86_64)),
        record_key(syscall_record(arch=AUDIT_ARCH_I386)),
        record_key(socket_record()),
        record_key(socket_record(sock_type=SOCK_DGRAM)),
        record_key(socket_record(protocol=1)),
        record_key(limit_record()),
        record_key(limit_record(limit=abi.Limit.PROCESSES)),
    }
    assert len(keys) == 8
    # the hook, mechanism and numbers of a record are not part of its key
    assert record_key(socket_record(hook=abi.SockHook.CGROUP)) == record_key(socket_record())
    assert record_key(limit_record(budget=1, observed=2)) == record_key(limit_record())


# ----------------------------------------------------------------- builder ---


def test_syscall_violation() -> None:
    v = builder().from_record(syscall_record())
    assert v is not None
    assert (v.kind, v.verdict, v.count, v.sequence) == ("syscall", "blocked", 1, 1)
    assert v.syscall == SyscallDetail(
        name="ptrace", number=101, arch="x86_64", mechanism="seccomp-kill"
    )
    assert (v.egress, v.exec, v.socket, v.limit) == (None, None, None, None)
    assert v.process == ProcessInfo(pid=4242, tid=4243, name="python3")
    assert (v.policy, v.cgroup_id, v.time_ms) == (POLICY, 0x1234, EPOCH_MS + 5000)


@pytest.mark.parametrize(
    ("nr", "audit_arch", "arch", "name"),
    [
        (NR_PTRACE_X86_64, AUDIT_ARCH_X86_64, "x86_64", "ptrace"),
        (NR_PTRACE_I386, AUDIT_ARCH_I386, "i386", "ptrace"),
        (NR_PTRACE_ARM64, AUDIT_ARCH_AARCH64, "arm64", "ptrace"),
        (9999, AUDIT_ARCH_X86_64, "x86_64", "syscall_9999(x86_64)"),
        (26, 0x12345678, "audit-arch-0x12345678", "syscall_26(audit-arch-0x12345678)"),
    ],
)
def test_syscall_names(nr: int, audit_arch: int, arch: str, name: str) -> None:
    v = builder().from_record(syscall_record(nr=nr, arch=audit_arch))
    assert v is not None and v.syscall is not None
    assert (v.syscall.name, v.syscall.number, v.syscall.arch) == (name, nr, arch)


def test_arch_name_and_syscall_text() -> None:
    assert [arch_name(a) for a in (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64)] == [
        "x86_64",
        "i386",
        "arm64",
    ]
    assert arch_name(0) == "audit-arch-0x00000000"
    assert syscall_text(NR_SETNS_X86_64, "x86_64") == "setns"
    assert syscall_text(1, "mips") == "syscall_1(mips)"


def test_audited_syscall() -> None:
    raw = syscall_record(
        mechanism=abi.SyscallMechanism.TRACEPOINT, verdict=int(abi.Verdict.AUDITED)
    )
    v = builder().from_record(raw)
    assert v is not None and v.syscall is not None
    assert (v.verdict, v.syscall.mechanism) == ("audited", "tracepoint")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            socket_record(),
            SocketDetail("packet", 17, "raw", 3, 0, None, "seccomp-notify"),
        ),
        (
            socket_record(AF_INET6, SOCK_RAW, 58, hook=abi.SockHook.CGROUP),
            SocketDetail("inet6", 10, "raw", 3, 58, None, "cgroup-sock-create"),
        ),
        (
            socket_record(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT, hook=abi.SockHook.TRACEPOINT),
            SocketDetail("netlink", 16, "raw", 3, 9, "audit", "tracepoint"),
        ),
        (
            socket_record(250, SOCK_DGRAM, 0),
            SocketDetail("af250", 250, "dgram", 2, 0, None, "seccomp-notify"),
        ),
    ],
)
def test_socket_violation(raw: RawSocket, expected: SocketDetail) -> None:
    v = builder().from_record(raw)
    assert v is not None
    assert (v.kind, v.socket) == ("socket", expected)
    assert (v.egress, v.exec, v.syscall, v.limit) == (None, None, None, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (limit_record(), LimitDetail("forksPerSecond", 20, 40, 37)),
        (limit_record(abi.Limit.EXEC_RATE, 5, 10, 3), LimitDetail("execsPerSecond", 5, 10, 3)),
        (limit_record(abi.Limit.PROCESSES, 50, 0, 51), LimitDetail("maxProcesses", 50, None, 51)),
    ],
)
def test_limit_violation(raw: RawLimit, expected: LimitDetail) -> None:
    v = builder().from_record(raw)
    assert v is not None
    assert (v.kind, v.limit) == ("limit", expected)


def at(raw: AnyRecord, total: int, ts_ms: int, first_ms: int = 1000) -> AnyRecord:
    return with_hdr(raw, count_total=total, ts_ns=ts_ms * MS, first_ns=first_ms * MS)


@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_counts_from_records_and_residual_are_exact(kind: str) -> None:
    b = builder()
    raw = RECORDS[kind]()
    counts = []
    for total, ts in ((1, 1000), (5, 2000), (4, 1500), (9, 3000)):  # (4: late, stale)
        v = b.from_record(at(raw, total, ts))
        counts.append(None if v is None else v.count)
    assert counts == [1, 4, None, 4]
    key = to_abi(record_key(raw))
    residual = b.from_residual(key, agg_value(23, 1000 * MS, 3900 * MS))
    assert residual is not None
    assert residual.kind == kind
    assert residual.count == 14
    assert (residual.first_time_ms, residual.time_ms) == (EPOCH_MS + 3000, EPOCH_MS + 3900)
    assert residual.sequence == 4
    # the residual reuses the last record's details and process
    template = b.from_record(at(raw, 24, 4000))
    assert template is not None and template.count == 1
    for name in ("syscall", "socket", "limit"):
        assert getattr(residual, name) == getattr(template, name)
    assert residual.process.pid == 4242
    assert b.from_residual(key, agg_value(24, 1000 * MS, 4000 * MS)) is None


def test_residual_without_a_record_syscall() -> None:
    enforce = syscall_record(nr=NR_SETNS_X86_64)
    v = builder().from_residual(to_abi(record_key(enforce)), agg_value(3, MS, 9 * MS))
    assert v is not None
    assert (v.kind, v.count, v.verdict) == ("syscall", 3, "blocked")
    assert v.syscall == SyscallDetail("setns", 308, "x86_64", "seccomp-kill")
    assert v.process == ProcessInfo(pid=0, tid=0, name="")
    audit = syscall_record(arch=AUDIT_ARCH_I386, nr=NR_PTRACE_I386, policy_id=8)
    a = builder().from_residual(to_abi(record_key(audit)), agg_value(2, MS, 2 * MS))
    assert a is not None and a.verdict == "audited"
    assert a.syscall == SyscallDetail("ptrace", 26, "i386", "tracepoint")


@pytest.mark.parametrize(
    ("family", "policy_id", "hook"),
    [
        (AF_INET, 7, "cgroup-sock-create"),
        (AF_INET6, 7, "cgroup-sock-create"),
        (AF_PACKET, 7, "seccomp-notify"),
        (AF_PACKET, 8, "tracepoint"),
    ],
)
def test_residual_without_a_record_socket(family: int, policy_id: int, hook: str) -> None:
    raw = socket_record(family, SOCK_RAW, 0, policy_id=policy_id)
    v = builder().from_residual(to_abi(record_key(raw)), agg_value(6, MS, 2 * MS))
    assert v is not None and v.socket is not None
    assert (v.count, v.socket.family_number, v.socket.type, v.socket.hook) == (
        6,
        family,
        "raw",
        hook,
    )


def test_residual_without_a_record_limit() -> None:
    raw = limit_record(abi.Limit.PROCESSES)
    v = builder().from_residual(to_abi(record_key(raw)), agg_value(2, MS, 2 * MS))
    assert v is not None
    assert v.limit == LimitDetail("maxProcesses", None, None, None)
    key = to_abi(record_key(raw))
    ct.memmove(key.addr, limit_key_addr(9), 16)  # a kind this version does not know
    unknown = builder().from_residual(key, agg_value(1, MS, MS))
    assert unknown is not None and unknown.limit is not None
    assert unknown.limit.limit == "limit-9"


def test_flush_of_every_kind_adds_up() -> None:
    b = builder()
    records: list[AnyRecord] = [syscall_record(), socket_record(), limit_record()]
    got = [b.from_record(at(r, 2, 1000)) for r in records]
    entries = [
        (to_abi(record_key(r)), agg_value(n, 1000 * MS, 2000 * MS))
        for r, n in zip(records, (2, 10, 1000), strict=True)
    ]
    residuals = b.flush(entries)
    assert [v.kind for v in residuals] == ["socket", "limit"]
    total = sum(v.count for v in [*got, *residuals] if v is not None)
    assert total == 2 + 10 + 1000
    assert [v.sequence for v in residuals] == [4, 5]


def test_forget_cgroup_drops_new_kinds_too() -> None:
    b = builder()
    raw = limit_record()
    assert b.from_record(at(raw, 3, 1000)) is not None
    b.forget_cgroup(raw.hdr.cgroup_id)
    v = b.from_residual(to_abi(record_key(raw)), agg_value(3, 1000 * MS, 1000 * MS))
    assert v is not None and v.count == 3
    assert v.limit == LimitDetail("forksPerSecond", None, None, None)  # template forgotten


# -------------------------------------------------------------------- OCSF ---

T = 1_700_000_000_123
PROC = ProcessInfo(pid=4242, tid=4243, name="python3", path="/usr/bin/python3", ppid=1)
POD = WorkloadRef(
    namespace="agents",
    pod_name="research-0",
    pod_uid="0f3c8a4e",
    container_id="containerd://abc123",
    container_name="agent",
    image="ghcr.io/acme/agent:1.2",
    image_id="sha256:0123abcd",
)
PTRACE = SyscallDetail("ptrace", 101, "x86_64", "seccomp-kill")
PACKET = SocketDetail("packet", 17, "raw", 3, 0, None, "cgroup-sock-create")
AUDIT_NL = SocketDetail("netlink", 16, "raw", 3, 9, "audit", "seccomp-notify")
VSOCK = SocketDetail("vsock", 40, "stream", 1, 0, None, "seccomp-notify")
FORKS = LimitDetail("forksPerSecond", 20, 40, 37)
MAXPROC = LimitDetail("maxProcesses", 50, None, 51)
ICMP_RAW = SocketDetail("inet", 2, "raw", 3, 1, None, "tracepoint")
INET_PACKET = SocketDetail("inet", 2, "packet", 10, 0, None, "cgroup-sock-create")  # AF_PACKET
PACKET_ALL = SocketDetail("packet", 17, "raw", 3, 0x0300, None, "seccomp-notify")  # ETH_P_ALL
BY = "by python3 (pid 4242) under policy research-agent"


def finding(**fields: Any) -> Violation:
    base = Violation(
        uid="01890a5d-ac96-774b-bcce-b302099a8057",
        sequence=3,
        kind="syscall",
        time_ms=T,
        first_time_ms=T,
        count=1,
        verdict="blocked",
        cgroup_id=9876,
        process=PROC,
        policy=POLICY,
        node="node-a",
        syscall=PTRACE,
    )
    return dataclasses.replace(base, **fields)


def socket_finding(detail: SocketDetail = PACKET, **fields: Any) -> Violation:
    return finding(kind="socket", syscall=None, socket=detail, **fields)


def limit_finding(detail: LimitDetail = FORKS, **fields: Any) -> Violation:
    return finding(kind="limit", syscall=None, limit=detail, **fields)


MAKERS = [finding, socket_finding, limit_finding]
AUDIT_POLICY = dataclasses.replace(POLICY, mode="audit")


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("verdict", ["blocked", "audited"])
def test_detection_finding_class(make: Any, verdict: str) -> None:
    e = to_ocsf(make(verdict=verdict))
    assert (e["class_uid"], e["class_name"]) == (2004, "Detection Finding")
    assert (e["category_uid"], e["category_name"]) == (2, "Findings")
    assert (e["activity_id"], e["activity_name"]) == (1, "Create")
    assert e["type_uid"] == 200401 == e["class_uid"] * 100 + e["activity_id"]
    assert e["type_name"] == "Detection Finding: Create"
    assert (e["status_id"], e["status"]) == (1, "New")  # a finding's status is its workflow
    assert (e["confidence_id"], e["confidence"]) == (3, "High")
    assert e["is_alert"] is True
    # OCSF 1.4.0 required attributes (base_event, finding, finding_info, analytic)
    for name in ("activity_id", "category_uid", "class_uid", "severity_id", "time", "type_uid"):
        assert isinstance(e[name], int)
    assert {"product", "version"} <= set(e["metadata"])
    assert e["finding_info"]["uid"] == "01890a5d-ac96-774b-bcce-b302099a8057"
    assert e["finding_info"]["analytic"]["type_id"] == 1
    assert len(e["evidences"]) == 1


@pytest.mark.parametrize("make", MAKERS)
def test_blocked_and_audited_outcomes(make: Any) -> None:
    b = to_ocsf(make())
    assert (b["action_id"], b["action"], b["disposition_id"], b["disposition"]) == (
        2,
        "Denied",
        2,
        "Blocked",
    )
    a = to_ocsf(make(verdict="audited", policy=AUDIT_POLICY))
    assert (a["action_id"], a["action"], a["disposition_id"], a["disposition"]) == (
        1,
        "Allowed",
        17,
        "Logged",
    )
    assert a["unmapped"]["policy_mode"] == "audit"


@pytest.mark.parametrize(
    ("v", "blocked", "audited"),
    [
        (finding(), (4, "High"), (3, "Medium")),
        (socket_finding(PACKET), (4, "High"), (3, "Medium")),
        (socket_finding(ICMP_RAW), (4, "High"), (3, "Medium")),
        (socket_finding(INET_PACKET), (4, "High"), (3, "Medium")),
        (socket_finding(AUDIT_NL), (3, "Medium"), (2, "Low")),
        (socket_finding(VSOCK), (3, "Medium"), (2, "Low")),
        (limit_finding(), (3, "Medium"), (2, "Low")),
        (limit_finding(MAXPROC), (3, "Medium"), (2, "Low")),
    ],
)  # fmt: skip
def test_severity(v: Violation, blocked: tuple[int, str], audited: tuple[int, str]) -> None:
    e = to_ocsf(v)
    assert (e["severity_id"], e["severity"]) == blocked
    a = to_ocsf(dataclasses.replace(v, verdict="audited"))
    assert (a["severity_id"], a["severity"]) == audited


def test_syscall_finding_info_and_evidence() -> None:
    e = to_ocsf(finding())
    assert e["finding_info"] == {
        "uid": "01890a5d-ac96-774b-bcce-b302099a8057",
        "title": "Denied syscall ptrace",
        "desc": "python3 (pid 4242) called ptrace (number 101, x86_64), which policy "
        "research-agent denies; the seccomp filter killed it before the call ran.",
        "types": ["nodeguard/syscall"],
        "analytic": {
            "name": "research-agent",
            "uid": "research-agent@abc",
            "version": "abc",
            "type_id": 1,
            "type": "Rule",
        },
    }
    actor = {
        "process": {
            "pid": 4242,
            "tid": 4243,
            "name": "python3",
            "file": {
                "path": "/usr/bin/python3",
                "name": "python3",
                "type_id": 1,
                "type": "Regular File",
            },
            "parent_process": {"pid": 1},
        }
    }
    assert e["evidences"] == [
        {
            "actor": actor,
            "data": {
                "syscall": {
                    "name": "ptrace",
                    "number": 101,
                    "arch": "x86_64",
                    "mechanism": "seccomp-kill",
                }
            },
        }
    ]
    assert e["actor"] == actor
    assert e["unmapped"] == {"cgroup_id": 9876, "kind": "syscall", "policy_mode": "enforce"}
    for absent in ("process", "dst_endpoint", "connection_info"):
        assert absent not in e


def test_syscall_audited_desc() -> None:
    v = finding(verdict="audited", syscall=dataclasses.replace(PTRACE, mechanism="tracepoint"))
    assert to_ocsf(v)["finding_info"]["desc"].endswith(
        "; the call went ahead (audit), seen at syscall entry."
    )


def test_socket_finding_with_a_pod() -> None:
    e = to_ocsf(socket_finding(AUDIT_NL, workload=POD, count=3, first_time_ms=T - 50))
    container = {
        "uid": "containerd://abc123",
        "name": "agent",
        "image": {"name": "ghcr.io/acme/agent:1.2", "uid": "sha256:0123abcd"},
        "orchestrator": "kubernetes",
        "pod_uuid": "0f3c8a4e",
    }
    evidence = e["evidences"][0]
    assert evidence["container"] == container
    assert evidence["actor"]["process"]["container"] == container
    assert evidence["data"] == {
        "socket": {
            "family": "netlink",
            "family_num": 16,
            "type": "raw",
            "type_num": 3,
            "protocol": 9,
            "protocol_name": "audit",
            "hook": "seccomp-notify",
        }
    }
    assert e["finding_info"]["title"] == "Denied socket netlink:audit"
    assert e["finding_info"]["types"] == ["nodeguard/socket"]
    assert e["finding_info"]["desc"] == (
        "python3 (pid 4242) asked for a netlink:audit socket, a kind policy research-agent "
        "denies; socket() failed with EPERM (seccomp-notify)."
    )
    assert (e["count"], e["start_time"], e["end_time"], e["time"]) == (3, T - 50, T, T)
    assert "container" in e["metadata"]["profiles"]
    assert e["unmapped"]["hook"] == "seccomp-notify"
    assert e["unmapped"]["k8s"]["pod_name"] == "research-0"


def test_socket_data_without_protocol_name() -> None:
    data = to_ocsf(socket_finding())["evidences"][0]["data"]["socket"]
    assert data == {
        "family": "packet",
        "family_num": 17,
        "type": "raw",
        "type_num": 3,
        "protocol": 0,
        "hook": "cgroup-sock-create",
    }


def test_limit_finding() -> None:
    e = to_ocsf(limit_finding())
    assert e["finding_info"]["title"] == "Process budget forksPerSecond broken"
    assert e["finding_info"]["types"] == ["nodeguard/limit"]
    assert e["finding_info"]["desc"] == (
        "python3 (pid 4242) broke the forksPerSecond 20/s (burst 40) budget of policy "
        "research-agent with 37 processes in the pod; the process was killed."
    )
    assert e["evidences"][0]["data"] == {
        "limit": {"name": "forksPerSecond", "budget": 20, "burst": 40, "observed": 37}
    }
    m = to_ocsf(limit_finding(MAXPROC, verdict="audited"))
    assert m["evidences"][0]["data"] == {
        "limit": {"name": "maxProcesses", "budget": 50, "observed": 51}
    }
    assert m["finding_info"]["desc"].endswith("; nothing was stopped (audit).")


def test_limit_finding_with_unknown_numbers() -> None:
    v = limit_finding(
        LimitDetail("execsPerSecond", None, None, None), process=ProcessInfo(0, 0, "")
    )
    e = to_ocsf(v)
    assert e["evidences"][0]["data"] == {"limit": {"name": "execsPerSecond"}}
    assert "actor" not in e["evidences"][0]  # nothing known about the process: left out
    assert message(v) == (
        "killed execsPerSecond ?/s budget broken by unknown process (pid 0) under policy "
        "research-agent"
    )


@pytest.mark.parametrize(
    ("v", "text"),
    [
        (finding(), f"killed syscall ptrace (x86_64) {BY}"),
        (finding(verdict="audited", count=2), f"audited syscall ptrace (x86_64) {BY} (2 attempts)"),
        (socket_finding(workload=POD), f"blocked socket packet:raw {BY} in pod agents/research-0"),
        (socket_finding(ICMP_RAW, verdict="audited"), f"audited socket inet:raw protocol 1 {BY}"),
        (socket_finding(PACKET_ALL), f"blocked socket packet:raw {BY}"),  # ethertype: data only
        (
            limit_finding(count=5),
            f"killed forksPerSecond 20/s (burst 40) budget broken (37 processes) {BY} (5 attempts)",
        ),
        (limit_finding(MAXPROC), f"killed maxProcesses 50 budget broken (51 processes) {BY}"),
    ],
)
def test_message(v: Violation, text: str) -> None:
    assert message(v) == text
    assert to_ocsf(v)["message"] == text


def test_json_line_and_no_nulls() -> None:
    def walk(value: Any) -> None:
        assert value is not None
        if isinstance(value, dict):
            assert value, "empty object"
            for item in value.values():
                walk(item)
        if isinstance(value, list):
            assert value, "empty array"
            for item in value:
                walk(item)

    sparse = ProcessInfo(pid=0, tid=0, name="")
    for v in (
        finding(workload=POD),
        socket_finding(node=None),
        limit_finding(LimitDetail("maxProcesses", None, None, None), process=sparse),
        limit_finding(workload=WorkloadRef()),
    ):
        e = to_ocsf(v)
        walk(e)
        line = to_json_line(v, product_version="1.0.0")
        assert json.loads(line) == to_ocsf(v, product_version="1.0.0")
        assert json.loads(line)["metadata"]["version"] == OCSF_VERSION


def test_built_violation_projects() -> None:
    # decode -> build -> OCSF without hand-made details in between
    b = builder()
    for raw in (syscall_record(), socket_record(), limit_record()):
        v = b.from_record(decode_ok(encode(raw)))
        assert v is not None
        e = to_ocsf(v)
        assert e["type_uid"] == 200401
        assert e["finding_info"]["types"] == [f"nodeguard/{v.kind}"]


def decode_ok(data: bytes) -> AnyRecord:
    raw = decode(data)
    assert raw is not None
    return raw


# ------------------------------------------------------------------ report ---

WHO = "by python3[4242] policy=research-agent"
TRACED = dataclasses.replace(PTRACE, mechanism="tracepoint")


@pytest.mark.parametrize(
    ("v", "line"),
    [
        (finding(), f"BLOCKED syscall ptrace (x86_64, seccomp-kill) (killed) {WHO}"),
        (
            finding(verdict="audited", syscall=TRACED, count=3),
            f"AUDIT syscall ptrace (x86_64, tracepoint) {WHO} x3",
        ),
        (socket_finding(), f"BLOCKED socket packet:raw (cgroup-sock-create) {WHO}"),
        (
            socket_finding(AUDIT_NL, verdict="audited"),
            f"AUDIT socket netlink:audit (seccomp-notify) {WHO}",
        ),
        (
            limit_finding(count=37),
            f"BLOCKED limit forksPerSecond 20/s (burst 40) broken, 37 processes (killed) {WHO} x37",
        ),
        (
            limit_finding(MAXPROC, verdict="audited"),
            f"AUDIT limit maxProcesses 50 broken, 51 processes {WHO}",
        ),
        (
            limit_finding(LimitDetail("maxProcesses", None, None, None)),
            f"BLOCKED limit maxProcesses ? broken (killed) {WHO}",
        ),
    ],
)
def test_describe_violation(v: Violation, line: str) -> None:
    assert describe_violation(v) == line


def test_summary_counts_new_kinds_and_mixed_verdicts() -> None:
    r = RunReport(mode="enforce", exit_status=0)
    r.add(finding(count=2))
    r.add(finding(verdict="audited", count=3))
    r.add(socket_finding())
    r.add(limit_finding(count=4))
    assert (r.records, r.attempts) == (4, 10)
    assert r.by_kind == {"syscall": 5, "socket": 1, "limit": 4}
    assert r.by_verdict == {"blocked": 7, "audited": 3}
    r.kernel = {"violations": 10, "syscall_killed": 2, "socket_denied": 1, "limit_killed": 4}
    lines = render_summary(r).splitlines()
    assert lines[1] == (
        "nodeguard: 10 violating attempts (7 blocked, 3 audited and let through) "
        "(limit 4, socket 1, syscall 5) in 4 records"
    )
    assert lines[3] == (
        "nodeguard: kernel killed 2 processes on denied syscalls and 4 over a process "
        "budget, refused 1 sockets (cgroup hook)"
    )


def test_summary_of_a_single_verdict_is_unchanged() -> None:
    r = RunReport(mode="audit", exit_status=0)
    r.add(limit_finding(verdict="audited"))
    text = render_summary(r)
    assert "nodeguard: 1 violating attempts audited (let through) (limit 1) in 1 records" in text
    assert "kernel killed" not in text  # no enforcement counters: no line
    assert len(text.splitlines()) == 3
