"""Sandbox limit benchmarks (issue 4): what a syscall deny list costs a null-syscall loop.

nodeguard enforces a deny list (action kill) with a seccomp filter in the guarded
command's processes, and reports kills from the signal_generate raw tracepoint, which
only runs when a signal is sent. Measured here, all against baselines of the same run:

1. a loop outside guarded cgroups: nothing loaded vs nodeguard loaded (a policy denying
   20 syscalls guarding another cgroup);
2. the loop inside a guarded cgroup under nodeguard's seccomp filter, with the kernel's
   floor for comparison (a seccomp filter that allows everything);
3. the comparator the issue asks for: one BPF program on raw_syscalls:sys_enter doing the
   same job (bench/raw_sys_enter.bpf.c), outside and inside;
4. the audit action: a sys_enter_<name> tracepoint per denied syscall, outside and inside;
5. fork+exec inside a guarded cgroup with process budgets (never reached) vs unguarded.

Run as root: ``python -m bench --only sandbox`` (part of ``python -m bench``).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.harness import (
    Comparison,
    Subject,
    SubjectGroup,
    bench_cgroup,
    cgroup_mount,
    compare,
    compare_groups,
    median_of,
    run_loop,
)
from nodeguard.bpf.guard import Guard, import_bcc
from nodeguard.identity.cgroupfs import cgroup_id, cgroup_level
from nodeguard.policy import compile_policy, load_policy_text
from nodeguard.policy.compiled import CompiledPolicy
from nodeguard.policy.syscalls import host_arch, syscall_number
from nodeguard.seccomp import filter as seccomp_filter
from nodeguard.seccomp.install import install as install_seccomp

SYSCALL_LOOPS = 2_000_000
FORK_EXECS = 1_000
# 20 syscalls a sandboxed agent has no business making (all exist on x86_64 and arm64).
DENIED: tuple[str, ...] = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "bpf",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "open_by_handle_at",
    "userfaultfd",
    "perf_event_open",
)
RAW_SOURCE = Path(__file__).with_name("raw_sys_enter.bpf.c")
RAW_FN = b"raw_sys_enter"
RAW_POLICY_ID = 1
# a seccomp program of one instruction: return ALLOW (the kernel's floor for any filter)
ALLOW_ALL = struct.pack("<HBBI", 0x06, 0, 0, seccomp_filter.RET_ALLOW)


def sandbox_policy(name: str, *, action: str = "kill", limits: bool = False) -> CompiledPolicy:
    lines = [
        "apiVersion: nodeguard.io/v1alpha1",
        "kind: AgentPolicy",
        f"metadata: {{name: {name}}}",
        "spec:",
    ]
    if limits:
        # far above what the loop does (~1,500 fork+execs/s, 2 processes): never reached
        lines += [
            "  limits:",
            "    maxProcesses: 100000",
            "    forksPerSecond: 1000000",
            "    execsPerSecond: 1000000",
        ]
    else:
        lines += [
            "  syscalls:",
            "    deny: [" + ", ".join(DENIED) + "]",
            f"    action: {action}",
        ]
    (policy,) = load_policy_text("\n".join(lines) + "\n", f"<bench:{name}>")
    return compile_policy(policy)


def seccomp_program(policy: CompiledPolicy) -> bytes:
    """The filter `nodeguard run` installs for ``policy`` on this machine."""
    plan = seccomp_filter.plan(policy)
    if plan is None or plan.needs_listener:
        raise RuntimeError(f"policy {policy.name} needs no plain seccomp filter")
    return seccomp_filter.assemble(plan, host_arch())


def seccomp_setup(program: bytes) -> Callable[[], None]:
    """What the runner does in the child after joining the cgroup, before exec."""

    def setup() -> None:
        install_seccomp(program, listener=False)

    return setup


def check_seccomp(cgroup: Path, program: bytes) -> str:
    """Run grep in the cgroup with ``program`` installed the same way: proves the filter is
    in place (mode 2) and leaves ordinary programs alone. Returns grep's lines."""
    procs = cgroup / "cgroup.procs"
    setup = seccomp_setup(program)

    def join() -> None:
        with open(procs, "w") as f:
            f.write("0")
        setup()

    r = subprocess.run(
        ["/usr/bin/grep", "^Seccomp", "/proc/self/status"],
        preexec_fn=join,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = " ".join(r.stdout.split())
    if r.returncode != 0 or "Seccomp: 2" not in lines:
        raise RuntimeError(f"seccomp filter not in place: {r.returncode} {r.stdout} {r.stderr}")
    return lines


class _RawDenyKey(ct.Structure):
    _fields_ = (("policy_id", ct.c_uint32), ("nr", ct.c_uint32))


class RawSysEnter:
    """The comparator: bench/raw_sys_enter.bpf.c, loaded once, attached on demand.

    It only counts denied calls (never kills), and only for the cgroup given here."""

    def __init__(self, mount: Path, guarded: Path, numbers: tuple[int, ...]) -> None:
        bcc = import_bcc()
        self._bcc = bcc
        self._bpf: Any = bcc.BPF(src_file=str(RAW_SOURCE).encode())
        self._attached = False
        try:
            self._bpf.load_func(RAW_FN, bcc.BPF.RAW_TRACEPOINT)
            self._bpf[b"raw_cgroup_policy"][ct.c_uint64(cgroup_id(guarded))] = ct.c_uint32(
                RAW_POLICY_ID
            )
            self._bpf[b"raw_levels"][ct.c_int(0)] = ct.c_uint64(1 << cgroup_level(mount, guarded))
            for nr in numbers:
                self.deny(nr)
        except Exception:
            self._bpf.cleanup()
            raise

    def deny(self, nr: int) -> None:
        self._bpf[b"raw_deny"][_RawDenyKey(RAW_POLICY_ID, nr)] = ct.c_uint32(1)

    def allow(self, nr: int) -> None:
        del self._bpf[b"raw_deny"][_RawDenyKey(RAW_POLICY_ID, nr)]

    def hits(self) -> int:
        return int(self._bpf[b"raw_hits"].sum(ct.c_int(0)).value)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        self._bpf.attach_raw_tracepoint(tp=b"sys_enter", fn_name=RAW_FN)
        self._attached = True
        try:
            yield
        finally:
            self._bpf.detach_raw_tracepoint(tp=b"sys_enter")
            self._attached = False

    def close(self) -> None:
        if self._attached:
            with contextlib.suppress(Exception):
                self._bpf.detach_raw_tracepoint(tp=b"sys_enter")
        self._bpf.cleanup()


def check_raw(raw: RawSysEnter, inside: Path, outside: Path, null_syscall: Path) -> int:
    """Prove the comparator sees the guarded loop (and only it): deny getppid for a moment,
    run 1,000 calls inside and outside; exactly the inside ones must count."""
    nr = syscall_number("getppid", host_arch())
    if nr is None:
        raise RuntimeError("no getppid on this arch")
    argv = [str(null_syscall), "1000"]
    raw.deny(nr)
    try:
        with raw.attached():
            before = raw.hits()
            run_loop(inside, argv)
            after_inside = raw.hits()
            run_loop(outside, argv)
            after_outside = raw.hits()
    finally:
        raw.allow(nr)
    seen = after_inside - before
    if seen < 1000 or after_outside != after_inside:
        raise RuntimeError(
            f"raw sys_enter comparator counted {seen} inside, "
            f"{after_outside - after_inside} outside (want >= 1000, 0)"
        )
    return seen


def bench_outside_loaded(bins: dict[str, Path], quick: bool) -> Comparison:
    """Outside guarded cgroups: nothing loaded vs nodeguard loaded with the deny policy."""
    mount = cgroup_mount()
    argv = [str(bins["null_syscall"]), str(SYSCALL_LOOPS)]
    samples = 1 if quick else 3
    policy = sandbox_policy("sandbox-outside")
    with bench_cgroup("outside") as outside, bench_cgroup("victim") as victim:

        def loop() -> float:
            return median_of(samples, lambda: run_loop(outside, argv))

        def loaded() -> float:
            with Guard() as guard:
                guard.guard(mount, victim, guard.load_policy(policy))
                return loop()

        return compare(
            "null syscall (getppid) outside guarded cgroups, deny policy loaded vs nothing",
            loop,
            loaded,
            rounds=3 if quick else 7,
            goal_max_ratio=1.02,
            note="nodeguard loaded and guarding another cgroup with 20 syscalls denied; "
            "the guard is loaded and unloaded (compiled) every round",
        )


def bench_syscall_paths(
    bins: dict[str, Path], quick: bool
) -> tuple[list[Comparison], dict[str, object]]:
    """Inside vs outside, nodeguard vs the raw sys_enter comparator vs audit tracepoints,
    all against one baseline (the loop in an unguarded cgroup, nodeguard loaded)."""
    mount = cgroup_mount()
    null_syscall = bins["null_syscall"]
    argv = [str(null_syscall), str(SYSCALL_LOOPS)]
    samples = 1 if quick else 3
    kill = sandbox_policy("sandbox-kill")
    audit = sandbox_policy("sandbox-audit", action="audit")
    program = seccomp_program(kill)
    if kill.syscalls is None:
        raise RuntimeError("the deny policy has no syscalls")
    numbers = tuple(kill.syscalls.numbers[host_arch()])
    extra: dict[str, object] = {
        "denied_syscalls": list(DENIED),
        "seccomp_filter_instructions": len(program) // 8,
    }
    with (
        bench_cgroup("base") as base,
        bench_cgroup("sandbox") as sandbox,
        bench_cgroup("audited") as audited,
        Guard() as guard,
    ):
        guard.guard(mount, sandbox, guard.load_policy(kill))
        guard.guard(mount, audited, guard.load_policy(audit))
        extra["seccomp_status_inside"] = check_seccomp(sandbox, program)
        raw = RawSysEnter(mount, sandbox, numbers)
        try:
            extra["raw_check_counted"] = check_raw(raw, sandbox, base, null_syscall)
            missing = guard.set_audit(DENIED, False)
            tracepoints = sorted(guard.audit_links())
            extra["audit_tracepoints"] = tracepoints
            extra["audit_without_tracepoint"] = missing
            guard.set_audit((), False)

            @contextlib.contextmanager
            def audit_on() -> Iterator[None]:
                guard.set_audit(DENIED, False)
                try:
                    yield
                finally:
                    guard.set_audit((), False)

            def loop(cgroup: Path, setup: Callable[[], None] | None = None) -> Callable[[], float]:
                return lambda: median_of(samples, lambda: run_loop(cgroup, argv, setup))

            n_tp = len(tracepoints)
            groups = [
                SubjectGroup(
                    [
                        Subject(
                            "seccomp filter allowing everything, outside guarded cgroups "
                            "(kernel floor, not nodeguard)",
                            loop(base, seccomp_setup(ALLOW_ALL)),
                            note="what any seccomp filter costs: the syscall slow path",
                        ),
                        Subject(
                            "inside a guarded cgroup, 20 syscalls denied by nodeguard's "
                            "seccomp filter",
                            loop(sandbox, seccomp_setup(program)),
                            goal_max_ratio=1.15,
                            note=f"the filter `nodeguard run` installs ({len(program) // 8} "
                            "instructions); the seccomp action cache skips it for getppid",
                        ),
                    ]
                ),
                SubjectGroup(
                    [
                        Subject(
                            "comparator: one raw sys_enter BPF hook, outside guarded cgroups",
                            loop(base),
                            note="bench/raw_sys_enter.bpf.c: cgroup lookup on every syscall",
                        ),
                        Subject(
                            "comparator: one raw sys_enter BPF hook, inside a guarded cgroup",
                            loop(sandbox),
                            note="cgroup lookup + deny-hash lookup on every syscall",
                        ),
                    ],
                    context=raw.attached,
                ),
                SubjectGroup(
                    [
                        Subject(
                            f"audit action: {n_tp} sys_enter_<name> tracepoints, "
                            "outside guarded cgroups",
                            loop(base),
                            note="attached only while a loaded policy audits syscalls",
                        ),
                        Subject(
                            f"audit action: {n_tp} sys_enter_<name> tracepoints, "
                            "inside a guarded cgroup (action audit)",
                            loop(audited),
                            note="no seccomp filter under action audit",
                        ),
                    ],
                    context=audit_on,
                ),
            ]
            results = compare_groups(loop(base), groups, rounds=3 if quick else 7)
        finally:
            raw.close()
    return results, extra


def bench_budget_fork_exec(bins: dict[str, Path], quick: bool) -> Comparison:
    """fork+exec inside a guarded cgroup with process budgets (never reached) vs not."""
    mount = cgroup_mount()
    argv = [str(bins["forkexec_loop"]), "/usr/bin/true", str(FORK_EXECS // (4 if quick else 1))]
    with Guard() as guard, bench_cgroup("base") as base, bench_cgroup("limited") as limited:
        guard.guard(
            mount, limited, guard.load_policy(sandbox_policy("sandbox-limits", limits=True))
        )
        return compare(
            "fork+exec+wait of /usr/bin/true, process budgets (maxProcesses, forks/s, execs/s)",
            lambda: run_loop(base, argv),
            lambda: run_loop(limited, argv),
            rounds=3 if quick else 7,
            goal_max_ratio=1.10,
            note="guarded: task_newtask, sched_process_exit and the exec-rate program "
            "update the pod's budget on every fork, exit and exec",
        )


def run_sandbox_bench(
    bins: dict[str, Path], quick: bool
) -> tuple[list[Comparison], dict[str, object]]:
    results = [bench_outside_loaded(bins, quick)]
    inside, extra = bench_syscall_paths(bins, quick)
    results += inside
    results.append(bench_budget_fork_exec(bins, quick))
    return results, extra
