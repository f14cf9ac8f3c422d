"""The compiled form of one AgentPolicy: what the kernel maps need, nothing more.

Produced by :func:`nodeguard.policy.compile.compile_policy` (pure, unit-tested) and
written to the kernel by :mod:`nodeguard.bpf.maps`. Policy ids are assigned when a
policy is loaded into the kernel, not here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from nodeguard.bpf.abi import ExecKind, PolicyFlag, Proto

Mode = Literal["enforce", "audit"]


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
class CompiledPolicy:
    name: str
    uid: str  # stable id: "<name>@<version>" style identifiers are built from name+version
    version: str  # short hash of the canonical spec: changes whenever the rules change
    mode: Mode
    egress: tuple[EgressEntry, ...] | None  # None: egress not restricted
    exec: tuple[ExecEntry, ...] | None  # None: exec not restricted

    def flags(self, mode: Mode | None = None) -> PolicyFlag:
        """Kernel flags for this policy; ``mode`` overrides the policy's own mode."""
        flags = PolicyFlag(0)
        if (mode or self.mode) == "audit":
            flags |= PolicyFlag.AUDIT
        if self.egress is not None:
            flags |= PolicyFlag.EGRESS
        if self.exec is not None:
            flags |= PolicyFlag.EXEC
        return flags
