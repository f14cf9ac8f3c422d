"""Sandbox limits for pods against a real containerd + runc: the agent's Localhost seccomp
profile kills denied syscalls, its seccomp listener refuses (EPERM) and reports socket
families the cgroup hook cannot see, and the runtime hook refuses a container of a
selected pod that starts without the profile.

Every pod is the test's own; the only network traffic is on the pod's loopback.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeguard.identity.cri import CRIError
from nodeguard.lab.agent_process import AgentProcess
from nodeguard.lab.containerd import ContainerdRuntime, KubeletSim, PodHandle

pytestmark = pytest.mark.node

NS = "sandbox"
POLICY = f"""\
apiVersion: nodeguard.io/v1alpha1
kind: AgentPolicy
metadata: {{name: sandboxed}}
spec:
  selector:
    namespaces: [{NS}]
    matchLabels: {{app: sandboxed}}
  syscalls: {{deny: [unshare, mount, ptrace], action: kill}}
  sockets: {{deny: [raw, packet]}}
"""
SIGSYS_EXIT = 128 + signal.SIGSYS


@pytest.fixture(scope="module")
def agent(
    runtime: ContainerdRuntime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    proc = AgentProcess(runtime, tmp_path_factory.mktemp("sbx"))
    proc.policy_dir.mkdir(parents=True)
    (proc.policy_dir / "sandboxed.yaml").write_text(POLICY)
    try:
        proc.start()
        yield proc
    finally:
        proc.teardown()


@pytest.fixture
def profile(agent: AgentProcess) -> Path:
    path = agent.seccomp_profile_dir / "sandboxed.json"
    assert path.is_file(), f"the agent did not write {path}"
    return path


def wait_exit(runtime: ContainerdRuntime, container_id: str, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = runtime.cri.container_status(container_id)
        if st.state == "exited":
            return st.exit_code
        time.sleep(0.05)
    raise AssertionError(f"container {container_id[:12]} still running after {timeout}s")


def container_log(runtime: ContainerdRuntime, pod: PodHandle, name: str) -> str:
    """The container's output (CRI log lines: time, stream, tag, text)."""
    path = Path(pod.config.log_directory) / name / "0.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(line.split(" ", 3)[-1] for line in lines)


def records(agent: AgentProcess, pod_name: str, timeout: float = 10, **want: Any) -> list[Any]:
    """Violation records of ``pod_name`` in the agent's event log, waiting until one
    matches ``want`` (e.g. kind="syscall"), as an operator would read them."""
    log_file = agent.workdir / "state" / "events" / "violations.jsonl"
    deadline = time.monotonic() + timeout
    mine: list[Any] = []
    while time.monotonic() < deadline:
        lines = log_file.read_text().splitlines() if log_file.exists() else []
        mine = [
            r
            for r in map(json.loads, lines)
            if r.get("unmapped", {}).get("k8s", {}).get("pod_name") == pod_name
        ]
        if any(all(want_text in json.dumps(r) for want_text in want.values()) for r in mine):
            return mine
        time.sleep(0.2)
    raise AssertionError(f"no record of {pod_name} with {want}: {mine}")


def test_profile_is_written_and_shown_in_status(agent: AgentProcess, profile: Path) -> None:
    data = json.loads(profile.read_text())
    assert data["defaultAction"] == "SCMP_ACT_ALLOW"
    kill = [r for r in data["syscalls"] if r["action"] == "SCMP_ACT_KILL_PROCESS"]
    assert {"unshare", "mount", "ptrace"} <= set(kill[0]["names"])
    assert data["listenerPath"] == str(agent.runtime.agent_socket.with_name("seccomp.sock"))
    snap = agent.status()
    policy = next(p for p in snap.policies if p.name == "sandboxed")
    assert policy.seccomp_profile == str(profile)
    assert "seccomp profile" in policy.enforcement["syscalls.deny (kill)"]
    assert any("seccomp notify" in v for v in policy.enforcement.values())
    assert any("cgroup sock_create" in v for v in policy.enforcement.values())


def test_denied_syscall_is_killed_and_reported(
    agent: AgentProcess, kubelet: KubeletSim, profile: Path
) -> None:
    pod = kubelet.run_pod(NS, "sb-unshare", {"app": "sandboxed"})
    cid = kubelet.start_container(
        pod, "unshare", ["/bin/unshare", "-n", "/bin/true"], seccomp_profile=profile
    )
    assert wait_exit(kubelet.runtime, cid) == SIGSYS_EXIT
    mine = records(agent, "sb-unshare", kind="unshare")
    assert any(r["policy"]["name"] == "sandboxed" for r in mine)
    k8s = mine[0]["unmapped"]["k8s"]
    assert k8s["namespace"] == NS
    snap = agent.wait_for(lambda s: any(p.name == "sb-unshare" and p.violations for p in s.pods))
    assert snap.counters.violations_by_kind.get("syscall", 0) >= 1


def test_raw_and_packet_sockets_refused_tcp_works(
    agent: AgentProcess, kubelet: KubeletSim, profile: Path
) -> None:
    pod = kubelet.run_pod(NS, "sb-sockets", {"app": "sandboxed"})
    script = (
        "arping -c 1 -w 1 -I eth0 127.0.0.1; echo arping=$?; "
        "ping -c 1 -W 1 127.0.0.1; echo ping=$?; "
        "(nc -l -p 9000 >/tmp/got &) ; sleep 0.5; echo hello | nc -w 2 127.0.0.1 9000; "
        "sleep 0.3; echo tcp=$(cat /tmp/got)"
    )
    cid = kubelet.start_container(
        pod, "sockets", ["/bin/sh", "-c", script], seccomp_profile=profile
    )
    assert wait_exit(kubelet.runtime, cid) == 0
    out = container_log(kubelet.runtime, pod, "sockets")
    assert "arping=1" in out and "Operation not permitted" in out, out
    assert "ping=0" not in out, out
    assert "tcp=hello" in out, out
    mine = records(agent, "sb-sockets", family="packet")
    text = json.dumps(mine)
    assert "packet" in text
    records(agent, "sb-sockets", kind="raw")


def test_selected_pod_without_the_profile_is_refused(
    agent: AgentProcess, kubelet: KubeletSim, profile: Path
) -> None:
    pod = kubelet.run_pod(NS, "sb-unconfined", {"app": "sandboxed"})
    with pytest.raises(CRIError) as refused:
        kubelet.start_container(pod, "plain", ["/bin/sleep", "5"])
    message = str(refused.value)
    assert "nodeguard hook: refused" in message
    assert "sandboxed" in message
    assert "localhostProfile:" in message and "sandboxed.json" in message


def test_unselected_pod_can_unshare(agent: AgentProcess, kubelet: KubeletSim) -> None:
    pod = kubelet.run_pod(NS, "sb-free", {"app": "other"})
    cid = kubelet.start_container(pod, "unshare", ["/bin/unshare", "-U", "/bin/true"])
    assert wait_exit(kubelet.runtime, cid) == 0
