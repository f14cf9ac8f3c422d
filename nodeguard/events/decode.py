"""Ring buffer records -> typed raw records.

Every record starts with ``struct ng_event_hdr``; :func:`decode` switches on ``op`` (egress,
exec, syscall, socket, limit) and trusts ``size`` only after checking it against the bytes
actually received. Anything it cannot decode (unknown op, short record, a verdict, hook,
mechanism or limit kind it does not know) is counted in a :class:`DecodeStats` and
dropped: a bad record never raises.
No semantics here (verdict names, IP text, policy): that is :mod:`nodeguard.events.build`.
"""

from __future__ import annotations

import ctypes as ct
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass

from nodeguard.bpf import abi

AF_INET = 2
AF_INET6 = 10

_HDR_SIZE = ct.sizeof(abi.EventHdr)
_VERDICTS = frozenset(int(v) for v in abi.Verdict)
_HOOKS = frozenset(int(h) for h in abi.Hook)
_FAMILIES = frozenset((AF_INET, AF_INET6))
_MECHANISMS = frozenset(int(m) for m in abi.SyscallMechanism)
_SOCK_HOOKS = frozenset(int(h) for h in abi.SockHook)
_LIMITS = frozenset(int(k) for k in abi.Limit)


@dataclass(slots=True)
class DecodeStats:
    """What :func:`decode` saw. ``malformed`` covers short or inconsistent records."""

    decoded: int = 0
    unknown_op: int = 0
    malformed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)  # not frozen: built per record, frozen init costs 4x
class RawHeader:
    op: int
    size: int
    policy_id: int
    ts_ns: int  # CLOCK_MONOTONIC
    cgroup_id: int
    pid: int
    tid: int
    verdict: int  # abi.Verdict
    count_total: int  # cumulative attempts of the aggregate; 0 = not aggregated
    first_ns: int  # CLOCK_MONOTONIC of the aggregate's first attempt
    comm: str


@dataclass(slots=True)  # not frozen: built per record, frozen init costs 4x
class RawEgress:
    hdr: RawHeader
    addr: bytes  # 16 bytes, IPv4 as IPv4-mapped IPv6
    port: int  # host order
    protocol: int  # IPPROTO_*
    family: int  # AF_INET / AF_INET6 as used by the caller
    hook: int  # abi.Hook


@dataclass(slots=True)  # not frozen: built per record, frozen init costs 4x
class RawExec:
    hdr: RawHeader
    old_pid: int
    path_len: int  # bytes the kernel read including the NUL; >= PATH_MAX: truncated
    path: str  # UTF-8 with replacement characters, up to the first NUL
    path_bytes: bytes  # the exact bytes up to the first NUL (what the kernel hashed)

    @property
    def truncated(self) -> bool:
        return self.path_len >= abi.PATH_MAX


@dataclass(slots=True)  # not frozen: built per record, frozen init costs 4x
class RawSyscall:
    hdr: RawHeader
    nr: int  # syscall number in the caller's ABI (without abi.SYSCALL_COMPAT)
    arch: int  # AUDIT_ARCH_* of the call (any value: an unknown ABI is still a violation)
    mechanism: int  # abi.SyscallMechanism


@dataclass(slots=True)  # not frozen: built per record, frozen init costs 4x
class RawSocket:
    hdr: RawHeader
    family: int  # AF_*
    type: int  # SOCK_* without SOCK_NONBLOCK / SOCK_CLOEXEC
    protocol: int
    hook: int  # abi.SockHook


@dataclass(slots=True)  # not frozen: built per record, frozen init costs 4x
class RawLimit:
    hdr: RawHeader
    limit: int  # abi.Limit
    budget: int  # maxProcesses, or the rate per second
    burst: int  # rate budgets: the burst (0 for maxProcesses)
    observed: int  # live processes in the pod when the budget was broken (signed)


# The records of the first ABI, which :func:`nodeguard.events.aggregate.key_of_record`
# keys; every record :func:`decode` returns is an :data:`AnyRecord`.
RawRecord = RawEgress | RawExec
AnyRecord = RawEgress | RawExec | RawSyscall | RawSocket | RawLimit


def c_string(raw: bytes) -> bytes:
    """Bytes of a fixed-size C char array up to (not including) the first NUL."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _text(raw: bytes) -> str:
    return c_string(raw).decode("utf-8", errors="replace")


def _char_array(struct: ct.Structure, field: str, length: int) -> bytes:
    """A ``char[N]`` member as all N bytes (ctypes' own getter stops at the first NUL)."""
    offset: int = getattr(type(struct), field).offset
    return ct.string_at(ct.addressof(struct) + offset, length)


def _header(h: abi.EventHdr) -> RawHeader:
    return RawHeader(
        op=h.op,
        size=h.size,
        policy_id=h.policy_id,
        ts_ns=h.ts_ns,
        cgroup_id=h.cgroup_id,
        pid=h.pid,
        tid=h.tid,
        verdict=h.verdict,
        count_total=h.count_total,
        first_ns=h.first_ns,
        comm=_text(_char_array(h, "comm", abi.COMM_LEN)),
    )


# Hot path (every record): the header and the egress body unpacked with struct instead of
# ctypes objects, ~3x cheaper. Native byte order, no implicit alignment: the ABI header
# pads explicitly, and these asserts tie both layouts to the ctypes mirror (itself tied to
# the C header by tests/unit/test_abi_layout.py).
_HDR_STRUCT = struct.Struct(f"=HHIQQIIIIQQ{abi.COMM_LEN}s")
_EGRESS_BODY = struct.Struct("=16sHBBB3x")
assert _HDR_STRUCT.size == ct.sizeof(abi.EventHdr)
assert abi.EgressEvent.addr.offset == _HDR_STRUCT.size
assert _HDR_STRUCT.size + _EGRESS_BODY.size == ct.sizeof(abi.EgressEvent)


def _fast_header(buf: bytes) -> RawHeader:
    (op, size, policy_id, ts_ns, cgroup_id, pid, tid, verdict, _pad, count_total, first_ns,
     comm) = _HDR_STRUCT.unpack_from(buf)  # fmt: skip
    end = comm.find(b"\0")
    return RawHeader(
        op=op,
        size=size,
        policy_id=policy_id,
        ts_ns=ts_ns,
        cgroup_id=cgroup_id,
        pid=pid,
        tid=tid,
        verdict=verdict,
        count_total=count_total,
        first_ns=first_ns,
        comm=(comm if end < 0 else comm[:end]).decode("utf-8", errors="replace"),
    )


def _egress(data: bytes) -> RawEgress | None:
    addr, port, protocol, family, hook = _EGRESS_BODY.unpack_from(data, _HDR_STRUCT.size)
    if hook not in _HOOKS or family not in _FAMILIES:
        return None
    return RawEgress(
        hdr=_fast_header(data),
        addr=addr,
        port=port,
        protocol=protocol,
        family=family,
        hook=hook,
    )


def _exec(data: bytes) -> RawExec:
    e = abi.ExecEvent.from_buffer_copy(data)
    path_bytes = c_string(_char_array(e, "path", abi.PATH_MAX))
    return RawExec(
        hdr=_header(e.hdr),
        old_pid=e.old_pid,
        path_len=e.path_len,
        path=path_bytes.decode("utf-8", errors="replace"),
        path_bytes=path_bytes,
    )


def _syscall(data: bytes) -> RawSyscall | None:
    e = abi.SyscallEvent.from_buffer_copy(data)
    if e.mechanism not in _MECHANISMS:
        return None
    return RawSyscall(hdr=_header(e.hdr), nr=e.nr, arch=e.arch, mechanism=e.mechanism)


def _socket(data: bytes) -> RawSocket | None:
    e = abi.SocketEvent.from_buffer_copy(data)
    if e.hook not in _SOCK_HOOKS:
        return None
    return RawSocket(
        hdr=_header(e.hdr), family=e.family, type=e.type, protocol=e.protocol, hook=e.hook
    )


def _limit(data: bytes) -> RawLimit | None:
    e = abi.LimitEvent.from_buffer_copy(data)
    if e.limit not in _LIMITS:
        return None
    return RawLimit(
        hdr=_header(e.hdr), limit=e.limit, budget=e.budget, burst=e.burst, observed=e.observed
    )


_BODIES: dict[int, tuple[int, Callable[[bytes], AnyRecord | None]]] = {
    int(abi.Op.EGRESS): (ct.sizeof(abi.EgressEvent), _egress),
    int(abi.Op.EXEC): (ct.sizeof(abi.ExecEvent), _exec),
    int(abi.Op.SYSCALL): (ct.sizeof(abi.SyscallEvent), _syscall),
    int(abi.Op.SOCKET): (ct.sizeof(abi.SocketEvent), _socket),
    int(abi.Op.LIMIT): (ct.sizeof(abi.LimitEvent), _limit),
}


_OP_SIZE = struct.Struct("=HH")
_VERDICT_AT = struct.Struct("=I")
_VERDICT_OFFSET = abi.EventHdr.verdict.offset


def decode(
    data: bytes | bytearray | memoryview, stats: DecodeStats | None = None
) -> AnyRecord | None:
    """One ring buffer record, or None (counted in ``stats``) when it cannot be decoded.

    Trailing bytes beyond ``hdr.size`` (ring buffer padding) are ignored.
    """
    stats = stats if stats is not None else DecodeStats()
    buf = bytes(data)
    if len(buf) < _HDR_SIZE:
        stats.malformed += 1
        return None
    op, size = _OP_SIZE.unpack_from(buf)
    body = _BODIES.get(op)
    if body is None:
        stats.unknown_op += 1
        return None
    need, parse = body
    verdict = _VERDICT_AT.unpack_from(buf, _VERDICT_OFFSET)[0]
    if size < need or size > len(buf) or verdict not in _VERDICTS:
        stats.malformed += 1
        return None
    record = parse(buf[:size])
    if record is None:
        stats.malformed += 1
        return None
    stats.decoded += 1
    return record


# ------------------------------------------------------------------- encoding ---
# The kernel's side of the format, for tests, benchmarks and fake guards, and for records
# user space makes itself (the ``nodeguard run`` supervisor turns the socket() calls its
# seccomp listener refused into NG_OP_SOCKET records): the exact inverse of decode()
# (header fields are written as given, op and size included).

EGRESS_SIZE = ct.sizeof(abi.EgressEvent)
EXEC_SIZE = ct.sizeof(abi.ExecEvent)
SYSCALL_SIZE = ct.sizeof(abi.SyscallEvent)
SOCKET_SIZE = ct.sizeof(abi.SocketEvent)
LIMIT_SIZE = ct.sizeof(abi.LimitEvent)


def _put_char_array(struct: ct.Structure, field: str, value: bytes, length: int) -> None:
    offset: int = getattr(type(struct), field).offset
    ct.memmove(ct.addressof(struct) + offset, value[:length], min(len(value), length))


def _fill_header(out: abi.EventHdr, h: RawHeader) -> None:
    out.op = h.op
    out.size = h.size
    out.policy_id = h.policy_id
    out.ts_ns = h.ts_ns
    out.cgroup_id = h.cgroup_id
    out.pid = h.pid
    out.tid = h.tid
    out.verdict = h.verdict
    out.count_total = h.count_total
    out.first_ns = h.first_ns
    _put_char_array(out, "comm", h.comm.encode(), abi.COMM_LEN - 1)


def encode(raw: AnyRecord) -> bytes:
    """The ring buffer bytes of a record (``decode(encode(r)) == r`` for valid records:
    a known op, a ``hdr.size`` that covers the struct, values that fit their fields and
    a ``comm`` of at most 15 bytes of UTF-8)."""
    if isinstance(raw, RawSyscall):
        sc = abi.SyscallEvent()
        _fill_header(sc.hdr, raw.hdr)
        sc.nr, sc.arch, sc.mechanism = raw.nr, raw.arch, raw.mechanism
        return bytes(sc)
    if isinstance(raw, RawSocket):
        so = abi.SocketEvent()
        _fill_header(so.hdr, raw.hdr)
        so.family, so.type, so.protocol, so.hook = raw.family, raw.type, raw.protocol, raw.hook
        return bytes(so)
    if isinstance(raw, RawLimit):
        li = abi.LimitEvent()
        _fill_header(li.hdr, raw.hdr)
        li.limit, li.budget, li.burst, li.observed = raw.limit, raw.budget, raw.burst, raw.observed
        return bytes(li)
    if isinstance(raw, RawEgress):
        eg = abi.EgressEvent()
        _fill_header(eg.hdr, raw.hdr)
        ct.memmove(eg.addr, raw.addr, 16)
        eg.port = raw.port
        eg.protocol = raw.protocol
        eg.family = raw.family
        eg.hook = raw.hook
        return bytes(eg)
    ex = abi.ExecEvent()
    _fill_header(ex.hdr, raw.hdr)
    ex.old_pid = raw.old_pid
    ex.path_len = raw.path_len
    _put_char_array(ex, "path", raw.path_bytes, abi.PATH_MAX)
    return bytes(ex)
