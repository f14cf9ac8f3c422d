"""`nodeguard demo`: the node agent guarding real pods, on this machine.

A private containerd (CRI, runc, CNI bridge; nothing pulled, nothing leaves the machine)
plays the node, the demo plays the kubelet. Two service pods stand in for an LLM API the
agent may reach and an exfiltration server it may not. The node agent loads the example
policy; a labelled agent pod and an unlabelled neighbour try the same things. At the end:
`nodeguard status` as an operator sees it, then the central side: a local collector
(mTLS, its SQLite store, a JSON lines SIEM sink) that the agent streamed every violation
to, queried with `nodeguard events`, and one record as the SIEM gets it. Everything is
removed afterwards (pods, containerd, agent pins, collector).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from nodeguard import pki
from nodeguard.agent.status import render_status
from nodeguard.demo.policy import research_agent_policy
from nodeguard.errors import NodeguardError
from nodeguard.lab.agent_process import AgentProcess
from nodeguard.lab.collector_process import CollectorProcess
from nodeguard.lab.containerd import (
    ContainerdRuntime,
    KubeletSim,
    PodHandle,
    RuntimeSetupError,
    check_tools,
    find_cni_bin_dir,
    new_workdir,
)
from nodeguard.runner.preflight import require_root

PORT = 8080
NODE = "demo-node"


def local_collector(work: Path) -> tuple[CollectorProcess, dict[str, Any]]:
    """A collector on 127.0.0.1 with a private CA, a durable store and a JSON lines sink,
    and the agent config keys that stream to it."""
    ca = pki.make_ca(work / "pki", "nodeguard demo CA")
    server = pki.issue_server(ca, work / "pki", ["127.0.0.1"])
    node = pki.issue_node(ca, work / "pki", NODE)
    config = {
        "apiVersion": "nodeguard.io/v1alpha1",
        "kind": "CollectorConfig",
        "listen": "127.0.0.1:0",
        "cluster": "demo",
        "tls": {"cert": str(server.cert), "key": str(server.key), "clientCA": str(ca.cert_path)},
        "store": {"path": str(work / "collector" / "events.db")},
        "metricsAddress": None,
        "sinks": [{"type": "jsonl", "name": "siem-file", "path": str(work / "siem.jsonl")}],
    }
    path = work / "collector.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    tls = {"ca": str(ca.cert_path), "cert": str(node.cert), "key": str(node.key)}
    return CollectorProcess(path, workdir=work / "collector-run"), tls


def demo_policy(api_ip: str) -> dict[str, Any]:
    return research_agent_policy([f"{api_ip}/32"], PORT, ["/bin/sh", "/bin/nc", "/bin/sleep"])


def _wait_exit(runtime: ContainerdRuntime, container_id: str, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = runtime.cri.container_status(container_id)
        if st.state == "exited":
            return st.exit_code
        time.sleep(0.05)
    return -1


def _try(kubelet: KubeletSim, pod: PodHandle, name: str, command: list[str]) -> int:
    cid = kubelet.start_container(pod, name, command)
    return _wait_exit(kubelet.runtime, cid)


def _verdict(status: int, expect_blocked: bool) -> str:
    if status == 0:
        return "allowed"
    if status == 128 + signal.SIGKILL:
        return "KILLED before its first instruction"
    return "BLOCKED (EPERM)" if expect_blocked else f"failed (exit {status})"


def run_agent_tour(console: Console | None = None) -> int:
    require_root()
    try:
        check_tools()
        find_cni_bin_dir()
    except RuntimeSetupError as err:
        raise NodeguardError(
            f"the demo needs a container runtime: {err}", fix="run `sudo make setup` first"
        ) from err
    out = console or Console()
    runtime = ContainerdRuntime(new_workdir())
    work = Path(tempfile.mkdtemp(prefix="nodeguard-demo-"))
    collector, collector_tls = local_collector(work)
    agent: AgentProcess | None = None
    out.rule("[bold]nodeguard demo: the node agent guarding pods")
    out.print("starting a private containerd (CRI + runc + CNI) to play a Kubernetes node ...")
    runtime.start()
    kubelet = KubeletSim(runtime)
    try:
        out.print("starting a local collector (gRPC + mTLS, SQLite store, JSON lines sink) ...")
        collector.start()
        agent = AgentProcess(
            runtime,
            work,
            overrides={
                "nodeName": NODE,
                "collectorAddress": f"127.0.0.1:{collector.port}",
                "collectorTLS": collector_tls,
            },
        )
        api = kubelet.run_pod("infra", "llm-api")
        exfil = kubelet.run_pod("infra", "exfil-server")
        for pod in (api, exfil):
            kubelet.start_container(
                pod, "listen", ["/bin/sh", "-c", f"while :; do nc -l -p {PORT} </dev/null; done"]
            )
        api_ip = runtime.cri.pod_network(api.id).ip
        exfil_ip = runtime.cri.pod_network(exfil.id).ip
        agent.policy_dir.mkdir(parents=True)
        policy_file = agent.policy_dir / "research-agent.yaml"
        policy_file.write_text(yaml.safe_dump(demo_policy(api_ip), sort_keys=False))
        out.print(f"service pods: llm-api {api_ip}, exfil-server {exfil_ip}")
        out.print(f"policy {policy_file.name}:")
        out.print(policy_file.read_text().rstrip(), markup=False, highlight=False)
        out.print("starting the node agent (as the DaemonSet would) ...")
        agent.start()

        out.rule("pods try things")
        guarded = kubelet.run_pod("agents", "research-agent-0", {"app": "research-agent"})
        neighbour = kubelet.run_pod("agents", "notebook-0", {"app": "notebook"})
        table = Table(show_header=True)
        for col in ("attempt", "agents/research-agent-0 (selected)", "agents/notebook-0 (not)"):
            table.add_column(col)
        attempts = [
            ("connect to llm-api:8080", ["/bin/nc", "-w", "2", api_ip, str(PORT)], True),
            ("connect to exfil-server:8080", ["/bin/nc", "-w", "2", exfil_ip, str(PORT)], True),
            (
                "exec /bin/wget (a downloader)",
                ["/bin/sh", "-c", "/bin/wget -q -O /dev/null x"],
                False,
            ),
        ]
        for i, (label, command, blocked) in enumerate(attempts):
            a = _try(kubelet, guarded, f"try{i}", command)
            b = _try(kubelet, neighbour, f"try{i}", command)
            table.add_row(
                label,
                _verdict(a, blocked),
                _verdict(b, blocked) if b in (0, 137) else f"ran (exit {b}: no such host)",
            )
        out.print(table)

        time.sleep(2.0)  # the agent flushes aggregates and publishes once a second
        out.rule("`nodeguard status` on the node")
        out.print(
            render_status(agent.status(), width=min(out.width, 100)),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        store = work / "collector" / "events.db"
        out.rule("on the collector: `nodeguard events --store ...`")
        events = subprocess.run(
            [sys.executable, "-m", "nodeguard", "events", "--store", str(store)],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "COLUMNS": str(max(out.width, 100))},
        )  # fmt: skip
        out.print(events.stdout.rstrip() or events.stderr.rstrip(), markup=False, highlight=False)
        out.rule("what the SIEM gets (the JSON lines sink, OCSF, one record)")
        siem = work / "siem.jsonl"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (siem.exists() and siem.stat().st_size):
            time.sleep(0.2)
        records = (
            [json.loads(line) for line in siem.read_text().splitlines()] if siem.exists() else []
        )
        if records:
            out.print_json(json.dumps(records[0]))
        out.print(
            f"{len(records)} records in {siem}; the same files, policies and commands run on a "
            "real node and cluster (docs/deploy.md, docs/collector.md, docs/sinks.md)"
        )
        return 0
    finally:
        out.print("cleaning up: pods, agent pins, containerd, collector ...")
        kubelet.remove_all()
        if agent is not None:
            agent.teardown()
        runtime.close()
        collector.stop()
