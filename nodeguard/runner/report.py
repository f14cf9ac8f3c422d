"""Human-readable lines for `nodeguard run`: one per violation record, and the summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nodeguard.events.model import LimitDetail, SocketDetail, SyscallDetail, Violation
from nodeguard.events.ocsf import limit_text, socket_text
from nodeguard.policy.compiled import CompiledPolicy, Mode


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """How the run's records fared with ``--collector`` (records: violations and loss
    statements)."""

    address: str
    node: str
    records: int  # records the run spooled
    acked: int  # acknowledged by the collector (stored, already stored or refused)
    stored: int
    duplicates: int
    rejected: int  # refused as invalid: lost
    undelivered: int  # still in the spool when the wait ended
    lost: int = 0  # could not even be spooled
    waited_s: float = 0.0
    last_error: str | None = None
    spool: Path | None = None  # where the undelivered records are kept

    @property
    def delivered(self) -> int:
        return self.stored + self.duplicates


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
    delivery: DeliveryReport | None = None

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
    if r.delivery is not None:
        lines.append(render_delivery(r.delivery))
    return "\n".join(lines)


def render_delivery(d: DeliveryReport) -> str:
    """One or two lines: how many records reached the collector, and where the others
    are. E.g. ``nodeguard: collector 10.0.0.5:7443 (node ci-1): all 12 records
    delivered (12 stored, 0 already there)``."""
    head = f"nodeguard: collector {d.address} (node {d.node}): "
    refused = f"; {d.rejected:,} refused as invalid (lost)" if d.rejected else ""
    unspooled = f"; {d.lost:,} could not be spooled (lost)" if d.lost else ""
    if d.undelivered == 0:
        text = (
            f"{head}all {d.records:,} records delivered ({d.stored:,} stored, "
            f"{d.duplicates:,} already there){refused}{unspooled}"
        )
        if d.rejected or d.lost:
            text = text.replace(" all ", " ", 1)
        return text
    why = f" ({d.last_error})" if d.last_error else ""
    lines = [
        f"{head}{d.delivered:,} of {d.records:,} records delivered, {d.undelivered:,} NOT "
        f"delivered within {d.waited_s:g}s{why}{refused}{unspooled}"
    ]
    if d.spool is not None:
        lines.append(f"nodeguard: the undelivered records are kept in {d.spool}")
    return "\n".join(lines)
