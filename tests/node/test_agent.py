"""The node agent against a real containerd (CRI, runc, CNI), the tests playing the kubelet.

Every destination is a pod of the test's own (a server pod on the private CNI bridge).
The agent runs as a process, pinned under a bpffs directory of its own, and is torn down
(detached, unpinned) at the end, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeguard.agent.hook import read_fail_closed_file
from nodeguard.bpf.guard import ATTACH_INET4_CONNECT, our_programs
from nodeguard.identity.cgroup_paths import find_pod_cgroup
from nodeguard.lab.agent_process import AgentProcess
from nodeguard.lab.collector_process import CollectorProcess
from nodeguard.lab.containerd import FAIL_CLOSED_NS, ContainerdRuntime, KubeletSim, PodHandle
from nodeguard.lab.stream_lab import make_certs, stored_pod, write_collector_config

pytestmark = pytest.mark.node

SERVER_PORT = 8080


def policy_yaml(allow_cidr: str = "198.18.255.0/24", name: str = "research-agent") -> str:
    """Selects app=research-agent in agents and agents-closed; egress only to a range the
    test never uses (so the server pod is forbidden) unless ``allow_cidr`` says otherwise;
    exec of sh, nc, sleep only."""
    return f"""\
apiVersion: nodeguard.io/v1alpha1
kind: AgentPolicy
metadata: {{name: {name}}}
spec:
  selector:
    namespaces: [agents, {FAIL_CLOSED_NS}]
    matchLabels: {{app: research-agent}}
  egress:
    allow: [{{cidr: "{allow_cidr}", ports: ["{SERVER_PORT}"], protocol: tcp}}]
  exec:
    allow: [/bin/sh, /bin/nc, /bin/sleep]
"""


@pytest.fixture(scope="module")
def server(runtime: ContainerdRuntime) -> Iterator[str]:
    """A pod in namespace infra listening on SERVER_PORT; yields its IP."""
    sim = KubeletSim(runtime)
    pod = sim.run_pod("infra", "server")
    sim.start_container(
        pod, "nc", ["/bin/sh", "-c", f"while :; do nc -l -p {SERVER_PORT} </dev/null; done"]
    )
    try:
        yield runtime.cri.pod_network(pod.id).ip
    finally:
        sim.remove_all()


@pytest.fixture
def agent(runtime: ContainerdRuntime, tmp_path: Path) -> Iterator[AgentProcess]:
    proc = AgentProcess(runtime, tmp_path)
    proc.policy_dir.mkdir(parents=True)
    (proc.policy_dir / "research-agent.yaml").write_text(policy_yaml())
    try:
        proc.start()
        yield proc
    finally:
        proc.teardown()


def wait_exit(runtime: ContainerdRuntime, container_id: str, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = runtime.cri.container_status(container_id)
        if st.state == "exited":
            return st.exit_code
        time.sleep(0.05)
    raise AssertionError(f"container {container_id[:12]} still running after {timeout}s")


def connect(kubelet: KubeletSim, pod: PodHandle, ip: str, name: str = "probe") -> int:
    """Exit status of a container whose first instruction is a connect to ip:SERVER_PORT
    (0: connected; non-zero: refused)."""
    cid = kubelet.start_container(pod, name, ["/bin/nc", "-w", "2", ip, str(SERVER_PORT)])
    return wait_exit(kubelet.runtime, cid)


def attachments(mount: Path, pod: PodHandle) -> int:
    cgroup = find_pod_cgroup(mount, pod.uid)
    assert cgroup is not None
    fd = os.open(cgroup, os.O_RDONLY)
    try:
        return len(our_programs(fd, ATTACH_INET4_CONNECT))
    finally:
        os.close(fd)


def test_labelled_pod_is_guarded_and_unlabelled_pod_untouched(
    agent: AgentProcess, kubelet: KubeletSim, server: str, cgroup2_mount: Path
) -> None:
    guarded = kubelet.run_pod("agents", "research-0", {"app": "research-agent"})
    free = kubelet.run_pod("agents", "other-0", {"app": "something-else"})
    assert connect(kubelet, guarded, server) != 0
    assert connect(kubelet, free, server) == 0
    killed = kubelet.start_container(guarded, "exec", ["/bin/sh", "-c", "/bin/touch /tmp/x"])
    assert wait_exit(kubelet.runtime, killed) == 128 + signal.SIGKILL
    fine = kubelet.start_container(free, "exec", ["/bin/sh", "-c", "/bin/touch /tmp/x"])
    assert wait_exit(kubelet.runtime, fine) == 0

    snap = agent.wait_for(
        lambda s: {p.name: p.violations for p in s.pods}.get("research-0", 0) >= 2
    )
    pods = {p.name: p for p in snap.pods}
    assert pods["research-0"].policy == "research-agent"
    assert pods["other-0"].policy is None
    assert "research-agent" in pods["research-0"].selection_reason
    assert attachments(cgroup2_mount, guarded) == 1
    assert attachments(cgroup2_mount, free) == 0
    # The agent flushes its event log once a second: wait for the records, don't race it.
    log_file = agent.workdir / "state" / "events" / "violations.jsonl"
    deadline = time.monotonic() + 10
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = [json.loads(line) for line in log_file.read_text().splitlines()]
        mine = [
            r
            for r in records
            if r.get("unmapped", {}).get("k8s", {}).get("pod_name") == "research-0"
        ]
        if {r["class_uid"] for r in mine} == {4001, 1007}:
            break
        time.sleep(0.2)
    assert {r["class_uid"] for r in mine} == {4001, 1007}
    k8s = mine[0]["unmapped"]["k8s"]
    assert k8s["namespace"] == "agents" and k8s["pod_labels"] == {"app": "research-agent"}
    assert mine[0]["policy"]["name"] == "research-agent"
    assert mine[0]["device"]["hostname"] == "test-node"
    container = mine[0]["actor"]["process"]["container"]
    assert container["name"] in {"probe", "exec"} and container["image"]["name"].endswith(":pod")

    # what an operator types on the node
    out = subprocess.run(
        [sys.executable, "-m", "nodeguard", "status", "--json", "--socket",
         str(agent.runtime.agent_socket)],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    data = json.loads(out)
    assert data["schema_version"] == 1 and data["agent"]["state"] == "ready"
    assert {m for m in data["kernel"]["mechanisms"]} >= {"egress", "exec"}
    by_name = {p["name"]: p for p in data["pods"]}
    assert by_name["research-0"]["policy"] == "research-agent"
    assert by_name["research-0"]["violations"] >= 2
    assert data["policies"][0]["name"] == "research-agent" and data["policies"][0]["pods"] >= 1
    assert data["counters"]["lost_in_kernel"] == 0
    assert data["collector"]["state"] == "not configured"


def test_no_start_up_gap_twenty_pods(agent: AgentProcess, kubelet: KubeletSim, server: str) -> None:
    """The very first instruction of each container is a forbidden connect: 0 escapes."""
    escapes = 0
    for i in range(20):
        pod = kubelet.run_pod("agents", f"burst-{i}", {"app": "research-agent"})
        if connect(kubelet, pod, server) == 0:
            escapes += 1
    assert escapes == 0


def test_deleted_pod_leaves_nothing(agent: AgentProcess, kubelet: KubeletSim, server: str) -> None:
    pod = kubelet.run_pod("agents", "short-lived", {"app": "research-agent"})
    assert connect(kubelet, pod, server) != 0
    agent.wait_for(lambda s: any(p.name == "short-lived" and p.policy for p in s.pods))
    kubelet.remove_pod(pod)
    agent.wait_for(lambda s: all(p.name != "short-lived" for p in s.pods))
    from nodeguard.bpf.guard import Guard  # noqa: PLC0415

    with Guard(pin_root=agent.pin_root) as g:  # the pinned maps, as the agent sees them
        live = {p.uid for p in agent.status().pods}
        assert pod.uid not in live
        guarded_cgids = {int(k.value) for k in g.table("cgroup_policy").keys()}  # noqa: SIM118
        pod_states = agent.status().pods
        assert len(guarded_cgids) == sum(1 for p in pod_states if p.policy)


def test_policy_change_applies_to_running_pods_without_reattaching(
    agent: AgentProcess, kubelet: KubeletSim, server: str, cgroup2_mount: Path
) -> None:
    pod = kubelet.run_pod("agents", "changing", {"app": "research-agent"})
    assert connect(kubelet, pod, server, "before") != 0
    (agent.policy_dir / "research-agent.yaml").write_text(policy_yaml(f"{server}/32"))
    agent.wait_for(
        lambda s: s.policies and s.policies[0].version != "" and s.policy_dir.generation >= 2
    )
    assert connect(kubelet, pod, server, "after") == 0
    assert attachments(cgroup2_mount, pod) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_broken_policy_keeps_the_last_good_one(
    runtime: ContainerdRuntime, kubelet: KubeletSim, server: str, tmp_path: Path
) -> None:
    port = _free_port()
    agent = AgentProcess(runtime, tmp_path, overrides={"metricsAddress": f"127.0.0.1:{port}"})
    agent.policy_dir.mkdir(parents=True)
    (agent.policy_dir / "research-agent.yaml").write_text(policy_yaml())
    try:
        agent.start()
        _broken_policy_scenario(agent, kubelet, server, port)
    finally:
        agent.teardown()


def _broken_policy_scenario(
    agent: AgentProcess, kubelet: KubeletSim, server: str, port: int
) -> None:
    # the namespaces the hook must refuse while no agent answers: those the policy selects
    closed = read_fail_closed_file(agent.workdir / "state" / "fail-closed-namespaces")
    assert closed == {"agents", FAIL_CLOSED_NS}
    assert _get(port, "/healthz")[0] == 200 and _get(port, "/readyz")[0] == 200
    pod = kubelet.run_pod("agents", "steady", {"app": "research-agent"})
    (agent.policy_dir / "broken.yaml").write_text(
        "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: b}\n"
        "spec: {mode: block}\n"
    )
    snap = agent.wait_for(lambda s: s.policy_dir.last_error is not None)
    assert "broken.yaml:4" in (snap.policy_dir.last_error or "")
    assert snap.agent.state == "degraded"
    assert connect(kubelet, pod, server) != 0, "the old policy must stay in force"
    metrics = _get(port, "/metrics")[1]
    assert "nodeguard_policy_load_errors_total 1.0" in metrics
    (agent.policy_dir / "broken.yaml").unlink()
    snap = agent.wait_for(lambda s: s.policy_dir.last_error is None)
    assert snap.agent.state == "ready"
    assert "nodeguard_pods_guarded" in _get(port, "/metrics")[1]


def test_agent_killed_enforcement_continues_and_restart_reconciles(
    agent: AgentProcess, kubelet: KubeletSim, server: str, cgroup2_mount: Path
) -> None:
    kept = kubelet.run_pod("agents", "kept", {"app": "research-agent"})
    doomed = kubelet.run_pod("agents", "doomed", {"app": "research-agent"})
    assert connect(kubelet, kept, server, "c1") != 0
    agent.wait_for(lambda s: sum(1 for p in s.pods if p.policy) >= 2)
    c1_cgroup = _record_cgroup(agent, "c1")  # reported (and checkpointed) before the kill
    time.sleep(1.5)  # one more flush: the checkpoint says c1's attempt was reported

    agent.kill(signal.SIGKILL)
    # Down: the guarded pod stays guarded; a fail-closed namespace refuses new containers.
    assert connect(kubelet, kept, server, "c2") != 0
    closed = kubelet.run_pod(FAIL_CLOSED_NS, "closed-0", {"app": "research-agent"})
    with pytest.raises(Exception, match="nodeguard"):
        kubelet.start_container(closed, "refused", ["/bin/sleep", "1"])
    # Meanwhile pods come and go.
    kubelet.remove_pod(doomed)
    newcomer = kubelet.run_pod("agents", "newcomer", {"app": "research-agent"})

    agent.start()
    snap = agent.wait_for(
        lambda s: (
            {p.name for p in s.pods if p.policy} >= {"kept", "newcomer"}
            and all(p.name != "doomed" for p in s.pods)
        )
    )
    assert attachments(cgroup2_mount, kept) == 1, "restarted agent attached twice"
    assert attachments(cgroup2_mount, newcomer) == 1
    assert connect(kubelet, newcomer, server, "c3") != 0
    assert connect(kubelet, closed, server, "c4") != 0  # admitted and guarded now
    assert snap.agent.state == "ready"
    time.sleep(1.5)  # the restarted agent has flushed the pinned aggregates
    counts = [r["count"] for r in _records(agent) if r["unmapped"]["cgroup_id"] == c1_cgroup]
    assert counts == [1], "the attempt before the crash is reported once, not again"


def _records(agent: AgentProcess) -> list[dict[str, Any]]:
    log_file = agent.workdir / "state" / "events" / "violations.jsonl"
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def _record_cgroup(agent: AgentProcess, container: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in _records(agent):
            if r["actor"]["process"].get("container", {}).get("name") == container:
                return int(r["unmapped"]["cgroup_id"])
        time.sleep(0.2)
    raise AssertionError(f"no record for container {container}")


def test_new_pods_are_noticed_through_the_cgroup_tree(
    runtime: ContainerdRuntime, kubelet: KubeletSim, tmp_path: Path
) -> None:
    """With CRI polling slowed to once a minute, only the cgroup-tree watch can notice a
    new pod (no container start, so no hook either)."""
    proc = AgentProcess(runtime, tmp_path, overrides={"resyncIntervalMs": 60000})
    proc.policy_dir.mkdir(parents=True)
    (proc.policy_dir / "research-agent.yaml").write_text(policy_yaml())
    try:
        proc.start()
        kubelet.run_pod("agents", "watched", {"app": "research-agent"})
        proc.wait_for(lambda s: any(p.name == "watched" and p.policy for p in s.pods))
    finally:
        proc.teardown()


def test_restart_with_a_broken_policy_directory_keeps_enforcing(
    agent: AgentProcess, kubelet: KubeletSim, server: str
) -> None:
    pod = kubelet.run_pod("agents", "survivor", {"app": "research-agent"})
    assert connect(kubelet, pod, server, "c1") != 0
    agent.wait_for(lambda s: any(p.name == "survivor" and p.policy for p in s.pods))
    agent.kill(signal.SIGKILL)
    (agent.policy_dir / "research-agent.yaml").write_text("kind: AgentPolicy\nspec: [\n")
    agent.start(require_ready=False)
    snap = agent.wait_for(lambda s: s.agent.state == "degraded")
    assert any("no valid policy set" in r for r in snap.agent.reasons)
    assert connect(kubelet, pod, server, "c2") != 0, "adopted enforcement must stay"
    marker_cid = kubelet.start_container(pod, "exec", ["/bin/sh", "-c", "/bin/touch /tmp/x"])
    assert wait_exit(kubelet.runtime, marker_cid) == 128 + signal.SIGKILL
    (agent.policy_dir / "research-agent.yaml").write_text(policy_yaml())
    agent.wait_for(lambda s: s.agent.state == "ready" and any(p.policy for p in s.pods))
    assert connect(kubelet, pod, server, "c3") != 0


def test_without_its_collector_certificate_the_agent_still_enforces_and_spools(
    runtime: ContainerdRuntime, kubelet: KubeletSim, server: str, tmp_path: Path
) -> None:
    """Enforcement never depends on delivery: a collector link that cannot start (here:
    the node certificate is missing) leaves the agent guarding pods, spooling every
    violation and saying why it is degraded. When the certificate files appear (a Secret
    mounted late, a bootstrap step), the agent starts the link by itself and the spool
    reaches the collector, each record once."""
    certs = make_certs(tmp_path / "issued")
    collector = CollectorProcess(
        write_collector_config(tmp_path / "collector.yaml", certs, tmp_path / "store.db"),
        workdir=tmp_path / "collector",
    )
    missing = tmp_path / "pki"  # where the agent looks: empty until the test copies them
    proc = AgentProcess(
        runtime,
        tmp_path / "agent",
        overrides={
            "collectorTLS": {
                "ca": str(missing / "ca.crt"),
                "cert": str(missing / "node.crt"),
                "key": str(missing / "node.key"),
            },
        },
    )
    proc.policy_dir.mkdir(parents=True)
    (proc.policy_dir / "research-agent.yaml").write_text(policy_yaml())
    try:
        collector.start()
        proc.overrides["collectorAddress"] = collector.target
        proc.start(require_ready=False)
        guarded = kubelet.run_pod("agents", "research-nocert", {"app": "research-agent"})
        assert connect(kubelet, guarded, server) != 0
        snap = proc.wait_for(lambda s: s.collector.spool_records >= 1, timeout=15)
        assert snap.agent.state == "degraded"
        assert any("collector link not started" in r for r in snap.agent.reasons), snap.agent
        assert any("node.crt" in r for r in snap.agent.reasons)
        assert {p.name: p.policy for p in snap.pods}["research-nocert"] == "research-agent"
        spooled = snap.collector.spool_records

        missing.mkdir()
        shutil.copy(certs.ca, missing / "ca.crt")
        shutil.copy(certs.node_key, missing / "node.key")
        shutil.copy(certs.node_cert, missing / "node.crt")
        snap = proc.wait_for(
            lambda s: s.collector.state == "connected" and s.collector.spool_records == 0,
            timeout=40,  # the agent retries every 10 s
        )
        assert snap.agent.state == "ready", snap.agent
        assert snap.collector.acked >= spooled
        stored = stored_pod(tmp_path / "store.db", "research-nocert")
        assert stored.records >= 1
        assert stored.duplicate_keys == 0 and stored.duplicate_uids == 0
    finally:
        proc.teardown()
        collector.stop()
