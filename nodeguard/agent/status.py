"""The node agent's status snapshot: what ``nodeguard status`` shows.

A :class:`StatusSnapshot` is an immutable picture the agent builds on request (local API
``GET /v1/status``). Its JSON (``to_json``/``from_json``) is a stable contract for scripts:
``schema_version`` 1, keys documented in docs/status.md; new keys may be added within a
schema version, so readers ignore keys they do not know, and a snapshot written by this
module always reads back to an equal object (and the same JSON).

:func:`render_status` turns a snapshot into the tables an operator reads. It imports rich
lazily, so the modules that only move snapshots around (the API client, the runtime hook)
stay quick to import.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from nodeguard.errors import NodeguardError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

    from nodeguard.bpf.probe import Report

SCHEMA_VERSION = 1
TEXT_WIDTH = 100

AgentState = Literal["starting", "ready", "degraded"]
CollectorState = Literal["not configured", "connecting", "connected", "disconnected"]


class SnapshotFormatError(NodeguardError):
    """A status JSON document does not have the shape this nodeguard understands."""


# ----------------------------------------------------------------------- model --


@dataclass(frozen=True, slots=True)
class AgentHealth:
    """The agent process: ``state`` is starting (not yet reconciled), ready or degraded.

    ``reasons`` says why it is not ready (e.g. "policy directory: last load failed").
    """

    state: AgentState
    started_at: float  # epoch seconds
    uptime_s: float
    node: str
    version: str
    pid: int
    reasons: tuple[str, ...] = ()  # why it is starting or degraded, one phrase each


@dataclass(frozen=True, slots=True)
class FeatureState:
    """One probed kernel feature (see ``nodeguard doctor``)."""

    name: str
    ok: bool
    required: bool = True


@dataclass(frozen=True, slots=True)
class KernelInfo:
    """The kernel release, the mechanism chosen per policy feature, the probed features."""

    release: str
    mechanisms: Mapping[str, str] = field(default_factory=dict)
    features: tuple[FeatureState, ...] = ()

    @classmethod
    def from_report(cls, report: Report) -> KernelInfo:
        """Summarise a ``nodeguard doctor`` probe :class:`~nodeguard.bpf.probe.Report`."""
        mechanisms = {
            m.feature: m.chosen if m.chosen is not None else "none" for m in report.mechanisms
        }
        features = tuple(FeatureState(f.name, f.ok, f.required) for f in report.features)
        return cls(report.kernel, mechanisms, features)


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """One loaded policy. ``version`` is its content hash; ``pods`` how many it guards."""

    name: str
    version: str
    mode: str  # enforce | audit
    pods: int
    source_file: str
    last_load_error: str | None = None
    # The Localhost seccomp profile written for the policy (None: it needs none).
    seccomp_profile: str | None = None
    # limit (egress, exec, syscalls.deny (kill), sockets packet, limits) -> mechanism
    enforcement: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # e.g. audited syscalls without a tracepoint


@dataclass(frozen=True, slots=True)
class PodStatus:
    """One pod the agent knows, the policy it is under and why that policy was chosen."""

    namespace: str
    name: str
    uid: str
    policy: str | None
    mode: str
    selection_reason: str
    violations: int
    cgroup: str
    guarded_since: float | None  # epoch seconds; None when not guarded


@dataclass(frozen=True, slots=True)
class Counters:
    """Event accounting since the agent started (losses include the kernel's own counts)."""

    violations_by_kind: Mapping[str, int] = field(default_factory=dict)
    aggregated: int = 0
    lost_in_kernel: int = 0
    lost_in_userspace: int = 0
    undecodable: int = 0
    records: int = 0
    # records dropped from the full spool, by priority (telemetry, audit, violation)
    lost_in_spool: Mapping[str, int] = field(default_factory=dict)
    # execs the kernel let through because they began before the container runtime moved
    # their process into a guarded cgroup (runc init's self-clone): not the workload's
    execs_begun_outside: int = 0

    @property
    def violations_total(self) -> int:
        return sum(self.violations_by_kind.values())

    @property
    def lost_in_spool_total(self) -> int:
        return sum(self.lost_in_spool.values())


@dataclass(frozen=True, slots=True)
class PolicyDirStatus:
    """The watched policy directory: which load is in force and the last failure, if any."""

    path: str
    generation: int
    last_error: str | None = None
    last_error_at: float | None = None
    last_loaded_at: float | None = None


@dataclass(frozen=True, slots=True)
class CollectorLink:
    """The stream to the central collector and the on-disk spool behind it. Counts are
    records since the agent started, except ``rejected*`` and ``dropped*``, which are kept
    in the spool and cover its whole life."""

    state: CollectorState
    address: str | None = None
    epoch: int | None = None  # sequence space: start unix ms * 1000 + random 0..999
    sent: int = 0  # records sent (resends after a reconnect included)
    acked: int = 0  # records the collector acknowledged
    duplicates: int = 0  # of those, records it already had
    rejected: int = 0  # records it refused (lost)
    rejected_attempts: int = 0  # violation attempts they stood for
    in_flight: int = 0  # batches sent, not yet acknowledged
    spool_path: str | None = None
    spool_records: int = 0  # records waiting in the spool
    spool_bytes: int = 0
    spool_max_bytes: int = 0
    spool_oldest_age_s: float | None = None
    dropped: Mapping[str, int] = field(default_factory=dict)  # priority -> records dropped
    dropped_attempts: int = 0  # violation attempts the dropped records stood for
    last_error: str | None = None
    last_error_at: float | None = None
    last_ack_at: float | None = None
    reconnects: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    agent: AgentHealth
    kernel: KernelInfo
    policies: tuple[PolicyStatus, ...]
    pods: tuple[PodStatus, ...]
    counters: Counters
    policy_dir: PolicyDirStatus
    collector: CollectorLink
    generated_at: float = field(default_factory=time.time)
    schema_version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ JSON --

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON shape (docs/status.md). Key order is fixed."""
        return {
            "schema_version": self.schema_version,
            "generated_at": self.generated_at,
            "agent": {
                "state": self.agent.state,
                "started_at": self.agent.started_at,
                "uptime_s": self.agent.uptime_s,
                "node": self.agent.node,
                "version": self.agent.version,
                "pid": self.agent.pid,
                "reasons": list(self.agent.reasons),
            },
            "kernel": {
                "release": self.kernel.release,
                "mechanisms": dict(sorted(self.kernel.mechanisms.items())),
                "features": [
                    {"name": f.name, "ok": f.ok, "required": f.required}
                    for f in self.kernel.features
                ],
            },
            "policies": [
                {
                    "name": p.name,
                    "version": p.version,
                    "mode": p.mode,
                    "pods": p.pods,
                    "source_file": p.source_file,
                    "last_load_error": p.last_load_error,
                    "seccomp_profile": p.seccomp_profile,
                    "enforcement": dict(p.enforcement),
                    "warnings": list(p.warnings),
                }
                for p in self.policies
            ],
            "pods": [
                {
                    "namespace": p.namespace,
                    "name": p.name,
                    "uid": p.uid,
                    "policy": p.policy,
                    "mode": p.mode,
                    "selection_reason": p.selection_reason,
                    "violations": p.violations,
                    "cgroup": p.cgroup,
                    "guarded_since": p.guarded_since,
                }
                for p in self.pods
            ],
            "counters": {
                "violations_total": self.counters.violations_total,
                "violations_by_kind": dict(sorted(self.counters.violations_by_kind.items())),
                "aggregated": self.counters.aggregated,
                "lost_in_kernel": self.counters.lost_in_kernel,
                "lost_in_userspace": self.counters.lost_in_userspace,
                "undecodable": self.counters.undecodable,
                "records": self.counters.records,
                "lost_in_spool": dict(self.counters.lost_in_spool),
                "execs_begun_outside": self.counters.execs_begun_outside,
            },
            "policy_dir": {
                "path": self.policy_dir.path,
                "generation": self.policy_dir.generation,
                "last_error": self.policy_dir.last_error,
                "last_error_at": self.policy_dir.last_error_at,
                "last_loaded_at": self.policy_dir.last_loaded_at,
            },
            "collector": _collector_dict(self.collector),
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> StatusSnapshot:
        """Read the JSON shape back; unknown keys are ignored, wrong types are errors."""
        root = _Reader(data, "")
        version = root.integer("schema_version")
        if version != SCHEMA_VERSION:
            raise SnapshotFormatError(
                f"the agent reports status schema_version {version}; this nodeguard "
                f"understands {SCHEMA_VERSION}",
                fix="use the nodeguard of the agent's version, e.g. kubectl -n nodeguard "
                "exec <agent pod> -- nodeguard status",
            )
        agent = root.obj("agent")
        kernel = root.obj("kernel")
        counters = root.obj("counters")
        policy_dir = root.obj("policy_dir")
        collector = root.obj("collector")
        return cls(
            agent=AgentHealth(
                state=agent.choice("state", AgentState),
                started_at=agent.number("started_at"),
                uptime_s=agent.number("uptime_s"),
                node=agent.text("node"),
                version=agent.text("version"),
                pid=agent.integer("pid"),
                reasons=tuple(agent.text_list("reasons")),
            ),
            kernel=KernelInfo(
                release=kernel.text("release"),
                mechanisms=kernel.text_map("mechanisms"),
                features=tuple(
                    FeatureState(f.text("name"), f.flag("ok"), f.flag("required", True))
                    for f in kernel.items("features")
                ),
            ),
            policies=tuple(
                PolicyStatus(
                    name=p.text("name"),
                    version=p.text("version"),
                    mode=p.text("mode"),
                    pods=p.integer("pods"),
                    source_file=p.text("source_file"),
                    last_load_error=p.opt_text("last_load_error"),
                    seccomp_profile=p.opt_text("seccomp_profile"),
                    enforcement=p.text_map("enforcement", {}),
                    warnings=tuple(p.text_list("warnings")),
                )
                for p in root.items("policies")
            ),
            pods=tuple(
                PodStatus(
                    namespace=p.text("namespace"),
                    name=p.text("name"),
                    uid=p.text("uid"),
                    policy=p.opt_text("policy"),
                    mode=p.text("mode"),
                    selection_reason=p.text("selection_reason"),
                    violations=p.integer("violations"),
                    cgroup=p.text("cgroup"),
                    guarded_since=p.opt_number("guarded_since"),
                )
                for p in root.items("pods")
            ),
            counters=Counters(
                violations_by_kind=counters.int_map("violations_by_kind"),
                aggregated=counters.integer("aggregated"),
                lost_in_kernel=counters.integer("lost_in_kernel"),
                lost_in_userspace=counters.integer("lost_in_userspace"),
                undecodable=counters.integer("undecodable"),
                records=counters.integer("records"),
                lost_in_spool=counters.int_map("lost_in_spool", {}),
                execs_begun_outside=counters.integer("execs_begun_outside", 0),
            ),
            policy_dir=PolicyDirStatus(
                path=policy_dir.text("path"),
                generation=policy_dir.integer("generation"),
                last_error=policy_dir.opt_text("last_error"),
                last_error_at=policy_dir.opt_number("last_error_at"),
                last_loaded_at=policy_dir.opt_number("last_loaded_at"),
            ),
            collector=_collector_from(collector),
            generated_at=root.number("generated_at"),
            schema_version=version,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> StatusSnapshot:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as err:
            raise SnapshotFormatError(f"status is not valid JSON: {err}") from err
        return cls.from_dict(data)


def _collector_dict(c: CollectorLink) -> dict[str, Any]:
    return {
        "state": c.state,
        "address": c.address,
        "epoch": c.epoch,
        "sent": c.sent,
        "acked": c.acked,
        "duplicates": c.duplicates,
        "rejected": c.rejected,
        "rejected_attempts": c.rejected_attempts,
        "in_flight": c.in_flight,
        "spool_path": c.spool_path,
        "spool_records": c.spool_records,
        "spool_bytes": c.spool_bytes,
        "spool_max_bytes": c.spool_max_bytes,
        "spool_oldest_age_s": c.spool_oldest_age_s,
        "dropped": dict(c.dropped),
        "dropped_attempts": c.dropped_attempts,
        "last_error": c.last_error,
        "last_error_at": c.last_error_at,
        "last_ack_at": c.last_ack_at,
        "reconnects": c.reconnects,
    }


def _collector_from(r: _Reader) -> CollectorLink:
    # Every key but state and address came with the spool: absent from older agents.
    return CollectorLink(
        state=r.choice("state", CollectorState),
        address=r.opt_text("address"),
        epoch=r.opt_integer("epoch"),
        sent=r.integer("sent", 0),
        acked=r.integer("acked", 0),
        duplicates=r.integer("duplicates", 0),
        rejected=r.integer("rejected", 0),
        rejected_attempts=r.integer("rejected_attempts", 0),
        in_flight=r.integer("in_flight", 0),
        spool_path=r.opt_text("spool_path"),
        spool_records=r.integer("spool_records", 0),
        spool_bytes=r.integer("spool_bytes", 0),
        spool_max_bytes=r.integer("spool_max_bytes", 0),
        spool_oldest_age_s=r.opt_number("spool_oldest_age_s"),
        dropped=r.int_map("dropped", {}),
        dropped_attempts=r.integer("dropped_attempts", 0),
        last_error=r.opt_text("last_error"),
        last_error_at=r.opt_number("last_error_at"),
        last_ack_at=r.opt_number("last_ack_at"),
        reconnects=r.integer("reconnects", 0),
    )


_MISSING = object()


class _Reader:
    """Typed access to one JSON object; errors name the path of the bad field."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise SnapshotFormatError(f"status JSON: {path or 'document'}: expected an object")
        self._data: dict[str, Any] = data
        self._path = path

    def _where(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str, default: Any = _MISSING) -> Any:
        if key not in self._data:
            if default is not _MISSING:
                return default
            raise SnapshotFormatError(f"status JSON: {self._where(key)}: missing")
        return self._data[key]

    def _bad(self, key: str, expected: str) -> SnapshotFormatError:
        value = self._data.get(key)
        return SnapshotFormatError(
            f"status JSON: {self._where(key)}: expected {expected}, got {value!r:.80}"
        )

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self._get(key, None)
        if value is not None and not isinstance(value, str):
            raise self._bad(key, "a string or null")
        return value

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def integer(self, key: str, default: Any = _MISSING) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer")
        return value

    def opt_integer(self, key: str) -> int | None:
        value = self._get(key, None)
        if value is None:
            return None
        return self.integer(key)

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "a number")
        return float(value)

    def opt_number(self, key: str) -> float | None:
        value = self._get(key, None)
        if value is None:
            return None
        return self.number(key)

    def choice(self, key: str, kind: Any) -> Any:
        allowed = get_args(kind)
        value = self._get(key)
        if value not in allowed:
            raise self._bad(key, "one of " + ", ".join(repr(a) for a in allowed))
        return value

    def obj(self, key: str) -> _Reader:
        return _Reader(self._get(key), self._where(key))

    def items(self, key: str) -> list[_Reader]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        return [_Reader(item, f"{self._where(key)}[{i}]") for i, item in enumerate(value)]

    def text_list(self, key: str) -> list[str]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings")
        return list(value)

    def text_map(self, key: str, default: Any = _MISSING) -> dict[str, str]:
        value = self._get(key, default)
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._bad(key, "an object of strings")
        return dict(value)

    def int_map(self, key: str, default: Any = _MISSING) -> dict[str, int]:
        value = self._get(key, default)
        if not isinstance(value, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values()
        ):
            raise self._bad(key, "an object of integers")
        return dict(value)


# ------------------------------------------------------------------- rendering --

_STATE_STYLE = {"starting": "yellow", "ready": "bold green", "degraded": "bold red"}
_COLLECTOR_STYLE = {
    "connected": "green",
    "connecting": "yellow",
    "disconnected": "bold red",
    "not configured": "dim",
}


def format_duration(seconds: float) -> str:
    """``45s``, ``3m 05s``, ``2h 03m``, ``4d 02h``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_bytes(size: int) -> str:
    """``512 B``, ``3.0 KiB``, ``12.4 MiB``, ``1.0 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


def format_time(epoch: float | None, now: float) -> str:
    """``2025-01-02 10:00:00Z (3m 05s ago)``; ``-`` for None."""
    if epoch is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))
    delta = now - epoch
    if delta >= 0:
        return f"{stamp} ({format_duration(delta)} ago)"
    return f"{stamp} (in {format_duration(-delta)})"


def render_status(
    snapshot: StatusSnapshot, width: int | None = None, *, color: bool = False
) -> str:
    """The operator's view of a snapshot: one table per section.

    ``color=False`` (the default, and what ``nodeguard status`` uses when stdout is not a
    terminal) gives plain text without any escape sequence. ``width`` defaults to 100.
    """
    import io  # noqa: PLC0415 - rich is imported only when rendering

    from rich.console import Console  # noqa: PLC0415

    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width or TEXT_WIDTH,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )
    for renderable in _sections(snapshot):
        console.print(renderable)
    text = buffer.getvalue()
    if not color:
        return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    return text


def _sections(snap: StatusSnapshot) -> list[RenderableType]:
    from rich.text import Text  # noqa: PLC0415

    now = snap.generated_at
    out: list[RenderableType] = []
    headline = Text("nodeguard agent on ")
    headline.append(snap.agent.node, style="bold")
    headline.append(": ")
    headline.append(snap.agent.state.upper(), style=_STATE_STYLE.get(snap.agent.state, ""))
    if snap.agent.reasons:
        headline.append(" (" + "; ".join(snap.agent.reasons) + ")")
    out.append(headline)
    if snap.policy_dir.last_error:
        out.append(_policy_error_banner(snap.policy_dir, now))
    out.append(_agent_table(snap))
    out.append(_kernel_table(snap))
    out.extend(_policies_tables(snap))
    out.extend(_pods_tables(snap))
    out.append(_counters_table(snap))
    out.append(_policy_dir_table(snap))
    out.append(_collector_table(snap))
    return out


def _table(title: str, *, header: bool = True) -> Table:
    from rich import box  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    return Table(
        title=f"\n{title}",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD if header else None,
        show_header=header,
        show_edge=False,
        pad_edge=False,
    )


def _kv_table(title: str, rows: list[tuple[str, Text | str]]) -> Table:
    from rich.text import Text  # noqa: PLC0415

    table = _table(title, header=False)
    table.add_column("key", no_wrap=True, min_width=20)
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(Text(key), value if isinstance(value, Text) else Text(value))
    return table


def _policy_error_banner(pdir: PolicyDirStatus, now: float) -> RenderableType:
    from rich.panel import Panel  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    body = Text()
    body.append("ERROR: the last policy load failed", style="bold red")
    body.append(f", {format_time(pdir.last_error_at, now)}; ")
    body.append(f"the policies of generation {pdir.generation} stay in force.\n")
    body.append(pdir.last_error or "", style="red")
    return Panel(body, title="policy directory", title_align="left", border_style="red")


def _agent_table(snap: StatusSnapshot) -> Table:
    from rich.text import Text  # noqa: PLC0415

    agent = snap.agent
    state = Text(agent.state, style=_STATE_STYLE.get(agent.state, ""))
    if agent.reasons:
        state.append(": " + "; ".join(agent.reasons))
    return _kv_table(
        "Agent",
        [
            ("state", state),
            ("node", agent.node),
            ("version", agent.version),
            ("pid", str(agent.pid)),
            ("started", format_time(agent.started_at, snap.generated_at)),
            ("uptime", format_duration(agent.uptime_s)),
        ],
    )


def _kernel_table(snap: StatusSnapshot) -> Table:
    from rich.text import Text  # noqa: PLC0415

    kernel = snap.kernel
    table = _table(f"Kernel {kernel.release}: mechanisms")
    table.add_column("feature", no_wrap=True, min_width=20)
    table.add_column("mechanism", overflow="fold")
    for feature, mechanism in sorted(kernel.mechanisms.items()):
        style = "bold red" if mechanism == "none" else ""
        table.add_row(Text(feature), Text(mechanism, style=style))
    if not kernel.mechanisms:
        table.add_row(Text("-"), Text("not probed yet", style="yellow"))
    ok = sum(1 for f in kernel.features if f.ok)
    missing = [f.name for f in kernel.features if f.required and not f.ok]
    optional = [f.name for f in kernel.features if not f.required and not f.ok]
    summary = Text(f"{ok} of {len(kernel.features)} ok")
    if missing:
        summary.append("; MISSING (required): " + ", ".join(missing), style="bold red")
    if optional:
        summary.append("; unavailable (optional): " + ", ".join(optional), style="dim")
    table.add_row(Text("(features)", style="dim"), summary)
    return table


def _policies_tables(snap: StatusSnapshot) -> list[RenderableType]:
    from rich.text import Text  # noqa: PLC0415

    table = _table(f"Policies ({len(snap.policies)})")
    table.add_column("name", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("mode", no_wrap=True)
    table.add_column("pods", justify="right", no_wrap=True)
    table.add_column("load", no_wrap=True)
    table.add_column("source", overflow="fold")
    errors: list[tuple[str, Text | str]] = []
    for policy in snap.policies:
        if policy.last_load_error:
            load = Text("ERROR", style="bold red")
            errors.append((policy.name, Text(policy.last_load_error, style="red")))
        else:
            load = Text("ok", style="green")
        table.add_row(
            Text(policy.name),
            Text(policy.version),
            Text(policy.mode, style="yellow" if policy.mode == "audit" else ""),
            Text(str(policy.pods)),
            load,
            Text(policy.source_file),
        )
    if not snap.policies:
        table.add_row(Text("(none loaded)", style="yellow"), *(Text("") for _ in range(5)))
    out: list[RenderableType] = [table]
    if errors:
        out.append(_kv_table("Policy load errors (the previous version stays in force)", errors))
    for policy in snap.policies:
        rows: list[tuple[str, Text | str]] = [(k, v) for k, v in policy.enforcement.items()]
        if policy.seccomp_profile:
            rows.append(("seccomp profile", policy.seccomp_profile))
        rows.extend(("WARNING", Text(w, style="bold yellow")) for w in policy.warnings)
        if rows:
            out.append(_kv_table(f"Policy {policy.name}: what enforces each limit", rows))
    return out


def _pods_tables(snap: StatusSnapshot) -> list[RenderableType]:
    from rich.text import Text  # noqa: PLC0415

    pods = sorted(snap.pods, key=lambda p: (p.namespace, p.name, p.uid))
    guarded = sum(1 for p in pods if p.policy is not None)
    table = _table(f"Guarded pods ({guarded})")
    table.add_column("namespace/pod", no_wrap=True)
    table.add_column("policy", no_wrap=True)
    table.add_column("mode", no_wrap=True)
    table.add_column("violations", justify="right", no_wrap=True)
    table.add_column("guarded for", no_wrap=True)
    now = snap.generated_at
    reasons: list[tuple[str, Text | str]] = []
    for pod in pods:
        since = "-" if pod.guarded_since is None else format_duration(now - pod.guarded_since)
        ident = f"{pod.namespace}/{pod.name}"
        table.add_row(
            Text(ident),
            Text(pod.policy or "-", style="" if pod.policy else "dim"),
            Text(pod.mode, style="yellow" if pod.mode == "audit" else ""),
            Text(str(pod.violations), style="bold red" if pod.violations else ""),
            Text(since),
        )
        reasons.append((ident, pod.selection_reason or "-"))
    if not pods:
        table.add_row(
            Text("(no pod is under a policy)", style="dim"), *(Text("") for _ in range(4))
        )
        return [table]
    return [table, _kv_table("Why each pod has its policy", reasons)]


def _counters_table(snap: StatusSnapshot) -> Table:
    from rich.text import Text  # noqa: PLC0415

    c = snap.counters
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(c.violations_by_kind.items()))
    violations = Text(str(c.violations_total))
    if kinds:
        violations.append(f" ({kinds})")

    def loss(n: int) -> Text:
        return Text(str(n), style="bold red" if n else "")

    spool = loss(c.lost_in_spool_total)
    if c.lost_in_spool_total:
        spool.append(" (" + _by_priority(c.lost_in_spool) + ")")
    return _kv_table(
        "Counters",
        [
            ("violations", violations),
            ("aggregated repeats", str(c.aggregated)),
            ("records read", str(c.records)),
            ("lost in kernel", loss(c.lost_in_kernel)),
            ("lost in user space", loss(c.lost_in_userspace)),
            ("lost in spool", spool),
            ("undecodable", loss(c.undecodable)),
            ("runtime execs let through", str(c.execs_begun_outside)),
        ],
    )


def _by_priority(counts: Mapping[str, int]) -> str:
    """``violation 3, audit 0, telemetry 12``: the priorities a full spool drops, last to
    first."""
    order = ("violation", "audit", "telemetry")
    names = [n for n in order if n in counts] + sorted(set(counts) - set(order))
    return ", ".join(f"{n} {counts[n]}" for n in names)


def _policy_dir_table(snap: StatusSnapshot) -> Table:
    from rich.text import Text  # noqa: PLC0415

    pdir = snap.policy_dir
    now = snap.generated_at
    rows: list[tuple[str, Text | str]] = [
        ("path", pdir.path),
        ("generation in force", str(pdir.generation)),
        ("last loaded", format_time(pdir.last_loaded_at, now)),
    ]
    if pdir.last_error:
        rows.append(("last error", Text(f"ERROR: {pdir.last_error}", style="bold red")))
        rows.append(("error at", format_time(pdir.last_error_at, now)))
    else:
        rows.append(("last error", Text("none", style="green")))
    return _kv_table("Policy directory", rows)


def _collector_table(snap: StatusSnapshot) -> Table:
    from rich.text import Text  # noqa: PLC0415

    link = snap.collector
    now = snap.generated_at
    rows: list[tuple[str, Text | str]] = [
        ("state", Text(link.state, style=_COLLECTOR_STYLE.get(link.state, ""))),
        ("address", link.address or "-"),
    ]
    if link.state == "not configured":
        return _kv_table("Collector", rows)
    if link.last_error:
        error = Text(link.last_error, style="red" if link.state == "connected" else "bold red")
        rows.append(("last error", error))
        rows.append(("error at", format_time(link.last_error_at, now)))
    spool = f"{link.spool_records:,} records, {format_bytes(link.spool_bytes)}"
    if link.spool_max_bytes:
        spool += f" of {format_bytes(link.spool_max_bytes)}"
    if link.spool_oldest_age_s is not None:
        spool += f", oldest {format_duration(link.spool_oldest_age_s)}"
    rows.append(("spool", spool))
    if link.spool_path:
        rows.append(("spool file", link.spool_path))
    rows.append(("in flight", f"{link.in_flight} batches"))
    rows.append(
        (
            "sent / acked",
            f"{link.sent:,} / {link.acked:,} records ({link.duplicates:,} already stored)",
        )
    )
    rejected = Text(f"{link.rejected:,}", style="bold red" if link.rejected else "")
    if link.rejected:
        rejected.append(f" records ({link.rejected_attempts:,} attempts)")
    rows.append(("rejected", rejected))
    dropped = Text(f"{link.dropped_total:,}", style="bold red" if link.dropped_total else "")
    if link.dropped_total:
        dropped.append(
            f" records ({_by_priority(link.dropped)}; {link.dropped_attempts:,} attempts)"
        )
    rows.append(("dropped (spool full)", dropped))
    rows.append(("last ack", format_time(link.last_ack_at, now)))
    rows.append(("reconnects", str(link.reconnects)))
    if link.epoch is not None:
        rows.append(("epoch", str(link.epoch)))
    return _kv_table("Collector", rows)
