"""Encode a CompiledPolicy into kernel map entries (pure; unit-tested without root)."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Iterator

from nodeguard.bpf import abi
from nodeguard.policy.compiled import CompiledPolicy, EgressEntry, ExecEntry, Rate

POLICY_ID_BITS = 32
NS_PER_S = 1_000_000_000
I386_SOCKETCALL = 102  # the i386 ABI's multiplexed socket call (its arguments are pointers)


def egress_key(policy_id: int, entry: EgressEntry) -> abi.EgressKey:
    key = abi.EgressKey()
    key.prefixlen = POLICY_ID_BITS + entry.network.prefixlen
    key.policy_id = policy_id
    ct.memmove(key.addr, entry.network.network_address.packed, 16)
    return key


def port_set(entry: EgressEntry) -> abi.PortSet:
    if len(entry.ranges) > abi.MAX_PORT_RANGES:
        # The compiler refuses such policies with a located error; this is a backstop.
        raise ValueError(
            f"{entry.network}: {len(entry.ranges)} port ranges > {abi.MAX_PORT_RANGES}"
        )
    value = abi.PortSet()
    value.count = len(entry.ranges)
    for slot, rule in zip(value.ranges, entry.ranges, strict=False):
        slot.lo = rule.lo
        slot.hi = rule.hi
        slot.protocols = int(rule.protocols)
    return value


def exec_key(policy_id: int, prefix: bytes) -> abi.ExecKey:
    if len(prefix) > abi.PATH_MAX:
        raise ValueError(f"exec prefix longer than {abi.PATH_MAX} bytes")
    key = abi.ExecKey()
    key.prefixlen = POLICY_ID_BITS + 8 * len(prefix)
    key.policy_id = policy_id
    ct.memmove(ct.addressof(key) + abi.ExecKey.path.offset, prefix, len(prefix))
    return key


def exec_rule(entry: ExecEntry) -> abi.ExecRule:
    rule = abi.ExecRule()
    rule.kind = int(entry.kind)
    rule.prefix_bytes = len(entry.prefix)
    return rule


def egress_entries(
    policy_id: int, policy: CompiledPolicy
) -> Iterator[tuple[abi.EgressKey, abi.PortSet]]:
    for entry in policy.egress or ():
        yield egress_key(policy_id, entry), port_set(entry)


def exec_entries(
    policy_id: int, policy: CompiledPolicy
) -> Iterator[tuple[abi.ExecKey, abi.ExecRule]]:
    for entry in policy.exec or ():
        yield exec_key(policy_id, entry.prefix), exec_rule(entry)


def syscall_entries(
    policy_id: int, policy: CompiledPolicy, arch: str
) -> Iterator[tuple[abi.SyscallKey, ct.c_uint32]]:
    """syscall_deny entries: the host arch's numbers, plus the i386 ABI's on x86_64 (or-ed
    with SYSCALL_COMPAT), plus i386 socketcall when the seccomp filter refuses socket
    families (it kills socketcall, whose arguments it cannot read)."""
    if policy.syscalls is not None:
        for nr in policy.syscalls.numbers.get(arch, ()):
            yield abi.SyscallKey(policy_id, nr), ct.c_uint32(1)
        if arch == "x86_64":
            for nr in policy.syscalls.numbers.get("i386", ()):
                yield abi.SyscallKey(policy_id, nr | abi.SYSCALL_COMPAT), ct.c_uint32(1)
    if arch == "x86_64" and policy.sockets is not None and policy.sockets.seccomp_families:
        yield abi.SyscallKey(policy_id, I386_SOCKETCALL | abi.SYSCALL_COMPAT), ct.c_uint32(1)


def socket_entries(
    policy_id: int, policy: CompiledPolicy
) -> Iterator[tuple[abi.SocketKey, abi.SocketRule]]:
    for deny in policy.sockets.deny if policy.sockets is not None else ():
        yield abi.SocketKey(policy_id, deny.family), abi.SocketRule(deny.types, deny.protocols)


def _gcra(rate: Rate | None) -> tuple[int, int, int, int]:
    """(rate, burst, interval ns, tolerance ns) of a rate budget; zeros for none."""
    if rate is None:
        return 0, 0, 0, 0
    interval = max(1, NS_PER_S // rate.per_second)
    return rate.per_second, rate.burst, interval, interval * (rate.burst - 1)


def limits_entry(policy: CompiledPolicy) -> abi.Limits | None:
    lim = policy.limits
    if lim is None:
        return None
    value = abi.Limits()
    value.max_processes = lim.max_processes or 0
    value.fork_rate, value.fork_burst, value.fork_interval_ns, value.fork_tolerance_ns = _gcra(
        lim.forks
    )
    value.exec_rate, value.exec_burst, value.exec_interval_ns, value.exec_tolerance_ns = _gcra(
        lim.execs
    )
    return value
