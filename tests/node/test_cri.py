"""Pods through real CRI: a private containerd, pods created the way the kubelet creates
them, read back through CRIClient and found in the cgroup v2 tree."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from nodeguard.identity.cgroup_paths import (
    QosClass,
    find_container_cgroup,
    find_pod_cgroup,
    parse_cgroup_path,
)
from nodeguard.identity.cri import CRIClient, CRIError
from nodeguard.lab.containerd import IMAGE, ContainerdRuntime, KubeletSim

pytestmark = pytest.mark.node

SLEEP = ["/bin/sleep", "inf"]
QOS: list[QosClass] = ["besteffort", "burstable", "guaranteed"]


def v2_cgroup_of(pid: int) -> str:
    """The process's cgroup v2 path ("0::" line of /proc/<pid>/cgroup)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"process {pid} has no cgroup v2 membership")


def wait_exited(cri: CRIClient, container_id: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        status = cri.container_status(container_id)
        if status.state == "exited":
            return status.exit_code
        assert time.monotonic() < deadline, f"container still {status.state} after {timeout} s"
        time.sleep(0.05)


def test_version(runtime: ContainerdRuntime) -> None:
    version = runtime.cri.version()
    assert version.runtime_name == "containerd"
    assert version.runtime_api_version == "v1"


def test_list_pods_reports_labels_annotations_containers(kubelet: KubeletSim) -> None:
    cri = kubelet.cri
    agent = kubelet.run_pod(
        "agents",
        "research-agent-0",
        {"app": "research-agent", "tier": "llm"},
        {"nodeguard.io/note": "guard me"},
    )
    tool = kubelet.run_pod("agents", "tool-runner", {"app": "tools"})
    main = kubelet.start_container(agent, "main", SLEEP)
    sidecar = kubelet.start_container(agent, "sidecar", SLEEP)
    runner = kubelet.start_container(tool, "runner", SLEEP)

    pods = {p.id: p for p in cri.list_pods()}
    got = pods[agent.id]
    assert (got.uid, got.namespace, got.name, got.state) == (
        agent.uid,
        "agents",
        "research-agent-0",
        "ready",
    )
    assert got.pod_labels == {"app": "research-agent", "tier": "llm"}
    assert got.labels["io.kubernetes.pod.uid"] == agent.uid  # the kubelet's own labels
    assert got.annotations == {"nodeguard.io/note": "guard me"}
    assert got.created_at_ns > 0
    assert [(c.name, c.id, c.state, c.image, c.pod_id) for c in got.containers] == [
        ("main", main, "running", IMAGE, agent.id),
        ("sidecar", sidecar, "running", IMAGE, agent.id),
    ]
    assert all(c.image_ref.startswith("sha256:") for c in got.containers)

    other = pods[tool.id]
    assert other.pod_labels == {"app": "tools"}
    assert other.annotations == {}
    assert [c.id for c in other.containers] == [runner]

    # One pod by id: the same view, and nothing for an unknown or partial id.
    assert cri.pod(agent.id) == got
    assert cri.pod("0" * 64) is None
    assert cri.pod(agent.id[:12]) is None


@pytest.mark.parametrize("qos", QOS)
def test_pod_cgroup_holds_its_containers(
    kubelet: KubeletSim, cgroup2_mount: Path, qos: QosClass
) -> None:
    pod = kubelet.run_pod("agents", f"cg-{qos}", {"app": "cg"}, qos=qos)
    container_id = kubelet.start_container(pod, "main", SLEEP)
    pid = kubelet.container_pid(container_id)

    pod_dir = find_pod_cgroup(cgroup2_mount, pod.uid)
    assert pod_dir is not None and pod_dir.is_dir()
    assert "/" + str(pod_dir.relative_to(cgroup2_mount)) == pod.cgroup_parent

    # The container's first process is in <pod cgroup>/<container id> of the v2 tree.
    path = v2_cgroup_of(pid)
    ref = parse_cgroup_path(path)
    assert ref is not None
    assert (ref.driver, ref.qos, ref.pod_uid, ref.container_id) == (
        "cgroupfs",
        qos,
        pod.uid,
        container_id,
    )
    container_dir = cgroup2_mount / path.lstrip("/")
    assert container_dir.parent == pod_dir
    assert find_container_cgroup(cgroup2_mount, pod.uid, container_id) == container_dir
    assert pid in {int(p) for p in (container_dir / "cgroup.procs").read_text().split()}

    # The sandbox (pause) process lives in the same pod cgroup, as a sibling.
    sandbox_pid = kubelet.cri.pod_network(pod.id).sandbox_pid
    assert sandbox_pid is not None
    sandbox_ref = parse_cgroup_path(v2_cgroup_of(sandbox_pid))
    assert sandbox_ref is not None
    assert (sandbox_ref.pod_uid, sandbox_ref.container_id) == (pod.uid, pod.id)


def test_removed_pod_is_gone_with_its_cgroup(kubelet: KubeletSim, cgroup2_mount: Path) -> None:
    pod = kubelet.run_pod("agents", "short-lived", {"app": "short"})
    keep = kubelet.run_pod("agents", "stays", {"app": "stays"})
    pid = kubelet.container_pid(kubelet.start_container(pod, "main", SLEEP))
    pod_dir = find_pod_cgroup(cgroup2_mount, pod.uid)
    assert pod_dir is not None

    kubelet.remove_pod(pod)

    ids = {p.id for p in kubelet.cri.list_pods()}
    assert pod.id not in ids
    assert keep.id in ids
    assert kubelet.cri.pod(pod.id) is None
    assert not pod_dir.exists()
    assert find_pod_cgroup(cgroup2_mount, pod.uid) is None
    assert not Path(f"/proc/{pid}").exists()  # the container was killed


def test_cni_gives_each_pod_its_own_netns_and_ip(runtime: ContainerdRuntime) -> None:
    kubelet = KubeletSim(runtime)
    try:
        server = kubelet.run_pod("agents", "server", {"app": "server"})
        server_pid = kubelet.container_pid(
            kubelet.start_container(
                server, "listen", ["/bin/nc", "-ll", "-p", "8080", "-e", "/bin/echo", "pong"]
            )
        )
        net = kubelet.cri.pod_network(server.id)
        assert runtime.subnet is not None
        assert ipaddress.ip_address(net.ip) in runtime.subnet
        assert net.ip != runtime.gateway

        # Its own network namespace: the one the runtime reports, not the host's.
        pod_netns = os.stat(f"/proc/{server_pid}/ns/net").st_ino
        assert pod_netns != os.stat("/proc/self/ns/net").st_ino
        assert net.netns_path is not None
        assert os.stat(net.netns_path).st_ino == pod_netns
        addrs = subprocess.run(
            ["nsenter", "-t", str(server_pid), "-n", "ip", "-4", "-o", "addr", "show", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"inet {net.ip}/{runtime.subnet.prefixlen}" in addrs
        # No default route: a pod reaches its subnet and nothing beyond it.
        routes = Path(f"/proc/{server_pid}/net/route").read_text().splitlines()[1:]
        assert routes and all(r.split()[1] != "00000000" for r in routes)

        # The host reaches the pod over the bridge ...
        with socket.create_connection((net.ip, 8080), timeout=5) as conn:
            conn.settimeout(5)
            assert conn.recv(64) == b"pong\n"

        # ... and another pod, in a netns and with an IP of its own, reaches it too.
        client = kubelet.run_pod("agents", "client", {"app": "client"})
        probe = kubelet.start_container(
            client,
            "probe",
            ["/bin/sh", "-c", f'test "$(nc -w 3 {net.ip} 8080)" = pong'],
        )
        client_ip = kubelet.cri.pod_network(client.id).ip
        assert ipaddress.ip_address(client_ip) in runtime.subnet
        assert client_ip != net.ip
        assert wait_exited(kubelet.cri, probe) == 0
    finally:
        kubelet.remove_all()


def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    sock = tmp_path / "no-such.sock"
    with CRIClient(f"unix://{sock}", timeout_s=2.0) as cri, pytest.raises(CRIError) as err:
        cri.list_pods()
    assert err.value.code == "UNAVAILABLE"
    assert str(sock) in str(err.value)
    assert "does not exist" in str(err.value)
    assert "containerd" in (err.value.fix or "")
