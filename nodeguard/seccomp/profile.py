"""Seccomp profiles for pods: what a policy's syscall and socket denials look like as an
OCI / Kubernetes ``Localhost`` seccomp profile, and whether a container's seccomp spec
enforces them.

Nobody can add a seccomp filter to a running process, so for pods the filter comes from
the container's OCI spec: runc installs it before the container's first instruction. The
agent writes one profile per policy (:func:`render_profile`, :func:`write_profiles`), the
pod references it (``securityContext.seccompProfile: {type: Localhost, localhostProfile:
nodeguard/<policy>.json}``), and the runtime hook refuses a container of a selected pod
whose spec does not enforce what its policy needs (the hook sends a summary of the spec,
:func:`nodeguard.agent.hook.seccomp_summary`; :func:`missing` compares it here).

Pure, except :func:`write_profiles`. The profile, for a policy in enforce mode:

- ``defaultAction: SCMP_ACT_ALLOW`` and the host's architectures (x86_64: also the i386
  and x32 ABIs, so a 32-bit or x32 syscall cannot step around the rules);
- one ``SCMP_ACT_KILL_PROCESS`` rule with every denied syscall the host knows (on x86_64
  also the i386-only variants, e.g. ``setuid32``, and ``socketcall`` when socket
  families are denied, as ``nodeguard run``'s filter does);
- for the socket families the cgroup hook cannot see (everything but inet/inet6):
  ``SCMP_ACT_NOTIFY`` rules on ``socket`` and ``socketpair``, one per (family, type) or
  (family, protocol), since libseccomp ANDs the conditions of one rule; runc hands the
  notification fd to the agent's listener (``listenerPath``), which answers EPERM and
  reports the attempt.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nodeguard.bpf.abi import SOCK_ALL
from nodeguard.policy.compiled import CompiledPolicy, SocketDeny
from nodeguard.policy.syscall_tables import TABLES
from nodeguard.policy.syscalls import i386_names
from nodeguard.seccomp.filter import plan

DEFAULT_PROFILE_DIR: Final = Path("/var/lib/kubelet/seccomp/nodeguard")
DEFAULT_LISTENER: Final = Path("/run/nodeguard/seccomp.sock")
KUBELET_SECCOMP_ROOT: Final = Path("/var/lib/kubelet/seccomp")
METADATA_PREFIX: Final = "nodeguard-policy="

ARCHITECTURES: Final[Mapping[str, tuple[str, ...]]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "arm64": ("SCMP_ARCH_AARCH64",),
}
KILL: Final = "SCMP_ACT_KILL_PROCESS"
NOTIFY: Final = "SCMP_ACT_NOTIFY"
# Actions that stop the call for good (KILL is KILL_THREAD's old name).
KILL_ACTIONS: Final = frozenset({"SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"})
SOCKET_CALLS: Final = ("socket", "socketpair")
TYPE_MASK: Final = 0xF  # socket(2)'s type without SOCK_NONBLOCK / SOCK_CLOEXEC
AF_INET: Final = 2
AF_PACKET: Final = 17
SOCK_PACKET: Final = 10

# One condition as (index, value, valueTwo, op), the OCI LinuxSeccompArg fields.
Cond = tuple[int, int, int, str]


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a container of a pod under ``policy`` must have in its seccomp spec."""

    policy: str
    kill: tuple[str, ...]  # syscall names (host arch) killed before they run
    sockets: tuple[SocketDeny, ...]  # families refused through the notify listener
    combos: tuple[tuple[Cond, ...], ...]  # the notify rules' conditions, one per combination

    @property
    def needs_listener(self) -> bool:
        return bool(self.combos)


def _bits(mask: int) -> list[int]:
    return [b for b in range(32) if mask & (1 << b)]


def socket_combinations(deny: SocketDeny) -> list[tuple[Cond, ...]]:
    """The argument conditions of the notify rules for one family: the family alone, or one
    rule per denied type (masked with 0xf) or per denied protocol."""
    family: Cond = (0, deny.family, 0, "SCMP_CMP_EQ")
    if deny.types != SOCK_ALL:
        return [(family, (1, TYPE_MASK, t, "SCMP_CMP_MASKED_EQ")) for t in _bits(deny.types)]
    if deny.protocols != SOCK_ALL:
        return [(family, (2, p, 0, "SCMP_CMP_EQ")) for p in _bits(deny.protocols)]
    combos: list[tuple[Cond, ...]] = [(family,)]
    if deny.family == AF_PACKET:
        # socket(AF_INET, SOCK_PACKET) is turned into a packet socket by the kernel
        # (__sock_create), past the cgroup hook: refuse the legacy form as well.
        legacy: tuple[Cond, ...] = (
            (0, AF_INET, 0, "SCMP_CMP_EQ"),
            (1, TYPE_MASK, SOCK_PACKET, "SCMP_CMP_MASKED_EQ"),
        )
        combos.append(legacy)
    return combos


def kill_names(names: Iterable[str], arch: str, *, sockets: bool) -> tuple[str, ...]:
    """The names of the kill rule: those ``arch`` has (runc skips unknown names silently,
    so a name it cannot resolve would be a hole nobody sees); on x86_64 also the i386-only
    variants, and ``socketcall`` when socket families are refused (its arguments are
    pointers, a filter cannot look into them)."""
    table = TABLES[arch]
    found = {n for n in names if n in table}
    if arch == "x86_64":
        found.update(i386_names(names))
        if sockets:
            found.add("socketcall")
    return tuple(sorted(found))


def requirement(policy: CompiledPolicy, arch: str) -> Requirement | None:
    """What seccomp must enforce for ``policy`` (in its own mode) on ``arch``; None when
    nothing (no deny list, audit mode, or action audit)."""
    p = plan(policy)
    if p is None:
        return None
    names: tuple[str, ...] = ()
    if any(p.kill.values()) and policy.syscalls is not None:
        names = policy.syscalls.names
    kill = kill_names(names, arch, sockets=bool(p.sockets))
    combos = tuple(c for d in p.sockets for c in socket_combinations(d))
    if not kill and not combos:
        return None
    return Requirement(policy.name, kill, p.sockets, combos)


def render_profile(policy: CompiledPolicy, arch: str, listener_path: Path) -> dict[str, Any] | None:
    """The OCI seccomp profile (as JSON-able data) for ``policy``; None when the policy
    needs none (then no profile file is written)."""
    req = requirement(policy, arch)
    if req is None:
        return None
    rules: list[dict[str, Any]] = []
    if req.kill:
        rules.append({"names": list(req.kill), "action": KILL})
    for combo in req.combos:
        args = []
        for index, value, value_two, op in combo:
            arg: dict[str, Any] = {"index": index, "value": value, "op": op}
            if op == "SCMP_CMP_MASKED_EQ":
                arg["valueTwo"] = value_two
            args.append(arg)
        rules.append({"names": list(SOCKET_CALLS), "action": NOTIFY, "args": args})
    profile: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(ARCHITECTURES[arch]),
    }
    if req.needs_listener:
        profile["listenerPath"] = str(listener_path)
        profile["listenerMetadata"] = METADATA_PREFIX + policy.name
    profile["syscalls"] = rules
    return profile


def profile_text(profile: Mapping[str, Any]) -> str:
    return json.dumps(profile, indent=2) + "\n"


def localhost_profile(profile_dir: Path, name: str) -> str:
    """What a pod writes as ``localhostProfile``: the path relative to the kubelet's
    seccomp root when the directory is below it, else the absolute path."""
    path = profile_dir / f"{name}.json"
    with contextlib.suppress(ValueError):
        return str(path.relative_to(KUBELET_SECCOMP_ROOT))
    return str(path)


def fix_hint(profile_dir: Path, name: str) -> str:
    return (
        f"securityContext.seccompProfile: {{type: Localhost, localhostProfile: "
        f"{localhost_profile(profile_dir, name)}}}"
    )


# ------------------------------------------------------------------ files --


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_profiles(
    profile_dir: Path, policies: Iterable[CompiledPolicy], arch: str, listener_path: Path
) -> dict[str, Path]:
    """Write ``<policy>.json`` for every policy that needs seccomp (unchanged files are not
    rewritten) and remove the ``*.json`` files of policies that no longer need one.
    Returns policy name -> profile path."""
    profile_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for policy in policies:
        profile = render_profile(policy, arch, listener_path)
        if profile is None:
            continue
        path = profile_dir / f"{policy.name}.json"
        text = profile_text(profile)
        try:
            current = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            current = None
        if current != text:
            _atomic_write(path, text)
        written[policy.name] = path
    for stale in profile_dir.glob("*.json"):
        if stale.stem not in written:
            with contextlib.suppress(OSError):
                stale.unlink()
    return written


# ---------------------------------------------------------------- checking --


def _cond(arg: Any) -> Cond | None:
    if not isinstance(arg, list) or len(arg) != 4:
        return None
    index, value, value_two, op = arg
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, value, value_two)):
        return None
    if not isinstance(op, str):
        return None
    if op == "SCMP_CMP_EQ":
        value_two = 0
    return (index, value, value_two, op)


def missing(summary: Any, req: Requirement, listener_path: Path) -> list[str]:
    """What the container's seccomp lacks to enforce ``req``; empty when it enforces
    everything. ``summary`` is :func:`nodeguard.agent.hook.seccomp_summary` of the spec
    (None: no filter). Each item is a short phrase."""
    if not isinstance(summary, dict):
        return ["the container has no seccomp profile"]
    problems: list[str] = []
    rules = [r for r in summary.get("rules", []) if isinstance(r, dict)]
    killed: set[str] = set()
    notify: list[tuple[set[str], frozenset[Cond]]] = []
    for rule in rules:
        names = {n for n in rule.get("names", []) if isinstance(n, str)}
        raw_args = rule.get("args") or []
        conds = [_cond(a) for a in raw_args]
        if any(c is None for c in conds):
            continue
        if rule.get("action") in KILL_ACTIONS and not conds:
            killed |= names
        elif rule.get("action") == NOTIFY:
            notify.append((names, frozenset(c for c in conds if c is not None)))
    not_killed = [n for n in req.kill if n not in killed]
    if not_killed:
        shown = ", ".join(not_killed[:6]) + (", ..." if len(not_killed) > 6 else "")
        problems.append(f"no kill rule for {shown}")
    if req.combos:
        uncovered = [
            combo
            for combo in req.combos
            if not any("socket" in names and conds <= set(combo) for names, conds in notify)
        ]
        if uncovered:
            families = sorted({c[0][1] for c in uncovered})
            problems.append(
                "no notify rule on socket() for address famil"
                + ("y " if len(families) == 1 else "ies ")
                + ", ".join(str(f) for f in families)
            )
        elif summary.get("listener_path") != str(listener_path):
            got = summary.get("listener_path") or "none"
            problems.append(f"listenerPath is {got}, not the agent's {listener_path}")
    return problems
