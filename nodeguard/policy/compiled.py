"""The compiled form of one AgentPolicy: what the kernel maps need, nothing more.

Produced by :func:`nodeguard.policy.compile.compile_policy` (pure, unit-tested) and
written to the kernel by :mod:`nodeguard.bpf.maps`. Policy ids are assigned when a
policy is loaded into the kernel, not here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from nodeguard.bpf.abi import SOCK_ALL, ExecKind, PolicyFlag, Proto

Mode = Literal["enforce", "audit"]
SyscallAction = Literal["kill", "audit"]

AF_INET = 2
AF_INET6 = 10
# Families the cgroup sock_create hook sees (the kernel runs it from inet_create and
# inet6_create only); every other family is refused by the seccomp filter instead.
CGROUP_SOCK_FAMILIES = frozenset({AF_INET, AF_INET6})


@dataclass(frozen=True, slots=True)
class PortRule:
    """Inclusive port range for a protocol set (host order)."""

    lo: int
    hi: int
    protocols: Proto


@dataclass(frozen=True, slots=True)
class EgressEntry:
    """One LPM trie entry. IPv4 networks are stored IPv4-mapped (``::ffff:0:0/96``)."""

    network: ipaddress.IPv6Network
    ranges: tuple[PortRule, ...]  # includes the ranges of every containing prefix


@dataclass(frozen=True, slots=True)
class ExecEntry:
    """One exec LPM trie entry: ``prefix`` bytes (with the NUL for EXACT)."""

    prefix: bytes
    kind: ExecKind


@dataclass(frozen=True, slots=True)
class CompiledSyscalls:
    """spec.syscalls after group expansion and name resolution."""

    names: tuple[str, ...]  # sorted, unique, groups expanded (what the policy denies)
    action: SyscallAction
    # arch ("x86_64", "arm64", "i386": the 32-bit ABI of x86_64) -> sorted syscall numbers
    # of the names that exist on that arch
    numbers: Mapping[str, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class SocketDeny:
    """Denied socket kinds of one address family. ``types`` has bit ``SOCK_*`` set per
    denied type and ``protocols`` bit ``protocol`` per denied protocol (netlink); either
    is ``SOCK_ALL`` for "every". The compiler merges all entries of a family into one
    (only one of the two masks is ever narrowed for a family)."""

    family: int
    types: int
    protocols: int
    spelled: tuple[str, ...]  # the policy entries that produced it, e.g. ("netlink:audit",)

    def matches(self, family: int, sock_type: int, protocol: int) -> bool:
        if family != self.family:
            return False
        if not self.types & (1 << (sock_type & 0xF)):
            return False
        if self.protocols == SOCK_ALL:
            return True
        return 0 <= protocol < 32 and bool(self.protocols & (1 << protocol))


@dataclass(frozen=True, slots=True)
class CompiledSockets:
    deny: tuple[SocketDeny, ...]  # sorted by family, one per family

    def denied(self, family: int, sock_type: int, protocol: int) -> bool:
        return any(d.matches(family, sock_type, protocol) for d in self.deny)

    @property
    def cgroup_families(self) -> tuple[SocketDeny, ...]:
        """Entries enforced by the cgroup sock_create hook (AF_INET, AF_INET6)."""
        return tuple(d for d in self.deny if d.family in CGROUP_SOCK_FAMILIES)

    @property
    def seccomp_families(self) -> tuple[SocketDeny, ...]:
        """Entries enforced by the seccomp filter (every other family)."""
        return tuple(d for d in self.deny if d.family not in CGROUP_SOCK_FAMILIES)


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: int
    burst: int  # >= 1: events allowed at once after an idle period


@dataclass(frozen=True, slots=True)
class CompiledLimits:
    max_processes: int | None
    forks: Rate | None
    execs: Rate | None


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    uid: str  # stable id: "<name>@<version>" style identifiers are built from name+version
    version: str  # short hash of the canonical spec: changes whenever the rules change
    mode: Mode
    egress: tuple[EgressEntry, ...] | None  # None: egress not restricted
    exec: tuple[ExecEntry, ...] | None  # None: exec not restricted
    syscalls: CompiledSyscalls | None = None  # None: no syscall deny list
    sockets: CompiledSockets | None = None  # None: no socket kinds denied
    limits: CompiledLimits | None = None  # None: no process budgets

    def flags(self, mode: Mode | None = None) -> PolicyFlag:
        """Kernel flags for this policy; ``mode`` overrides the policy's own mode."""
        flags = PolicyFlag(0)
        if (mode or self.mode) == "audit":
            flags |= PolicyFlag.AUDIT
        if self.egress is not None:
            flags |= PolicyFlag.EGRESS
        if self.exec is not None:
            flags |= PolicyFlag.EXEC
        if self.syscalls is not None:
            flags |= PolicyFlag.SYSCALLS
            if self.syscalls.action == "audit":
                flags |= PolicyFlag.SYSCALL_AUDIT
        if self.sockets is not None:
            flags |= PolicyFlag.SOCKETS
        if self.limits is not None:
            flags |= PolicyFlag.LIMITS
        return flags

    def syscall_audit(self, mode: Mode | None = None) -> bool:
        """True when denied syscalls are reported and let through (audit mode or action)."""
        return (mode or self.mode) == "audit" or (
            self.syscalls is not None and self.syscalls.action == "audit"
        )
