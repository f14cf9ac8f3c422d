"""Human-readable lines for `nodeguard run`: one per violation record, and the summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from nodeguard.events.model import LimitDetail, SocketDetail, SyscallDetail, Violation
from nodeguard.events.ocsf import limit_text, socket_text
from nodeguard.policy.compiled import CompiledPolicy, Mode


@dataclass(slots=True)
class RunReport:
    policy: CompiledPolicy | None = None
    mode: Mode | None = None
    records: int = 0
    attempts: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_verdict: Counter[str] = field(default_factory=Counter)
    kernel: dict[str, int] = field(default_factory=dict)
    undecodable: int = 0
    exit_status: int | None = None

    def add(self, violation: Violation) -> None:
        self.records += 1
        self.attempts += violation.count
        self.by_kind[violation.kind] += violation.count
        self.by_verdict[violation.verdict] += violation.count


def _syscall(s: SyscallDetail, killed: bool) -> str:
    return f"syscall {s.name} ({s.arch}, {s.mechanism}){' (killed)' if killed else ''}"


def _socket(s: SocketDetail) -> str:
    return f"socket {socket_text(s)} ({s.hook})"


def _limit(li: LimitDetail, killed: bool) -> str:
    observed = f", {li.observed_processes} processes" if li.observed_processes is not None else ""
    return f"limit {limit_text(li)} broken{observed}{' (killed)' if killed else ''}"


def describe_violation(v: Violation) -> str:
    """One line per record, e.g. ``BLOCKED egress tcp 1.2.3.4:443 (connect4) by curl[7]
    policy=p x3`` or ``BLOCKED syscall ptrace (x86_64, seccomp-kill) (killed) by
    python3[9] policy=p``."""
    blocked = v.verdict == "blocked"
    verb = "BLOCKED" if blocked else "AUDIT"
    who = f"{v.process.name}[{v.process.pid}]"
    times = f" x{v.count}" if v.count > 1 else ""
    if v.egress is not None:
        e = v.egress
        host = f"[{e.ip}]" if ":" in e.ip else e.ip
        what = f"egress {e.protocol} {host}:{e.port} ({e.hook})"
    elif v.exec is not None:
        action = " (killed)" if blocked else ""
        what = f"exec {v.exec.path}{' (truncated)' if v.exec.truncated else ''}{action}"
    elif v.syscall is not None:
        what = _syscall(v.syscall, blocked)
    elif v.socket is not None:
        what = _socket(v.socket)
    elif v.limit is not None:
        what = _limit(v.limit, blocked)
    else:
        what = v.kind
    return f"{verb} {what} by {who} policy={v.policy.name}{times}"


def _verdicts(r: RunReport) -> str:
    """``blocked`` / ``audited (let through)``, or both with their counts when a run had
    both (e.g. syscalls with ``action: audit`` under an enforcing policy)."""
    blocked, audited = r.by_verdict.get("blocked", 0), r.by_verdict.get("audited", 0)
    if blocked and audited:
        return f"({blocked:,} blocked, {audited:,} audited and let through)"
    if blocked or audited:
        return "blocked" if blocked else "audited (let through)"
    return "blocked" if r.mode == "enforce" else "audited (let through)"


def render_summary(r: RunReport) -> str:
    name = r.policy.name if r.policy else "?"
    version = r.policy.version if r.policy else "?"
    lines = [
        f"nodeguard: policy {name} (version {version}, {r.mode}); "
        f"command exited with status {r.exit_status}"
    ]
    if r.attempts:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(r.by_kind.items()))
        lines.append(
            f"nodeguard: {r.attempts:,} violating attempts {_verdicts(r)} ({kinds}) "
            f"in {r.records:,} records"
        )
    else:
        lines.append("nodeguard: no violations")
    k = r.kernel
    lost = k.get("ringbuf_full", 0)
    lines.append(
        f"nodeguard: kernel counted {k.get('violations', 0):,} attempts, wrote "
        f"{k.get('events_emitted', 0):,} records, folded {k.get('aggregated', 0):,} into "
        f"aggregates; lost records: {lost:,} (ring buffer full), undecodable: "
        f"{r.undecodable:,}"
    )
    enforced = {
        name: k.get(name, 0) for name in ("syscall_killed", "socket_denied", "limit_killed")
    }
    if any(enforced.values()):
        lines.append(
            f"nodeguard: kernel killed {enforced['syscall_killed']:,} processes on denied "
            f"syscalls and {enforced['limit_killed']:,} over a process budget, refused "
            f"{enforced['socket_denied']:,} sockets (cgroup hook)"
        )
    if lost or r.undecodable:
        lines.append("nodeguard: the attempts of lost records are still counted above")
    return "\n".join(lines)
