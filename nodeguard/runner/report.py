"""Human-readable lines for `nodeguard run`: one per violation record, and the summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from nodeguard.events.model import Violation
from nodeguard.policy.compiled import CompiledPolicy, Mode


@dataclass(slots=True)
class RunReport:
    policy: CompiledPolicy | None = None
    mode: Mode | None = None
    records: int = 0
    attempts: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    kernel: dict[str, int] = field(default_factory=dict)
    undecodable: int = 0
    exit_status: int | None = None

    def add(self, violation: Violation) -> None:
        self.records += 1
        self.attempts += violation.count
        self.by_kind[violation.kind] += violation.count


def describe_violation(v: Violation) -> str:
    verb = "BLOCKED" if v.verdict == "blocked" else "AUDIT"
    who = f"{v.process.name}[{v.process.pid}]"
    times = f" x{v.count}" if v.count > 1 else ""
    if v.egress is not None:
        e = v.egress
        host = f"[{e.ip}]" if ":" in e.ip else e.ip
        what = f"egress {e.protocol} {host}:{e.port} ({e.hook})"
    elif v.exec is not None:
        action = " (killed)" if v.verdict == "blocked" else ""
        what = f"exec {v.exec.path}{' (truncated)' if v.exec.truncated else ''}{action}"
    else:
        what = v.kind
    return f"{verb} {what} by {who} policy={v.policy.name}{times}"


def render_summary(r: RunReport) -> str:
    name = r.policy.name if r.policy else "?"
    version = r.policy.version if r.policy else "?"
    lines = [
        f"nodeguard: policy {name} (version {version}, {r.mode}); "
        f"command exited with status {r.exit_status}"
    ]
    if r.attempts:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(r.by_kind.items()))
        verdict = "blocked" if r.mode == "enforce" else "audited (let through)"
        lines.append(
            f"nodeguard: {r.attempts:,} violating attempts {verdict} ({kinds}) "
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
    if lost or r.undecodable:
        lines.append("nodeguard: the attempts of lost records are still counted above")
    return "\n".join(lines)
