"""Pure helpers for the pods' side of the sandbox limits (syscalls, socket kinds,
process budgets): which mechanism enforces each limit of a policy (``nodeguard status``),
and the admission decision for a container's seccomp spec (the runtime hook).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nodeguard.policy.compiled import CompiledPolicy
from nodeguard.policy.sockets import describe_deny, family_name
from nodeguard.seccomp import profile as seccomp_profile

EGRESS = "cgroup sock_addr (connect4/6, sendmsg4/6), EPERM"
EXEC = "tracepoint sched_process_exec + bpf_send_signal(SIGKILL)"
CGROUP_SOCK = "cgroup sock_create, EPERM"
LIMITS = "BPF counters (task_newtask, sched_process_exit, sched_process_exec), SIGKILL"


def _audit(text: str, audit: bool) -> str:
    return f"{text} (audit: reported, let through)" if audit else text


def enforcement(
    policy: CompiledPolicy,
    *,
    profile_path: Path | None,
    listener: Path,
    untraceable: Iterable[str] = (),
) -> dict[str, str]:
    """Limit -> the mechanism that enforces it for pods, for every limit the policy sets.
    ``untraceable``: audited syscalls that have no tracepoint on this kernel."""
    out: dict[str, str] = {}
    audit = policy.mode == "audit"
    if policy.egress is not None:
        out["egress"] = _audit(EGRESS, audit)
    if policy.exec is not None:
        out["exec"] = _audit(EXEC, audit)
    where = str(profile_path) if profile_path is not None else "(profile not written)"
    if policy.syscalls is not None:
        key = f"syscalls.deny ({'audit' if policy.syscall_audit() else 'kill'})"
        if policy.syscall_audit():
            missing = sorted(set(untraceable) & set(policy.syscalls.names))
            traced = len(policy.syscalls.names) - len(missing)
            text = f"{traced} syscall tracepoints (reported, let through)"
            if missing:
                text += f"; no tracepoint for {', '.join(missing)}: not observed"
            out[key] = text
        else:
            out[key] = (
                f"seccomp profile {where} (SCMP_ACT_KILL_PROCESS) + raw tracepoint "
                "signal_generate report"
            )
    if policy.sockets is not None:
        inet = policy.sockets.cgroup_families
        other = policy.sockets.seccomp_families
        if inet:
            names = "/".join(family_name(d.family) for d in inet)
            out[f"sockets {names}"] = _audit(CGROUP_SOCK, audit)
        if other:
            kinds = ", ".join(f"{family_name(d.family)} ({describe_deny(d)})" for d in other)
            if audit:
                out[f"sockets {kinds}"] = "tracepoint sys_enter_socket (reported, let through)"
            else:
                out[f"sockets {kinds}"] = f"seccomp notify via {listener} (profile {where}), EPERM"
    if policy.limits is not None:
        out["limits"] = LIMITS + (" (audit: reported, not killed)" if audit else "")
    return out


def admission_problem(
    policy: CompiledPolicy,
    arch: str,
    seccomp: object,
    *,
    listener: Path,
    profile_dir: Path,
) -> str | None:
    """Why a container of a pod under ``policy`` may not start with this seccomp spec
    (the hook's summary, None: no filter); None when it may."""
    req = seccomp_profile.requirement(policy, arch)
    if req is None:
        return None
    problems = seccomp_profile.missing(seccomp, req, listener)
    if not problems:
        return None
    needs: list[str] = []
    if policy.syscalls is not None and req.kill and not policy.syscall_audit():
        shown = ", ".join(policy.syscalls.names[:6])
        more = ", ..." if len(policy.syscalls.names) > 6 else ""
        needs.append(f"syscalls {shown}{more}")
    if req.sockets:
        spelled = sorted({s for d in req.sockets for s in d.spelled})
        needs.append("socket kinds " + ", ".join(spelled))
    return (
        f"policy {policy.name!r} denies {' and '.join(needs)} in enforce mode, which the "
        f"container's seccomp profile must enforce, but {'; '.join(problems)} (fix: set "
        f"{seccomp_profile.fix_hint(profile_dir, policy.name)} in the container's or the "
        "pod's securityContext)"
    )
