"""ctypes mirror of ``bpf/include/nodeguard.h``.

Every struct here must match its C twin byte for byte; ``tests/unit/test_abi_layout.py``
compiles the header with the C compiler and compares sizes and field offsets.
"""

from __future__ import annotations

import ctypes as ct
from enum import IntEnum, IntFlag
from pathlib import Path

ABI_VERSION = 1
PATH_MAX = 248
MAX_PORT_RANGES = 16
COMM_LEN = 16

HEADER_PATH = Path(__file__).resolve().parents[2] / "bpf" / "include" / "nodeguard.h"


class PolicyFlag(IntFlag):
    AUDIT = 1 << 0
    EGRESS = 1 << 1
    EXEC = 1 << 2
    ACTIVE = 1 << 3  # in cgroup storage: written by user space (zeroed storage = not yet)
    SYSCALLS = 1 << 4  # spec.syscalls present
    SYSCALL_AUDIT = 1 << 5  # spec.syscalls.action audit
    SOCKETS = 1 << 6  # spec.sockets present
    LIMITS = 1 << 7  # spec.limits present


class Proto(IntFlag):
    TCP = 1 << 0
    UDP = 1 << 1
    OTHER = 1 << 2  # any other IPPROTO (ICMP echo sockets...); ports ignored


class ExecKind(IntEnum):
    EXACT = 1
    SEGMENT = 2
    SUBTREE = 3


class Op(IntEnum):
    EGRESS = 1
    EXEC = 2
    SYSCALL = 3
    SOCKET = 4
    LIMIT = 5


class SyscallMechanism(IntEnum):
    SECCOMP_KILL = 1  # killed by the seccomp filter before the call ran
    TRACEPOINT = 2  # seen at sys_enter (audit): the call went ahead


SYSCALL_COMPAT = 1 << 31  # or-ed into a syscall number of the i386 ABI (syscall_deny key)


class SockHook(IntEnum):
    CGROUP = 1  # cgroup sock_create: EPERM
    SECCOMP_NOTIFY = 2  # seccomp user notification answered EPERM (record made in user space)
    TRACEPOINT = 3  # sys_enter_socket (audit): the socket was created


class Limit(IntEnum):
    PROCESSES = 1
    FORK_RATE = 2
    EXEC_RATE = 3


SOCK_ALL = 0xFFFFFFFF


class Hook(IntEnum):
    CONNECT4 = 1
    CONNECT6 = 2
    SENDMSG4 = 3
    SENDMSG6 = 4


class Verdict(IntEnum):
    BLOCKED = 1
    AUDITED = 2


class Counter(IntEnum):
    VIOLATIONS = 0
    EVENTS_EMITTED = 1
    RINGBUF_FULL = 2
    AGGREGATED = 3
    AGG_TABLE_FULL = 4
    EXEC_KILLED = 5
    EGRESS_DENIED = 6
    PATH_TOO_LONG = 7
    SYSCALL_KILLED = 8
    SOCKET_DENIED = 9
    LIMIT_KILLED = 10
    LOST_ATTEMPTS = 11
    EXEC_BEGUN_OUTSIDE = 12


COUNTER_MAX = 13


class CgroupPolicy(ct.Structure):
    _fields_ = (
        ("policy_id", ct.c_uint32),
        ("flags", ct.c_uint32),
    )


class CgroupStorageKey(ct.Structure):
    """UAPI ``struct bpf_cgroup_storage_key`` (linux/bpf.h), not part of nodeguard.h."""

    _fields_ = (
        ("cgroup_inode_id", ct.c_uint64),
        ("attach_type", ct.c_uint32),
        ("_pad", ct.c_uint32),
    )


class EgressKey(ct.Structure):
    _fields_ = (
        ("prefixlen", ct.c_uint32),
        ("policy_id", ct.c_uint32),
        ("addr", ct.c_uint8 * 16),
    )


class PortRange(ct.Structure):
    _fields_ = (
        ("lo", ct.c_uint16),
        ("hi", ct.c_uint16),
        ("protocols", ct.c_uint8),
        ("_pad", ct.c_uint8 * 3),
    )


class PortSet(ct.Structure):
    _fields_ = (
        ("count", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("ranges", PortRange * MAX_PORT_RANGES),
    )


class ExecKey(ct.Structure):
    _fields_ = (
        ("prefixlen", ct.c_uint32),
        ("policy_id", ct.c_uint32),
        ("path", ct.c_char * PATH_MAX),
    )


class ExecRule(ct.Structure):
    _fields_ = (
        ("kind", ct.c_uint32),
        ("prefix_bytes", ct.c_uint32),
    )


class SyscallKey(ct.Structure):
    _fields_ = (
        ("policy_id", ct.c_uint32),
        ("nr", ct.c_uint32),
    )


class SocketKey(ct.Structure):
    _fields_ = (
        ("policy_id", ct.c_uint32),
        ("family", ct.c_uint32),
    )


class SocketRule(ct.Structure):
    _fields_ = (
        ("types", ct.c_uint32),
        ("protocols", ct.c_uint32),
    )


class Limits(ct.Structure):
    _fields_ = (
        ("max_processes", ct.c_uint32),
        ("fork_rate", ct.c_uint32),
        ("fork_burst", ct.c_uint32),
        ("exec_rate", ct.c_uint32),
        ("exec_burst", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("fork_interval_ns", ct.c_uint64),
        ("fork_tolerance_ns", ct.c_uint64),
        ("exec_interval_ns", ct.c_uint64),
        ("exec_tolerance_ns", ct.c_uint64),
    )


class Budget(ct.Structure):
    _fields_ = (
        ("processes", ct.c_int64),
        ("fork_tat_ns", ct.c_uint64),
        ("exec_tat_ns", ct.c_uint64),
        ("_pad", ct.c_uint64),
    )


class AggKey(ct.Structure):
    _fields_ = (
        ("cgroup_id", ct.c_uint64),
        ("policy_id", ct.c_uint32),
        ("op", ct.c_uint16),
        ("port", ct.c_uint16),
        ("addr", ct.c_uint8 * 16),
        ("protocol", ct.c_uint8),
        ("family", ct.c_uint8),
        ("_pad", ct.c_uint8 * 6),
    )


class AggValue(ct.Structure):
    _fields_ = (
        ("count", ct.c_uint64),
        ("first_ns", ct.c_uint64),
        ("last_ns", ct.c_uint64),
        ("last_emit_ns", ct.c_uint64),
    )


class EventHdr(ct.Structure):
    _fields_ = (
        ("op", ct.c_uint16),
        ("size", ct.c_uint16),
        ("policy_id", ct.c_uint32),
        ("ts_ns", ct.c_uint64),
        ("cgroup_id", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("verdict", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("count_total", ct.c_uint64),
        ("first_ns", ct.c_uint64),
        ("comm", ct.c_char * COMM_LEN),
    )


class EgressEvent(ct.Structure):
    _fields_ = (
        ("hdr", EventHdr),
        ("addr", ct.c_uint8 * 16),
        ("port", ct.c_uint16),
        ("protocol", ct.c_uint8),
        ("family", ct.c_uint8),
        ("hook", ct.c_uint8),
        ("_pad", ct.c_uint8 * 3),
    )


class ExecEvent(ct.Structure):
    _fields_ = (
        ("hdr", EventHdr),
        ("old_pid", ct.c_uint32),
        ("path_len", ct.c_uint32),
        ("path", ct.c_char * PATH_MAX),
    )


class SyscallEvent(ct.Structure):
    _fields_ = (
        ("hdr", EventHdr),
        ("nr", ct.c_uint32),
        ("arch", ct.c_uint32),
        ("mechanism", ct.c_uint32),
        ("_pad", ct.c_uint32),
    )


class SocketEvent(ct.Structure):
    _fields_ = (
        ("hdr", EventHdr),
        ("family", ct.c_uint32),
        ("type", ct.c_uint32),
        ("protocol", ct.c_uint32),
        ("hook", ct.c_uint32),
    )


class LimitEvent(ct.Structure):
    _fields_ = (
        ("hdr", EventHdr),
        ("limit", ct.c_uint32),
        ("budget", ct.c_uint32),
        ("burst", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("observed", ct.c_int64),
    )


# (C struct name, ctypes mirror): the layout test walks this list.
MIRRORS: tuple[tuple[str, type[ct.Structure]], ...] = (
    ("ng_cgroup_policy", CgroupPolicy),
    ("ng_egress_key", EgressKey),
    ("ng_port_range", PortRange),
    ("ng_port_set", PortSet),
    ("ng_exec_key", ExecKey),
    ("ng_exec_rule", ExecRule),
    ("ng_agg_key", AggKey),
    ("ng_agg_value", AggValue),
    ("ng_event_hdr", EventHdr),
    ("ng_egress_event", EgressEvent),
    ("ng_exec_event", ExecEvent),
    ("ng_syscall_key", SyscallKey),
    ("ng_socket_key", SocketKey),
    ("ng_socket_rule", SocketRule),
    ("ng_limits", Limits),
    ("ng_budget", Budget),
    ("ng_syscall_event", SyscallEvent),
    ("ng_socket_event", SocketEvent),
    ("ng_limit_event", LimitEvent),
)

# #define constants the layout test checks against the header.
CONSTANTS: dict[str, int] = {
    "NG_ABI_VERSION": ABI_VERSION,
    "NG_PATH_MAX": PATH_MAX,
    "NG_MAX_PORT_RANGES": MAX_PORT_RANGES,
    "NG_COMM_LEN": COMM_LEN,
    "NG_POLICY_AUDIT": PolicyFlag.AUDIT,
    "NG_POLICY_EGRESS": PolicyFlag.EGRESS,
    "NG_POLICY_EXEC": PolicyFlag.EXEC,
    "NG_POLICY_ACTIVE": PolicyFlag.ACTIVE,
    "NG_POLICY_SYSCALLS": PolicyFlag.SYSCALLS,
    "NG_POLICY_SYSCALL_AUDIT": PolicyFlag.SYSCALL_AUDIT,
    "NG_POLICY_SOCKETS": PolicyFlag.SOCKETS,
    "NG_POLICY_LIMITS": PolicyFlag.LIMITS,
    "NG_PROTO_TCP": Proto.TCP,
    "NG_PROTO_UDP": Proto.UDP,
    "NG_PROTO_OTHER": Proto.OTHER,
    "NG_EXEC_EXACT": ExecKind.EXACT,
    "NG_EXEC_SEGMENT": ExecKind.SEGMENT,
    "NG_EXEC_SUBTREE": ExecKind.SUBTREE,
    "NG_OP_EGRESS": Op.EGRESS,
    "NG_OP_EXEC": Op.EXEC,
    "NG_OP_SYSCALL": Op.SYSCALL,
    "NG_OP_SOCKET": Op.SOCKET,
    "NG_OP_LIMIT": Op.LIMIT,
    **{f"NG_SYSCALL_{m.name}": int(m) for m in SyscallMechanism},
    "NG_SYSCALL_COMPAT": SYSCALL_COMPAT,
    **{f"NG_SOCK_{h.name}": int(h) for h in SockHook},
    **{f"NG_LIMIT_{k.name}": int(k) for k in Limit},
    "NG_SOCK_ALL": SOCK_ALL,
    "NG_HOOK_CONNECT4": Hook.CONNECT4,
    "NG_HOOK_CONNECT6": Hook.CONNECT6,
    "NG_HOOK_SENDMSG4": Hook.SENDMSG4,
    "NG_HOOK_SENDMSG6": Hook.SENDMSG6,
    "NG_VERDICT_BLOCKED": Verdict.BLOCKED,
    "NG_VERDICT_AUDITED": Verdict.AUDITED,
    **{f"NG_CNT_{c.name}": int(c) for c in Counter},
    "NG_CNT_MAX": COUNTER_MAX,
}
