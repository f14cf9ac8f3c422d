"""Compile a validated AgentPolicy into what the kernel maps need (pure functions).

Egress: the kernel looks a destination up in an LPM trie keyed by IPv6 address (IPv4 as
IPv4-mapped ``::ffff:a.b.c.d``) and checks only the port ranges of the longest matching
entry. So every entry carries its own ranges plus those of every shorter prefix of the
same address family that contains it. IPv4 and IPv6 rules are separate: an IPv6 rule
such as ``::/0`` must not allow IPv4 destinations through their mapped form, so when an
IPv6 rule covers ``::ffff:0:0/96`` that block gets an entry of its own (with only the
ranges of IPv4 rules, possibly none: deny).

Exec: entries are longest-prefix matched too; an entry under a ``**`` entry is dropped,
because the kernel would pick the longer entry and apply its stricter check.

Syscalls: groups expanded, numbers per arch (x86_64, arm64, and i386 for the 32-bit ABI
of x86_64 kernels; :mod:`nodeguard.policy.syscalls`). Sockets: one entry per address
family with merged masks (:mod:`nodeguard.policy.sockets`). Limits: rates with their
burst (the burst defaults to the rate).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeguard.bpf.abi import MAX_PORT_RANGES, ExecKind, Proto
from nodeguard.errors import PolicyError, PolicyProblem
from nodeguard.policy.compiled import (
    CompiledLimits,
    CompiledPolicy,
    CompiledSockets,
    CompiledSyscalls,
    EgressEntry,
    ExecEntry,
    PortRule,
    Rate,
)
from nodeguard.policy.loader import duplicate_name_problems
from nodeguard.policy.model import (
    AgentPolicy,
    EgressRule,
    ExecSpec,
    LimitsSpec,
    Network,
    PolicySpec,
    RateSpec,
    SocketsSpec,
    SyscallsSpec,
)
from nodeguard.policy.sockets import compile_socket_denies
from nodeguard.policy.syscalls import COMPILED_ARCHES, deny_numbers, resolve

# uuid5(NAMESPACE_DNS, "nodeguard.io"): policy uids are uuid5(this, policy name).
UID_NAMESPACE = uuid.UUID("175e4ee1-8708-5258-8e21-751fd6bf3200")
VERSION_LENGTH = 12

V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
ALL_PORTS = (0, 65535)
_EGRESS_PATH = ("spec", "egress", "allow")

# Protocols of a rule. Ports only exist for TCP and UDP; a port-less "any" rule also
# allows other protocols (e.g. ICMP echo), whose "ports" the kernel ignores.
_PROTOCOLS_WITH_PORTS = {"tcp": Proto.TCP, "udp": Proto.UDP, "any": Proto.TCP | Proto.UDP}
_PROTOCOLS_ALL_PORTS = {**_PROTOCOLS_WITH_PORTS, "any": Proto.TCP | Proto.UDP | Proto.OTHER}


# -------------------------------------------------------------------- identity --


def policy_uid(name: str) -> str:
    """Stable id of a policy name (the same name always gets the same uid)."""
    return str(uuid.uuid5(UID_NAMESPACE, name))


def _canonical_rule(rule: EgressRule) -> dict[str, Any]:
    ports = sorted({(p.lo, p.hi) for p in rule.ports}) if rule.ports is not None else None
    return {
        "cidr": str(to_mapped(rule.cidr)),
        "ports": None if ports is None else [f"{lo}-{hi}" for lo, hi in ports],
        "protocol": rule.protocol,
    }


def _sorted_unique(items: Iterable[Any]) -> list[Any]:
    by_key = {json.dumps(item, sort_keys=True): item for item in items}
    return [by_key[key] for key in sorted(by_key)]


def _canonical_syscalls(spec: SyscallsSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    return {"deny": list(resolve(spec.deny).names), "action": spec.action}


def _canonical_sockets(spec: SocketsSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    denies = compile_socket_denies(spec.deny)
    return {"deny": [[d.family, d.types, d.protocols] for d in denies]}


def _canonical_rate(rate: RateSpec | None) -> dict[str, int] | None:
    return None if rate is None else {"rate": rate.rate, "burst": rate.effective_burst}


def _canonical_limits(spec: LimitsSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    return {
        "maxProcesses": spec.max_processes,
        "forksPerSecond": _canonical_rate(spec.forks_per_second),
        "execsPerSecond": _canonical_rate(spec.execs_per_second),
    }


def canonical_spec(spec: PolicySpec) -> dict[str, Any]:
    """The spec as JSON-able data, with order and duplicates that mean nothing removed."""
    data: dict[str, Any] = spec.model_dump(mode="json", by_alias=True)
    if spec.egress is not None:
        data["egress"]["allow"] = _sorted_unique(_canonical_rule(r) for r in spec.egress.allow)
    if spec.exec is not None:
        data["exec"]["allow"] = sorted({p.text for p in spec.exec.allow})
    # Sections added after v1alpha1's first release are left out when absent, so the
    # version of a policy that does not use them stays what it was.
    for key, canonical in (
        ("syscalls", _canonical_syscalls(spec.syscalls)),
        ("sockets", _canonical_sockets(spec.sockets)),
        ("limits", _canonical_limits(spec.limits)),
    ):
        if canonical is None:
            data.pop(key, None)
        else:
            data[key] = canonical
    selector = data.get("selector")
    if selector is not None:
        if selector.get("namespaces") is not None:
            selector["namespaces"] = sorted(set(selector["namespaces"]))
        for expr in selector.get("matchExpressions") or ():
            if expr.get("values") is not None:
                expr["values"] = sorted(set(expr["values"]))
        if selector.get("matchExpressions") is not None:
            selector["matchExpressions"] = _sorted_unique(selector["matchExpressions"])
    return data


def policy_version(spec: PolicySpec) -> str:
    """Short hash of the canonical spec: changes whenever the rules change."""
    text = json.dumps(canonical_spec(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:VERSION_LENGTH]


# ----------------------------------------------------------------------- egress --


def to_mapped(network: Network) -> ipaddress.IPv6Network:
    """IPv4 networks as IPv4-mapped IPv6 (``10.0.0.0/8`` -> ``::ffff:a00:0/104``)."""
    if isinstance(network, ipaddress.IPv4Network):
        address = int(V4_MAPPED.network_address) | int(network.network_address)
        return ipaddress.IPv6Network((address, 96 + network.prefixlen))
    return network


def is_ipv4(network: ipaddress.IPv6Network) -> bool:
    """True for an IPv4-mapped network (one that only holds IPv4 destinations)."""
    return network.prefixlen >= V4_MAPPED.prefixlen and network.subnet_of(V4_MAPPED)


def display_network(network: ipaddress.IPv6Network) -> str:
    """An entry's network as a user wrote it: IPv4-mapped networks in IPv4 notation."""
    if is_ipv4(network):
        v4 = ipaddress.IPv4Network(
            (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
        )
        return str(v4)
    return str(network)


def merge_ranges(rules: Iterable[PortRule]) -> tuple[PortRule, ...]:
    """The fewest ranges allowing exactly what ``rules`` allow, sorted.

    Per protocol, overlapping and adjacent ranges are merged; a range that ends up the
    same for several protocols becomes one range with those protocols.
    """
    rules = list(rules)
    by_span: dict[tuple[int, int], Proto] = {}
    for bit in Proto:
        spans = sorted((r.lo, r.hi) for r in rules if r.protocols & bit)
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        for span in merged:
            by_span[span] = by_span.get(span, Proto(0)) | bit
    return tuple(
        PortRule(lo, hi, protocols)
        for (lo, hi), protocols in sorted(by_span.items(), key=lambda i: (*i[0], int(i[1])))
    )


def rule_ranges(rule: EgressRule) -> list[PortRule]:
    """The port ranges one rule allows (all ports when it lists none)."""
    if rule.ports is None:
        return [PortRule(*ALL_PORTS, _PROTOCOLS_ALL_PORTS[rule.protocol])]
    protocols = _PROTOCOLS_WITH_PORTS[rule.protocol]
    return [PortRule(p.lo, p.hi, protocols) for p in rule.ports]


@dataclass
class _Group:
    """The rules of one network (one LPM entry)."""

    network: ipaddress.IPv6Network
    rule_indexes: list[int] = field(default_factory=list)
    ranges: list[PortRule] = field(default_factory=list)
    ipv4: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ipv4 = is_ipv4(self.network)

    @property
    def index_key(self) -> tuple[int, int]:
        return int(self.network.network_address), self.network.prefixlen


def _group_rules(rules: Sequence[EgressRule]) -> dict[ipaddress.IPv6Network, _Group]:
    groups: dict[ipaddress.IPv6Network, _Group] = {}
    for index, rule in enumerate(rules):
        network = to_mapped(rule.cidr)
        group = groups.setdefault(network, _Group(network))
        group.rule_indexes.append(index)
        group.ranges.extend(rule_ranges(rule))
    ipv6_covers_ipv4 = any(not g.ipv4 and V4_MAPPED.subnet_of(g.network) for g in groups.values())
    if ipv6_covers_ipv4 and V4_MAPPED not in groups:
        groups[V4_MAPPED] = _Group(V4_MAPPED)  # no ranges: IPv4 denied unless allowed
    return groups


def _ancestors(
    group: _Group, index: dict[tuple[int, int], _Group], prefixlens: Sequence[int]
) -> list[_Group]:
    """Shorter networks of the same family containing ``group``'s network.

    One dictionary lookup per distinct prefix length in the policy (at most 129), so
    compiling n rules costs O(n * 129), not O(n^2).
    """
    address, own = group.index_key
    found: list[_Group] = []
    for length in prefixlens:
        if length >= own:
            break
        mask = ((1 << length) - 1) << (128 - length)
        other = index.get((address & mask, length))
        if other is not None and other.ipv4 == group.ipv4:
            found.append(other)
    return found


def _too_many_ranges(
    policy: AgentPolicy, group: _Group, ancestors: list[_Group], count: int
) -> PolicyProblem:
    message = (
        f"{display_network(group.network)} needs {count} port ranges, but the kernel holds "
        f"at most {MAX_PORT_RANGES} per network"
    )
    inherited = [display_network(a.network) for a in ancestors if a.ranges]
    if inherited:
        message += f" (counting those inherited from the enclosing {', '.join(inherited)})"
    message += (
        "; merge neighbouring ports into ranges (e.g. '8000-8100'), use protocol 'any' for "
        "ports that are open for both TCP and UDP, or allow fewer ports on this network"
    )
    index = min(group.rule_indexes, default=0)  # only barrier entries have no rule
    return policy.problem_at((*_EGRESS_PATH, index), message)


def compile_egress(policy: AgentPolicy) -> tuple[EgressEntry, ...] | None:
    """LPM entries of the policy's egress rules; None when egress is not restricted."""
    if policy.spec.egress is None:
        return None
    groups = _group_rules(policy.spec.egress.allow)
    entries: list[EgressEntry] = []
    problems: list[PolicyProblem] = []
    index = {g.index_key: g for g in groups.values()}
    prefixlens = sorted({g.network.prefixlen for g in groups.values()})
    for group in groups.values():
        ancestors = _ancestors(group, index, prefixlens)
        ranges = merge_ranges([*group.ranges, *(r for a in ancestors for r in a.ranges)])
        if len(ranges) > MAX_PORT_RANGES:
            problems.append(_too_many_ranges(policy, group, ancestors, len(ranges)))
        entries.append(EgressEntry(group.network, ranges))
    if problems:
        raise PolicyError(problems)
    entries.sort(key=lambda e: (int(e.network.network_address), e.network.prefixlen))
    return tuple(entries)


# ------------------------------------------------------------------------- exec --


def _exec_entry(literal: str, kind: ExecKind) -> ExecEntry:
    prefix = literal.encode("utf-8")
    return ExecEntry(prefix + b"\0" if kind is ExecKind.EXACT else prefix, kind)


def _covered_by_subtree(entry: ExecEntry, subtrees: Iterable[bytes]) -> bool:
    return any(
        entry.prefix.startswith(prefix)
        and (entry.kind is not ExecKind.SUBTREE or entry.prefix != prefix)
        for prefix in subtrees
    )


def compile_exec(spec: ExecSpec | None) -> tuple[ExecEntry, ...] | None:
    """LPM entries of the exec allow list; None when exec is not restricted."""
    if spec is None:
        return None
    entries = {_exec_entry(p.literal, p.kind) for p in spec.allow}
    subtrees = [e.prefix for e in entries if e.kind is ExecKind.SUBTREE]
    kept = [e for e in entries if not _covered_by_subtree(e, subtrees)]
    return tuple(sorted(kept, key=lambda e: (e.prefix, int(e.kind))))


# ------------------------------------------------------- syscalls, sockets, limits --


def compile_syscalls(spec: SyscallsSpec | None) -> CompiledSyscalls | None:
    """The deny list with groups expanded and its numbers on every arch; None when the
    policy denies no syscall."""
    if spec is None:
        return None
    names = resolve(spec.deny).names  # entries were validated by the schema
    numbers: dict[str, tuple[int, ...]] = {a: deny_numbers(names, a) for a in COMPILED_ARCHES}
    return CompiledSyscalls(names=names, action=spec.action, numbers=numbers)


def compile_sockets(spec: SocketsSpec | None) -> CompiledSockets | None:
    """One deny entry per address family; None when the policy denies no socket kind."""
    if spec is None:
        return None
    return CompiledSockets(deny=compile_socket_denies(spec.deny))


def _rate(rate: RateSpec | None) -> Rate | None:
    return None if rate is None else Rate(per_second=rate.rate, burst=rate.effective_burst)


def compile_limits(spec: LimitsSpec | None) -> CompiledLimits | None:
    """The process budgets; None when the policy sets none."""
    if spec is None:
        return None
    return CompiledLimits(
        max_processes=spec.max_processes,
        forks=_rate(spec.forks_per_second),
        execs=_rate(spec.execs_per_second),
    )


# ------------------------------------------------------------------------ public --


def compile_policy(policy: AgentPolicy) -> CompiledPolicy:
    """Compile one policy; PolicyError (located when the policy came from a file) if the
    kernel cannot hold it."""
    return CompiledPolicy(
        name=policy.name,
        uid=policy_uid(policy.name),
        version=policy_version(policy.spec),
        mode=policy.spec.mode,
        egress=compile_egress(policy),
        exec=compile_exec(policy.spec.exec),
        syscalls=compile_syscalls(policy.spec.syscalls),
        sockets=compile_sockets(policy.spec.sockets),
        limits=compile_limits(policy.spec.limits),
    )


def compile_policies(policies: Iterable[AgentPolicy]) -> list[CompiledPolicy]:
    """Compile every policy, or raise one PolicyError with every problem of all of them
    (including names used twice)."""
    policies = list(policies)
    problems = duplicate_name_problems(policies)
    compiled: list[CompiledPolicy] = []
    for policy in policies:
        try:
            compiled.append(compile_policy(policy))
        except PolicyError as err:
            problems.extend(err.problems)
    if problems:
        raise PolicyError(problems)
    return compiled
