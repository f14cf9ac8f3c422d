"""Guard overhead benchmarks (issue 2): connect() with 1/1,000/10,000 allowed CIDRs,
fork+exec guarded vs unguarded, and a null-syscall loop outside any guarded cgroup with
nodeguard loaded vs not. Run as root: ``python -m bench`` (or ``make bench``)."""

from __future__ import annotations

import ipaddress
import os
import random
import statistics
from pathlib import Path

from bench.harness import (
    Comparison,
    LoopbackListener,
    bench_cgroup,
    cgroup_mount,
    compare,
    run_loop,
)
from nodeguard.bpf.guard import (
    ATTACH_INET4_CONNECT,
    PROG_TYPE_CGROUP_SOCK_ADDR,
    Guard,
    import_bcc,
)
from nodeguard.policy import compile_policy, load_policy_text
from nodeguard.policy.compiled import CompiledPolicy

UDP_CONNECTS = 300_000
TCP_CONNECTS = 10_000
FORK_EXECS = 1_000
NULL_SYSCALLS = 5_000_000


def _policy(name: str, egress: list[str] | None, exec_allow: list[str] | None) -> CompiledPolicy:
    lines = [
        "apiVersion: nodeguard.io/v1alpha1",
        "kind: AgentPolicy",
        f"metadata: {{name: {name}}}",
        "spec:",
    ]
    if egress is not None:
        lines.append("  egress:")
        lines.append("    allow:")
        lines.extend(f"      - {{cidr: '{c}', ports: ['1-65535'], protocol: any}}" for c in egress)
    if exec_allow is not None:
        lines.append("  exec:")
        lines.append("    allow: [" + ", ".join(f"'{p}'" for p in exec_allow) + "]")
    (policy,) = load_policy_text("\n".join(lines) + "\n", f"<bench:{name}>")
    return compile_policy(policy)


def cidrs(n: int, seed: int = 7) -> list[str]:
    """127.0.0.1/32 (the one the loop connects to) plus n-1 other prefixes of mixed lengths,
    in ranges nothing is ever sent to (they only fill the trie)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not crypto
    out = {"127.0.0.1/32"}
    while len(out) < n:
        plen = rng.choice([16, 20, 24, 24, 28, 32, 32, 32])
        base = rng.choice(
            [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("172.16.0.0/12")]
        )
        addr = int(base.network_address) + rng.randrange(base.num_addresses)
        out.add(str(ipaddress.ip_network((addr, plen), strict=False)))
    return sorted(out)


def bench_connect(bins: dict[str, Path], quick: bool) -> list[Comparison]:
    results: list[Comparison] = []
    mount = cgroup_mount()
    listener = LoopbackListener()
    rounds = 3 if quick else 9
    try:
        with Guard() as guard, bench_cgroup("base") as base, bench_cgroup("guarded") as guarded:
            for n in (1, 1_000, 10_000):
                policy_id = guard.load_policy(_policy(f"connect-{n}", cidrs(n), None))
                cgid = guard.guard(mount, guarded, policy_id)
                try:
                    udp = [str(bins["connect_loop"]), "udp", "127.0.0.1", "9", str(UDP_CONNECTS)]
                    results.append(
                        compare(
                            f"connect() UDP, {n:,} allowed CIDRs",
                            lambda: run_loop(base, udp),  # noqa: B023
                            lambda: run_loop(guarded, udp),  # noqa: B023
                            rounds=rounds,
                            goal_max_ratio=1.10 if n == 10_000 else None,
                            note="connect() on one UDP socket: the syscall plus the hook",
                        )
                    )
                    tcp = [
                        str(bins["connect_loop"]),
                        "tcp",
                        "127.0.0.1",
                        str(listener.port),
                        str(TCP_CONNECTS),
                    ]
                    results.append(
                        compare(
                            f"socket+connect+close TCP loopback, {n:,} allowed CIDRs",
                            lambda: run_loop(base, tcp),  # noqa: B023
                            lambda: run_loop(guarded, tcp),  # noqa: B023
                            rounds=rounds,
                            goal_max_ratio=1.10 if n == 10_000 else None,
                            note="a full loopback handshake per connect",
                        )
                    )
                finally:
                    guard.unguard(cgid)
                    guard.unload_policy(policy_id)
    finally:
        listener.close()
    return results


FLOOR_SOURCE = Path(__file__).with_name("floor.bpf.c")


def bench_hook_floor(bins: dict[str, Path], quick: bool) -> Comparison:
    """The kernel's fixed cost of any cgroup connect hook: an empty program vs none."""
    bcc = import_bcc()
    bpf = bcc.BPF(src_file=str(FLOOR_SOURCE).encode())
    fn = bpf.load_func(
        b"floor_connect4", PROG_TYPE_CGROUP_SOCK_ADDR, attach_type=ATTACH_INET4_CONNECT
    )
    udp = [str(bins["connect_loop"]), "udp", "127.0.0.1", "9", str(UDP_CONNECTS)]
    try:
        with bench_cgroup("base") as base, bench_cgroup("floor") as floor:
            fd = os.open(floor, os.O_RDONLY | os.O_DIRECTORY)
            bcc.BPF.attach_func(fn, fd, ATTACH_INET4_CONNECT)
            try:
                return compare(
                    "connect() UDP, empty cgroup hook (kernel floor, not nodeguard)",
                    lambda: run_loop(base, udp),
                    lambda: run_loop(floor, udp),
                    rounds=3 if quick else 9,
                    goal_max_ratio=None,
                    note="what any cgroup connect4 program costs: the part nodeguard cannot remove",
                )
            finally:
                bcc.BPF.detach_func(fn, fd, ATTACH_INET4_CONNECT)
                os.close(fd)
    finally:
        bpf.cleanup()


def bench_fork_exec(bins: dict[str, Path], quick: bool) -> Comparison:
    mount = cgroup_mount()
    loop = bins["forkexec_loop"]
    argv = [str(loop), "/usr/bin/true", str(FORK_EXECS // (4 if quick else 1))]
    with Guard() as guard, bench_cgroup("base") as base, bench_cgroup("guarded") as guarded:
        policy = _policy("fork-exec", None, [str(loop), "/usr/bin/*", "/opt/agent/**"])
        policy_id = guard.load_policy(policy)
        guard.guard(mount, guarded, policy_id)
        return compare(
            "fork+exec+wait of /usr/bin/true",
            lambda: run_loop(base, argv),
            lambda: run_loop(guarded, argv),
            rounds=3 if quick else 7,
            goal_max_ratio=1.10,
            note="guarded: exec allowlist checked (segment glob) on every exec",
        )


def bench_unguarded_fork_exec(bins: dict[str, Path], quick: bool) -> Comparison:
    """Outside any guarded cgroup: nodeguard loaded (guarding another cgroup) vs not. Every
    exec on the node passes the exec tracepoints (sched_process_exec, and sys_enter/exit
    of execve that note where each exec began): this is what the rest of a node pays."""
    mount = cgroup_mount()
    loop = bins["forkexec_loop"]
    argv = [str(loop), "/usr/bin/true", str(FORK_EXECS // (4 if quick else 1))]
    rounds = 3 if quick else 7
    base_ns: list[float] = []
    loaded_ns: list[float] = []
    ratios: list[float] = []
    policy = _policy("fork-exec-outside", None, ["/usr/bin/*"])

    def loaded(outside: Path, other: Path) -> float:
        with Guard() as guard:
            guard.guard(mount, other, guard.load_policy(policy))
            return run_loop(outside, argv)

    with bench_cgroup("outside") as outside, bench_cgroup("victim") as other:
        for i in range(rounds):  # alternate the order, so neither side always runs warm
            if i % 2:
                loaded_ns.append(loaded(outside, other))
                base_ns.append(run_loop(outside, argv))
            else:
                base_ns.append(run_loop(outside, argv))
                loaded_ns.append(loaded(outside, other))
            ratios.append(loaded_ns[-1] / base_ns[-1])
    return Comparison(
        name="fork+exec+wait of /usr/bin/true outside guarded cgroups, loaded vs not",
        baseline_ns=statistics.median(base_ns),
        subject_ns=statistics.median(loaded_ns),
        paired_ratio=statistics.median(ratios),
        goal_max_ratio=1.05,
        rounds=rounds,
        note="the exec tracepoints run for every exec on the node",
    )


def bench_null_syscall(bins: dict[str, Path], quick: bool) -> Comparison:
    """Outside any guarded cgroup: nodeguard loaded (guarding another cgroup) vs not."""
    mount = cgroup_mount()
    argv = [str(bins["null_syscall"]), str(NULL_SYSCALLS)]
    rounds = 3 if quick else 5
    base_ns: list[float] = []
    loaded_ns: list[float] = []
    with bench_cgroup("outside") as outside, bench_cgroup("victim") as other:
        for _ in range(rounds):
            base_ns.append(run_loop(outside, argv))
            with Guard() as guard:
                policy_id = guard.load_policy(
                    _policy("null-syscall", ["127.0.0.1/32"], ["/usr/bin/true"])
                )
                guard.guard(mount, other, policy_id)
                loaded_ns.append(run_loop(outside, argv))
    return Comparison(
        name="null syscall (getppid) outside guarded cgroups, loaded vs not",
        baseline_ns=statistics.median(base_ns),
        subject_ns=statistics.median(loaded_ns),
        goal_max_ratio=1.02,
        rounds=rounds,
        note="nodeguard attaches no per-syscall hook, so unguarded processes pay nothing",
    )
