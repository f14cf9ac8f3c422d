"""Node agent benchmarks (issue 3), against a private containerd started here:

- RunPodSandbox -> enforced: time from the CRI call until the pod cgroup carries the guard
  (no container started, so the cgroup watch / CRI poll noticed it, not the hook), next
  to the RunPodSandbox call itself as the baseline;
- policy file change -> enforced: time from writing a policy file until the kernel's
  cgroup_policy entry of a running pod points at the new version (p50/p99 of 50 changes;
  goal p99 <= 100 ms);
- agent RSS and idle CPU with 0 and with 50 guarded pods.

Run as root: ``python -m bench --only agent``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.harness import Comparison
from nodeguard.bpf import syscalls
from nodeguard.bpf.guard import ATTACH_INET4_CONNECT, our_programs
from nodeguard.identity.cgroup_paths import find_pod_cgroup
from nodeguard.identity.cgroupfs import cgroup_id, find_cgroup2_mount
from nodeguard.lab.agent_process import AgentProcess
from nodeguard.lab.containerd import ContainerdRuntime, KubeletSim, new_workdir

POLICY = """\
apiVersion: nodeguard.io/v1alpha1
kind: AgentPolicy
metadata: {{name: bench-agent}}
spec:
  selector: {{namespaces: [agents], matchLabels: {{app: bench}}}}
  egress:
    allow: [{{cidr: "{cidr}", ports: ["443"], protocol: tcp}}]
  exec:
    allow: [/bin/sh, /bin/sleep]
"""


@dataclass
class Measured:
    name: str
    values_ms: list[float]
    goal_p99_ms: float | None = None

    @property
    def p50(self) -> float:
        return statistics.median(self.values_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.values_ms)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": len(self.values_ms),
            "p50_ms": round(self.p50, 2),
            "p99_ms": round(self.p99, 2),
            "max_ms": round(max(self.values_ms), 2),
            "goal_p99_ms": self.goal_p99_ms,
            "meets_goal": None if self.goal_p99_ms is None else self.p99 <= self.goal_p99_ms,
        }


def _attached(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return bool(our_programs(fd, ATTACH_INET4_CONNECT))
    finally:
        os.close(fd)


def _pinned_policy_id(agent: AgentProcess, cgid: int) -> int | None:
    (pin_set,) = [p for p in agent.pin_root.iterdir() if p.is_dir()]
    fd = syscalls.obj_get(pin_set / "cgroup_policy")
    try:
        value = syscalls.map_lookup(fd, cgid.to_bytes(8, "little"), 8)
    finally:
        os.close(fd)
    return None if value is None else int.from_bytes(value[:4], "little")


def run_agent_bench(quick: bool) -> tuple[list[Measured], list[Comparison], dict[str, Any]]:
    mount = find_cgroup2_mount()
    assert mount is not None
    runtime = ContainerdRuntime(new_workdir()).start()
    work = Path(tempfile.mkdtemp(prefix="nodeguard-bench-agent-"))
    agent = AgentProcess(runtime, work, overrides={"resyncIntervalMs": 500})
    kubelet = KubeletSim(runtime)
    measured: list[Measured] = []
    extra: dict[str, Any] = {}
    try:
        agent.policy_dir.mkdir(parents=True)
        (agent.policy_dir / "bench.yaml").write_text(POLICY.format(cidr="198.18.250.0/24"))
        agent.start()
        assert agent.proc is not None
        proc = psutil.Process(agent.proc.pid)
        extra["rss_mib_0_pods"], extra["idle_cpu_pct_0_pods"] = _idle(proc, 5 if quick else 20)

        # RunPodSandbox -> enforced
        n = 10 if quick else 50
        enforced_ms: list[float] = []
        sandbox_ms: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            pod = kubelet.run_pod("agents", f"bench-{i}", {"app": "bench"})
            sandbox_ms.append((time.perf_counter() - t0) * 1000)
            path = find_pod_cgroup(mount, pod.uid)
            while path is None or not _attached(path):
                time.sleep(0.001)
                path = path or find_pod_cgroup(mount, pod.uid)
            enforced_ms.append((time.perf_counter() - t0) * 1000)
        measured.append(Measured("RunPodSandbox call itself (baseline)", sandbox_ms))
        measured.append(
            Measured("RunPodSandbox -> pod enforced (cgroup watch, no hook)", enforced_ms)
        )

        # policy change -> enforced for a running pod
        probe_path = find_pod_cgroup(mount, next(iter(kubelet.pods.values())).uid)
        assert probe_path is not None
        cgid = cgroup_id(probe_path)
        change_ms: list[float] = []
        for i in range(20 if quick else 50):
            before = _pinned_policy_id(agent, cgid)
            t0 = time.perf_counter()
            (agent.policy_dir / "bench.yaml").write_text(
                POLICY.format(cidr=f"198.18.{200 + (i % 40)}.0/24")
            )
            while _pinned_policy_id(agent, cgid) == before:
                time.sleep(0.0005)
            change_ms.append((time.perf_counter() - t0) * 1000)
        measured.append(
            Measured("policy file change -> enforced in the kernel", change_ms, goal_p99_ms=100)
        )

        extra["guarded_pods"] = n
        extra[f"rss_mib_{n}_pods"], extra[f"idle_cpu_pct_{n}_pods"] = _idle(
            proc, 5 if quick else 30
        )
    finally:
        kubelet.remove_all()
        agent.teardown()
        runtime.close()
    return measured, [], extra


def _idle(proc: psutil.Process, seconds: float) -> tuple[float, float]:
    """RSS (MiB) and CPU (% of one core) of the agent over ``seconds`` of idling."""
    time.sleep(2)  # let the last reconcile settle
    c0 = proc.cpu_times()
    time.sleep(seconds)
    c1 = proc.cpu_times()
    cpu = (c1.user + c1.system - c0.user - c0.system) / seconds * 100
    return round(proc.memory_info().rss / (1 << 20), 1), round(cpu, 2)
