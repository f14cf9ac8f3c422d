"""nodeguard/seccomp/profile.py, the admission check (agent/sandbox.py) and the hook's
summary of a container's seccomp spec: pure, no kernel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nodeguard.agent.hook import seccomp_summary
from nodeguard.agent.sandbox import admission_problem, enforcement
from nodeguard.policy.compile import compile_policy
from nodeguard.policy.compiled import CompiledPolicy
from nodeguard.policy.loader import load_policy_text
from nodeguard.seccomp import profile as sp

LISTENER = Path("/run/nodeguard/seccomp.sock")
PROFILE_DIR = Path("/var/lib/kubelet/seccomp/nodeguard")


def policy(spec: str, name: str = "p") -> CompiledPolicy:
    text = (
        "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\n"
        f"metadata: {{name: {name}}}\nspec:\n{spec}"
    )
    return compile_policy(load_policy_text(text)[0])


FULL = policy(
    "  syscalls: {deny: [unshare, mount, ptrace, setuid], action: kill}\n"
    "  sockets: {deny: [raw, packet, 'netlink:audit', 'unix:dgram']}\n"
)


def rules(profile: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if r["action"] == action]


def test_x86_64_profile_shape() -> None:
    profile = sp.render_profile(FULL, "x86_64", LISTENER)
    assert profile is not None
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert profile["listenerPath"] == str(LISTENER)
    assert profile["listenerMetadata"] == "nodeguard-policy=p"
    (kill,) = rules(profile, "SCMP_ACT_KILL_PROCESS")
    names = set(kill["names"])
    # i386 variants and the socketcall multiplexer close the 32-bit ABI
    assert {"unshare", "mount", "ptrace", "setuid", "setuid32", "socketcall"} <= names
    assert "args" not in kill
    notify = rules(profile, "SCMP_ACT_NOTIFY")
    assert all(r["names"] == ["socket", "socketpair"] for r in notify)
    conds = [
        tuple((a["index"], a["value"], a.get("valueTwo"), a["op"]) for a in r["args"])
        for r in notify
    ]
    # packet: every socket, plus the legacy socket(AF_INET, SOCK_PACKET)
    assert ((0, 17, None, "SCMP_CMP_EQ"),) in conds
    assert ((0, 2, None, "SCMP_CMP_EQ"), (1, 0xF, 10, "SCMP_CMP_MASKED_EQ")) in conds
    # netlink:audit: one rule on the protocol
    assert ((0, 16, None, "SCMP_CMP_EQ"), (2, 9, None, "SCMP_CMP_EQ")) in conds
    # unix:dgram covers raw too (unix_create turns it into dgram): one rule per type
    assert ((0, 1, None, "SCMP_CMP_EQ"), (1, 0xF, 2, "SCMP_CMP_MASKED_EQ")) in conds
    assert ((0, 1, None, "SCMP_CMP_EQ"), (1, 0xF, 3, "SCMP_CMP_MASKED_EQ")) in conds
    # inet raw is the cgroup hook's business, not seccomp's
    assert not any(c[0][1] in (2, 10) and len(c) == 1 for c in conds)
    json.loads(sp.profile_text(profile))


def test_arm64_profile_has_only_native_names() -> None:
    p = policy("  syscalls: {deny: [open, unshare], action: kill}\n")
    profile = sp.render_profile(p, "arm64", LISTENER)
    assert profile is not None
    assert profile["architectures"] == ["SCMP_ARCH_AARCH64"]
    (kill,) = rules(profile, "SCMP_ACT_KILL_PROCESS")
    assert kill["names"] == ["unshare"]  # arm64 has no open(2): left out, runc would skip it
    assert "listenerPath" not in profile


@pytest.mark.parametrize(
    "spec",
    [
        "  mode: audit\n  syscalls: {deny: [unshare]}\n  sockets: {deny: [packet]}\n",
        "  syscalls: {deny: [unshare], action: audit}\n",
        "  sockets: {deny: [raw]}\n",
        "  exec: {allow: [/bin/sh]}\n",
    ],
)
def test_no_profile_when_seccomp_has_nothing_to_enforce(spec: str) -> None:
    p = policy(spec)
    assert sp.render_profile(p, "x86_64", LISTENER) is None
    assert admission_problem(p, "x86_64", None, listener=LISTENER, profile_dir=PROFILE_DIR) is None


def test_write_profiles_atomic_and_stale_removed(tmp_path: Path) -> None:
    other = policy("  syscalls: {deny: [bpf], action: kill}\n", name="other")
    none = policy("  sockets: {deny: [raw]}\n", name="inet-only")
    (tmp_path / "gone.json").write_text("{}")
    written = sp.write_profiles(tmp_path, [FULL, other, none], "x86_64", LISTENER)
    assert written == {"p": tmp_path / "p.json", "other": tmp_path / "other.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "p.json"]
    mtime = (tmp_path / "p.json").stat().st_mtime_ns
    sp.write_profiles(tmp_path, [FULL], "x86_64", LISTENER)
    assert (tmp_path / "p.json").stat().st_mtime_ns == mtime  # unchanged: not rewritten
    assert not (tmp_path / "other.json").exists()


def spec_of(profile: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the hook sends for a container whose config.json has this linux.seccomp."""
    return seccomp_summary(json.loads(json.dumps(profile)))


def test_the_agents_own_profile_is_accepted() -> None:
    summary = spec_of(sp.render_profile(FULL, "x86_64", LISTENER))
    assert (
        admission_problem(FULL, "x86_64", summary, listener=LISTENER, profile_dir=PROFILE_DIR)
        is None
    )


def test_no_filter_is_refused_with_the_fix() -> None:
    reason = admission_problem(FULL, "x86_64", None, listener=LISTENER, profile_dir=PROFILE_DIR)
    assert reason is not None and "\n" not in reason
    assert "policy 'p'" in reason and "no seccomp profile" in reason
    assert "localhostProfile: nodeguard/p.json" in reason


def test_missing_kill_name_and_wrong_listener_are_named() -> None:
    profile = sp.render_profile(FULL, "x86_64", LISTENER)
    assert profile is not None
    kill = rules(profile, "SCMP_ACT_KILL_PROCESS")[0]
    kill["names"].remove("ptrace")
    summary = spec_of(profile)
    reason = admission_problem(FULL, "x86_64", summary, listener=LISTENER, profile_dir=PROFILE_DIR)
    assert reason is not None and "no kill rule for ptrace" in reason
    profile = sp.render_profile(FULL, "x86_64", Path("/elsewhere.sock"))
    reason = admission_problem(
        FULL, "x86_64", spec_of(profile), listener=LISTENER, profile_dir=PROFILE_DIR
    )
    assert reason is not None and "listenerPath is /elsewhere.sock" in reason


def test_notify_rules_must_cover_every_family() -> None:
    profile = sp.render_profile(FULL, "x86_64", LISTENER)
    assert profile is not None
    profile["syscalls"] = [
        r for r in profile["syscalls"] if not (r.get("args") and r["args"][0]["value"] == 16)
    ]
    summary = spec_of(profile)
    reason = admission_problem(FULL, "x86_64", summary, listener=LISTENER, profile_dir=PROFILE_DIR)
    assert reason is not None and "famil" in reason and "16" in reason


def test_a_broader_rule_covers_narrower_combinations() -> None:
    p = policy("  sockets: {deny: ['netlink:audit', 'netlink:route']}\n")
    broad = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": str(LISTENER),
        "syscalls": [
            {
                "names": ["socket"],
                "action": "SCMP_ACT_NOTIFY",
                "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}],
            },
            {"names": ["socketcall"], "action": "SCMP_ACT_KILL_PROCESS"},
        ],
    }
    assert (
        admission_problem(p, "x86_64", spec_of(broad), listener=LISTENER, profile_dir=PROFILE_DIR)
        is None
    )


def test_errno_rules_do_not_count_as_kill() -> None:
    p = policy("  syscalls: {deny: [unshare], action: kill}\n")
    errno_only = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_ERRNO"}],
    }
    reason = admission_problem(
        p, "arm64", spec_of(errno_only), listener=LISTENER, profile_dir=PROFILE_DIR
    )
    assert reason is not None and "no kill rule for unshare" in reason


def test_summary_ignores_garbage() -> None:
    assert seccomp_summary(None) is None
    assert seccomp_summary("x") is None
    summary = seccomp_summary({"syscalls": [1, {"names": [3, "a"], "action": "SCMP_ACT_KILL"}]})
    assert summary == {
        "default_action": "",
        "architectures": [],
        "listener_path": "",
        "rules": [{"names": ["a"], "action": "SCMP_ACT_KILL", "args": []}],
    }


def test_enforcement_names_each_mechanism() -> None:
    limits = policy(
        "  egress: {allow: [{cidr: 10.0.0.0/8}]}\n"
        "  syscalls: {deny: [unshare], action: kill}\n"
        "  sockets: {deny: [raw, packet]}\n"
        "  limits: {maxProcesses: 10}\n"
    )
    out = enforcement(limits, profile_path=PROFILE_DIR / "p.json", listener=LISTENER)
    assert out["syscalls.deny (kill)"].startswith(f"seccomp profile {PROFILE_DIR}/p.json")
    assert "signal_generate" in out["syscalls.deny (kill)"]
    assert out["sockets inet/inet6"].startswith("cgroup sock_create")
    assert any(k.startswith("sockets packet") and str(LISTENER) in v for k, v in out.items())
    assert "task_newtask" in out["limits"]
    audit = policy("  syscalls: {deny: [unshare, kexec_file_load], action: audit}\n")
    out = enforcement(audit, profile_path=None, listener=LISTENER, untraceable=["kexec_file_load"])
    assert out["syscalls.deny (audit)"].startswith("1 syscall tracepoints")
    assert "no tracepoint for kexec_file_load" in out["syscalls.deny (audit)"]
