"""Encode a CompiledPolicy into kernel map entries (pure; unit-tested without root)."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Iterator

from nodeguard.bpf import abi
from nodeguard.policy.compiled import CompiledPolicy, EgressEntry, ExecEntry

POLICY_ID_BITS = 32


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
