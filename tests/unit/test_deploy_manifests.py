"""deploy/: the Kubernetes manifests, the runtime hook's install script (the DaemonSet's
init container) and containerd's base-spec script, checked offline.

There is no cluster here: these tests parse what `kubectl apply -k deploy/kubernetes`
would send, check that the DaemonSet, the agent configuration and the runtime hook agree
on every shared path, and run the two shell scripts against temporary directories
(docs/deploy.md, "What was not tested").

The collector (deploy/kubernetes/collector/): its configuration is loaded with the
collector's own parser, its ports, volumes and Service are matched with the agents'
collectorAddress and collectorTLS, and a real collector is started in this process from
that configuration, with certificates made by the command docs/deploy.md gives and laid
out as its Secrets and node bootstrap lay them out (temporary directories stand in for the
pod's volumes; loopback ports stand in for the Service).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodeguard.agent import hook
from nodeguard.agent.config import AgentConfig, HostPort, parse_agent_config_text
from nodeguard.collector.config import CollectorConfig, is_loopback, parse_collector_config_text
from nodeguard.collector.server import CollectorServer
from nodeguard.collector.service import SERVICE
from nodeguard.delivery.publisher import PublisherTLS, certificate_node
from nodeguard.policy import compile_policies, load_policy_text

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
COLLECTOR_DIR = K8S / "collector"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
MAKE_BASE_SPEC = DEPLOY / "containerd" / "make-base-spec.sh"
NAMESPACE = "nodeguard"
METRICS_PORT = 9464
AGENT_CONFIG_PATH = "/etc/nodeguard/agent.yaml"

Doc = dict[str, Any]

EXPECTED_KINDS = {
    "namespace.yaml": [("v1", "Namespace")],
    "configmap-agent.yaml": [("v1", "ConfigMap")],
    "configmap-policies.yaml": [("v1", "ConfigMap")],
    "daemonset.yaml": [("apps/v1", "DaemonSet")],
    "kustomization.yaml": [("kustomize.config.k8s.io/v1beta1", "Kustomization")],
}

COLLECTOR_EXPECTED_KINDS = {
    "configmap.yaml": [("v1", "ConfigMap")],
    "pvc.yaml": [("v1", "PersistentVolumeClaim")],
    "deployment.yaml": [("apps/v1", "Deployment")],
    "service.yaml": [("v1", "Service")],
    "kustomization.yaml": [("kustomize.config.k8s.io/v1beta1", "Kustomization")],
}
COLLECTOR_NAME = "nodeguard-collector"
COLLECTOR_CONFIG_PATH = "/etc/nodeguard/collector.yaml"
# docs/deploy.md and deploy/kind/e2e.sh find the agents' pods with this label selector.
AGENT_SELECTOR = {"app.kubernetes.io/name": "nodeguard"}
TIMEOUT_S = 30.0

# Host paths the agent pod must see at the same path as on the host: (path, read-only?).
# None: either is fine.
REQUIRED_HOST_PATHS: list[tuple[str, bool | None]] = [
    ("/sys/fs/bpf", False),  # pins
    ("/sys/fs/cgroup", False),  # pod cgroups: attach, inotify
    ("/sys/kernel/tracing", None),  # the exec tracepoint
    ("/run/containerd/containerd.sock", None),  # CRI
    ("/var/lib/nodeguard", False),  # stateDir, fail-closed-namespaces for the hook
    ("/run/nodeguard", False),  # API socket, shared with the hook on the host
    ("/lib/modules", True),  # kernel headers for BCC
    ("/usr/src", True),
]


# ------------------------------------------------------------------------ loading --


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[Doc]]:
    return {p.name: _load(p) for p in sorted(K8S.glob("*.yaml"))}


def _one(manifests: dict[str, list[Doc]], kind: str, name: str) -> Doc:
    found = [d for docs in manifests.values() for d in docs if d["kind"] == kind]
    found = [d for d in found if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def daemonset(manifests: dict[str, list[Doc]]) -> Doc:
    return _one(manifests, "DaemonSet", "nodeguard")


@pytest.fixture(scope="module")
def pod(daemonset: Doc) -> Doc:
    spec: Doc = daemonset["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def agent(pod: Doc) -> Doc:
    containers: list[Doc] = [c for c in pod["containers"] if c["name"] == "agent"]
    assert len(containers) == 1, "the DaemonSet needs one container named 'agent'"
    return containers[0]


@pytest.fixture(scope="module")
def config(manifests: dict[str, list[Doc]]) -> AgentConfig:
    cm = _one(manifests, "ConfigMap", "nodeguard-agent")
    text = cm["data"]["agent.yaml"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NODE_NAME", "node-1")  # the DaemonSet sets it from spec.nodeName
        return parse_agent_config_text(text, "configmap-agent.yaml:agent.yaml")


def _volumes(pod: Doc) -> dict[str, Doc]:
    return {v["name"]: v for v in pod["volumes"]}


def _mount_covering(pod: Doc, container: Doc, path: str) -> tuple[Doc, Doc]:
    """The (volumeMount, volume) through which ``container`` sees ``path``: the deepest
    mount whose mountPath contains it."""
    target = PurePosixPath(path)
    best: tuple[Doc, Doc] | None = None
    depth = -1
    for mount in container.get("volumeMounts", []):
        mount_path = PurePosixPath(mount["mountPath"])
        covers = target == mount_path or mount_path in target.parents
        if covers and len(mount_path.parts) > depth:
            best, depth = (mount, _volumes(pod)[mount["name"]]), len(mount_path.parts)
    assert best is not None, f"container {container['name']!r} mounts nothing at {path}"
    return best


def _host_mount(pod: Doc, container: Doc, path: str) -> Doc:
    """``path`` must reach the container through a hostPath volume mounted at the same
    path as on the host (the agent and the hook use host paths)."""
    mount, volume = _mount_covering(pod, container, path)
    assert "hostPath" in volume, f"{path} must come from the host, not {volume}"
    assert volume["hostPath"]["path"] == mount["mountPath"], (
        f"{path}: host {volume['hostPath']['path']} is mounted at {mount['mountPath']}; "
        "mount it at the same path"
    )
    return mount


def _port_number(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"no container port named {port!r}"
    return int(named[0])


# ---------------------------------------------------------------- files and kinds --


def test_every_file_parses_with_the_expected_kinds(manifests: dict[str, list[Doc]]) -> None:
    assert set(manifests) == set(EXPECTED_KINDS), "update EXPECTED_KINDS with the new file"
    for name, docs in manifests.items():
        assert [(d["apiVersion"], d["kind"]) for d in docs] == EXPECTED_KINDS[name], name


def test_everything_lives_in_the_namespace_the_hook_exempts(
    manifests: dict[str, list[Doc]], collector_manifests: dict[str, list[Doc]]
) -> None:
    """The hook lets the agent's own pod start while no agent answers only because its
    namespace is exempt by default (the collector's pod too)."""
    assert NAMESPACE in hook.DEFAULT_EXEMPT
    ns = _one(manifests, "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for docs in [*manifests.values(), *collector_manifests.values()]:
        for doc in docs:
            if doc["kind"] == "Kustomization":
                assert doc["namespace"] == NAMESPACE
            elif doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_kustomization_lists_every_manifest(
    manifests: dict[str, list[Doc]], collector_manifests: dict[str, list[Doc]]
) -> None:
    (kustomization,) = manifests["kustomization.yaml"]
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == set(manifests) - {"kustomization.yaml"} | {"collector"}
    images = {i["name"] for i in kustomization.get("images", [])}
    used = {
        c["image"].rsplit(":", 1)[0]
        for docs in [*manifests.values(), *collector_manifests.values()]
        for d in docs
        if d["kind"] in ("DaemonSet", "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        + d["spec"]["template"]["spec"].get("initContainers", [])
    }
    assert used <= images, "every image the pods use can be set in kustomization.yaml"


# ---------------------------------------------------------------------- DaemonSet --


def test_daemonset_selector_matches_its_pods(daemonset: Doc) -> None:
    selector = daemonset["spec"]["selector"]["matchLabels"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_daemonset_host_access_and_scheduling(pod: Doc, agent: Doc) -> None:
    assert pod["hostPID"] is True  # /proc of pod processes (host pids)
    assert pod["hostNetwork"] is True  # no dependency on the pod network (CNI)
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert agent["securityContext"] == {"privileged": True}
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]  # every taint
    assert pod["automountServiceAccountToken"] is False  # no API server access needed
    assert 0 < pod["terminationGracePeriodSeconds"] <= 60


def test_update_strategy_replaces_one_agent_at_a_time(daemonset: Doc) -> None:
    strategy = daemonset["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}


@pytest.mark.parametrize(("path", "read_only"), REQUIRED_HOST_PATHS)
def test_agent_sees_the_host_path(pod: Doc, agent: Doc, path: str, read_only: bool | None) -> None:
    mount = _host_mount(pod, agent, path)
    if read_only is not None:
        assert bool(mount.get("readOnly", False)) is read_only, f"{path} readOnly"


def test_bpffs_mount_sees_host_mounts(pod: Doc, agent: Doc) -> None:
    mount = _host_mount(pod, agent, "/sys/fs/bpf")
    assert mount.get("mountPropagation") in ("HostToContainer", "Bidirectional")


def test_cri_socket_is_mounted_through_its_directory(pod: Doc, agent: Doc) -> None:
    """A socket file bind-mounted into the pod goes stale when containerd restarts (which
    installing the hook requires); its directory does not."""
    mount, volume = _mount_covering(pod, agent, "/run/containerd/containerd.sock")
    assert mount["mountPath"] == "/run/containerd"
    assert volume["hostPath"]["type"] == "Directory"
    assert mount.get("mountPropagation") == "HostToContainer"  # no leaked rootfs mounts


def test_node_name_comes_from_the_downward_api(agent: Doc) -> None:
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_agent_runs_with_the_mounted_config(pod: Doc, agent: Doc) -> None:
    assert agent["args"] == ["agent", "--config", AGENT_CONFIG_PATH]
    mount, volume = _mount_covering(pod, agent, AGENT_CONFIG_PATH)
    assert mount["mountPath"] == AGENT_CONFIG_PATH
    assert mount["subPath"] == "agent.yaml"
    assert volume["configMap"]["name"] == "nodeguard-agent"


def test_probes_use_health_endpoints_on_the_metrics_port(daemonset: Doc, agent: Doc) -> None:
    probes = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in probes.items():
        get = agent[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _port_number(agent, get["port"]) == METRICS_PORT, probe
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_resources_request_and_cap_memory_without_cpu_limit(agent: Doc) -> None:
    resources = agent["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    assert "cpu" not in resources["limits"]  # throttling would delay hook admits


# ------------------------------------------------------------ agent configuration --


def test_agent_config_paths_are_the_mounted_host_paths(
    pod: Doc, agent: Doc, config: AgentConfig
) -> None:
    policies, volume = _mount_covering(pod, agent, str(config.policy_dir))
    assert policies["mountPath"] == str(config.policy_dir)
    assert volume["configMap"]["name"] == "nodeguard-policies"
    for path in (
        config.state_dir,
        config.api_socket.parent,
        config.pin_dir,
        config.cri_socket_path,
    ):
        _host_mount(pod, agent, str(path))
    assert config.metrics_address is not None
    assert config.metrics_address.port == METRICS_PORT


def test_agent_config_matches_the_hooks_defaults(config: AgentConfig) -> None:
    """The hook runs on the host with the defaults (make-base-spec.sh passes --socket)."""
    assert str(config.api_socket) == hook.DEFAULT_SOCKET
    assert str(config.state_dir / "fail-closed-namespaces") == hook.DEFAULT_FAIL_CLOSED_FILE
    assert not set(config.fail_closed_namespaces) & hook.DEFAULT_EXEMPT - {"*"}


def test_policies_configmap_holds_valid_policies(manifests: dict[str, list[Doc]]) -> None:
    cm = _one(manifests, "ConfigMap", "nodeguard-policies")
    names: list[str] = []
    for key, text in cm["data"].items():
        assert key.endswith((".yaml", ".yml")), f"{key}: the agent only loads *.yaml/*.yml"
        policies = load_policy_text(text, key)
        compile_policies(policies)
        for policy in policies:
            names.append(policy.name)
            selector = policy.spec.selector
            assert selector is not None and selector.namespaces, (
                f"{policy.name}: list the namespaces (without them every namespace but "
                "kube-system and nodeguard becomes fail-closed)"
            )
            assert not set(selector.namespaces) & {NAMESPACE, "kube-system"}, policy.name
    assert names and len(names) == len(set(names))


# --------------------------------------------------------- install-hook (init) --


def _init_container(pod: Doc) -> Doc:
    inits: list[Doc] = [c for c in pod["initContainers"] if c["name"] == "install-hook"]
    assert len(inits) == 1, "the DaemonSet needs one init container named 'install-hook'"
    return inits[0]


def _install_script(pod: Doc) -> str:
    init = _init_container(pod)
    assert init["command"] == ["/bin/sh", "-c"]
    (script,) = init["args"]
    assert isinstance(script, str)
    return script


def _kubernetes_expand(text: str, env: dict[str, str]) -> str:
    """What the kubelet does to command/args: `$$` -> `$`, `$(NAME)` -> env value when
    NAME is a variable of the container (left as it is otherwise)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env.get(name, f"$({name})"))
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def test_install_script_survives_kubernetes_variable_expansion(pod: Doc) -> None:
    init = _init_container(pod)
    script = _install_script(pod)
    env = {e["name"]: e.get("value", "") for e in init["env"]}
    assert _kubernetes_expand(script, env) == script


def test_install_hook_mounts_the_hosts_opt_nodeguard(pod: Doc) -> None:
    init = _init_container(pod)
    env = {e["name"]: e["value"] for e in init["env"]}
    mount, volume = _mount_covering(pod, init, env["NODEGUARD_INSTALL_ROOT"])
    assert mount["mountPath"] == env["NODEGUARD_INSTALL_ROOT"]
    assert volume["hostPath"]["path"] == env["NODEGUARD_HOST_PREFIX"] == "/opt/nodeguard"
    assert init["image"] == pod["containers"][0]["image"]  # the hook is the agent's version


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shell_scripts_are_shellcheck_clean(pod: Doc) -> None:
    inline = subprocess.run(
        ["shellcheck", "-s", "sh", "-"],
        input=_install_script(pod),
        capture_output=True,
        text=True,
        check=False,
    )
    assert inline.returncode == 0, inline.stdout
    script = subprocess.run(
        ["shellcheck", str(MAKE_BASE_SPEC)], capture_output=True, text=True, check=False
    )
    assert script.returncode == 0, script.stdout


def _run_install(script: str, root: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "NODEGUARD_HOST_PREFIX": str(root),
        "NODEGUARD_INSTALL_ROOT": str(root),
        "NODEGUARD_HOST_PYTHON": sys.executable,
    }
    return subprocess.run(
        ["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def installed(pod: Doc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """/opt/nodeguard as the init container leaves it, in a temporary directory."""
    root = tmp_path_factory.mktemp("opt-nodeguard")
    (root / "lib").mkdir()
    (root / "lib" / "0.0.1-000000000000").mkdir()  # an old release, to be pruned
    result = _run_install(_install_script(pod), root)
    assert result.returncode == 0, result.stderr
    # Checked before any launcher run: the node's Python writes its own bytecode there.
    assert not list((root / "lib").rglob("__pycache__")), "the image's bytecode was copied"
    yield root


def _state(namespace: str | None) -> str:
    annotations = {}
    if namespace is not None:
        annotations = {
            hook.CONTAINER_TYPE: "container",
            hook.SANDBOX_ID: "sandbox-1",
            hook.SANDBOX_NAMESPACE: namespace,
            hook.SANDBOX_NAME: "pod-1",
            hook.CONTAINER_NAME: "main",
        }
    return json.dumps(
        {
            "ociVersion": "1.0.2",
            "id": "0123456789abcdef",
            "status": "creating",
            "pid": 1,
            "bundle": "/nonexistent",
            "annotations": annotations,
        }
    )


def _run_launcher(
    launcher: Path, namespace: str | None, *args: str
) -> subprocess.CompletedProcess[str]:
    """As runc runs a hook: absolute path, empty environment, OCI state on stdin."""
    return subprocess.run(
        [str(launcher), "--socket", "/nonexistent/agent.sock", "--fail-closed-file", "", *args],
        input=_state(namespace),
        env={},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_install_hook_writes_release_current_link_and_launcher(installed: Path) -> None:
    launcher = installed / "bin" / "nodeguard-hook"
    assert launcher.is_file() and os.access(launcher, os.X_OK)
    current = installed / "lib" / "current"
    assert current.is_symlink()
    release = os.readlink(current)
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*-[0-9a-f]{12}", release), release
    assert (installed / "lib" / release / "nodeguard" / "cli" / "hook.py").is_file()
    assert not (installed / "lib" / "0.0.1-000000000000").exists(), "old release not pruned"
    assert not list(installed.glob("*/.tmp.*")), "temporary files left behind"


def test_install_hook_is_idempotent(pod: Doc, installed: Path) -> None:
    before = os.readlink(installed / "lib" / "current")
    result = _run_install(_install_script(pod), installed)
    assert result.returncode == 0, result.stderr
    assert os.readlink(installed / "lib" / "current") == before
    assert sorted(p.name for p in (installed / "lib").iterdir()) == sorted(["current", before])


def test_launcher_decides_like_the_hook(installed: Path) -> None:
    launcher = installed / "bin" / "nodeguard-hook"
    outside = _run_launcher(launcher, None, "--fail-closed-namespaces", "*")
    assert outside.returncode == 0, outside.stderr  # not a Kubernetes container
    own = _run_launcher(launcher, NAMESPACE, "--fail-closed-namespaces", "*")
    assert own.returncode == 0, own.stderr  # the agent's namespace is exempt
    closed = _run_launcher(launcher, "agents", "--fail-closed-namespaces", "agents")
    assert closed.returncode == 1
    assert "refused container 'main'" in closed.stderr
    assert "namespace 'agents' is fail-closed" in closed.stderr
    assert "Traceback" not in closed.stderr


# ------------------------------------------------------- containerd base spec --

CTR_DEFAULT_SPEC = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "user": {"uid": 0, "gid": 0},
        "cwd": "/",
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "apparmorProfile": "some-profile",
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs"},
    "linux": {
        "namespaces": [{"type": "pid"}, {"type": "mount"}],
        "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
    },
}


def _make_base_spec(tmp_path: Path, launcher: Path, *args: str) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "default.json"
    source.write_text(json.dumps(CTR_DEFAULT_SPEC))
    return subprocess.run(
        [str(MAKE_BASE_SPEC), "--hook", str(launcher), "--from", str(source),
         "--python", sys.executable, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_make_base_spec_adds_the_hook_and_strips_cri_defaults(
    installed: Path, tmp_path: Path
) -> None:
    launcher = installed / "bin" / "nodeguard-hook"
    out = tmp_path / "etc" / "base-spec.json"
    result = _make_base_spec(
        tmp_path, launcher, "--fail-closed-namespaces", "agents", "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "passed the smoke test" in result.stderr
    spec = json.loads(out.read_text())
    assert "rlimits" not in spec["process"]
    assert "apparmorProfile" not in spec["process"]
    assert "seccomp" not in spec["linux"]
    assert spec["linux"]["namespaces"] == CTR_DEFAULT_SPEC["linux"]["namespaces"]  # type: ignore[index]
    (entry,) = spec["hooks"]["createRuntime"]
    assert entry["path"] == str(launcher)
    assert entry["args"] == [
        "nodeguard-hook",
        "--socket", hook.DEFAULT_SOCKET,
        "--timeout-ms", "5000",
        "--fail-closed-namespaces", "agents",
    ]  # fmt: skip
    assert entry["timeout"] > 5  # runc's limit stays above the hook's own wait


def test_make_base_spec_refuses_a_launcher_that_would_lock_out_the_agent(
    installed: Path, tmp_path: Path
) -> None:
    launcher = installed / "bin" / "nodeguard-hook"
    result = _make_base_spec(
        tmp_path, launcher, "--exempt-namespaces", "kube-system", "--output", "-"
    )
    assert result.returncode == 1
    assert "smoke test failed" in result.stderr
    assert result.stdout == ""


def test_make_base_spec_refuses_a_missing_launcher(tmp_path: Path) -> None:
    result = _make_base_spec(tmp_path, tmp_path / "missing", "--output", "-")
    assert result.returncode == 1
    assert "start the nodeguard DaemonSet on this node first" in result.stderr


def test_containerd_snippet_points_at_the_scripts_output() -> None:
    snippet = tomllib.loads((DEPLOY / "containerd" / "config-snippet.toml").read_text())
    runc = snippet["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]
    default_output = re.search(r"^output=(\S+)$", MAKE_BASE_SPEC.read_text(), re.MULTILINE)
    assert default_output is not None
    assert runc["base_runtime_spec"] == default_output.group(1)


# ------------------------------------------------------------------- collector --


@pytest.fixture(scope="module")
def collector_manifests() -> dict[str, list[Doc]]:
    return {p.name: _load(p) for p in sorted(COLLECTOR_DIR.glob("*.yaml"))}


@pytest.fixture(scope="module")
def deployment(collector_manifests: dict[str, list[Doc]]) -> Doc:
    return _one(collector_manifests, "Deployment", COLLECTOR_NAME)


@pytest.fixture(scope="module")
def collector_pod(deployment: Doc) -> Doc:
    spec: Doc = deployment["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def collector_container(collector_pod: Doc) -> Doc:
    found: list[Doc] = [c for c in collector_pod["containers"] if c["name"] == "collector"]
    assert len(found) == 1, "the Deployment needs one container named 'collector'"
    return found[0]


@pytest.fixture(scope="module")
def service(collector_manifests: dict[str, list[Doc]]) -> Doc:
    return _one(collector_manifests, "Service", COLLECTOR_NAME)


@pytest.fixture(scope="module")
def collector_yaml(collector_manifests: dict[str, list[Doc]]) -> str:
    text = _one(collector_manifests, "ConfigMap", COLLECTOR_NAME)["data"]["collector.yaml"]
    assert isinstance(text, str)
    return text


@pytest.fixture(scope="module")
def collector_raw(collector_yaml: str) -> Doc:
    """The configuration as written (paths as the pod sees them)."""
    raw: Doc = yaml.safe_load(collector_yaml)
    return raw


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def _service_port(service: Doc, name: str) -> Doc:
    found: list[Doc] = [p for p in service["spec"]["ports"] if p["name"] == name]
    assert len(found) == 1, f"Service {service['metadata']['name']}: no port named {name!r}"
    return found[0]


def _secret_mount(pod: Doc, container: Doc, path: str) -> tuple[Doc, str]:
    """(volumeMount, secretName) of the Secret volume through which ``container`` sees
    ``path``."""
    mount, volume = _mount_covering(pod, container, path)
    assert "secret" in volume, f"{path} must come from a Secret, not {volume}"
    return mount, str(volume["secret"]["secretName"])


def test_collector_files_parse_with_the_expected_kinds(
    collector_manifests: dict[str, list[Doc]],
) -> None:
    assert set(collector_manifests) == set(COLLECTOR_EXPECTED_KINDS), (
        "update COLLECTOR_EXPECTED_KINDS with the new file"
    )
    for name, docs in collector_manifests.items():
        assert [(d["apiVersion"], d["kind"]) for d in docs] == COLLECTOR_EXPECTED_KINDS[name]


def test_collector_kustomization_lists_every_manifest(
    collector_manifests: dict[str, list[Doc]],
) -> None:
    """The image is set once, in ../kustomization.yaml (for agent and collector)."""
    (kustomization,) = collector_manifests["kustomization.yaml"]
    assert kustomization["namespace"] == NAMESPACE
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == set(collector_manifests) - {"kustomization.yaml"}
    assert "images" not in kustomization


def test_collector_selectors_find_the_collector_and_never_an_agent(
    deployment: Doc, service: Doc, daemonset: Doc
) -> None:
    """The agents' pods are found by app.kubernetes.io/name=nodeguard (docs, e2e.sh):
    the collector's pod must not match it, nor the DaemonSet's selector; and the
    Service must not send gRPC to an agent."""
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    agent_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert _selects(service["spec"]["selector"], labels)
    assert not _selects(service["spec"]["selector"], agent_labels)
    assert not _selects(AGENT_SELECTOR, labels)
    assert not _selects(daemonset["spec"]["selector"]["matchLabels"], labels)
    assert _selects(AGENT_SELECTOR, agent_labels)


def test_collector_is_a_single_writer_of_its_store(
    collector_manifests: dict[str, list[Doc]],
    deployment: Doc,
    collector_pod: Doc,
    collector_container: Doc,
    collector_raw: Doc,
) -> None:
    """SQLite, one writer: one replica, Recreate (the old pod lets go of the volume
    first), a ReadWriteOnce claim, the store on that claim."""
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    store_path = collector_raw["store"]["path"]
    mount, volume = _mount_covering(collector_pod, collector_container, store_path)
    assert not mount.get("readOnly", False)
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = _one(collector_manifests, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert collector_raw["store"]["durable"] is True


def test_collector_pod_is_unprivileged(collector_pod: Doc, collector_container: Doc) -> None:
    """The Pod Security 'restricted' settings, although the namespace admits privileged
    pods for the agent."""
    assert not collector_pod.get("hostNetwork", False)
    assert not collector_pod.get("hostPID", False)
    assert collector_pod["automountServiceAccountToken"] is False
    security = collector_pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not [v for v in collector_pod["volumes"] if "hostPath" in v]
    container_security = collector_container["securityContext"]
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["readOnlyRootFilesystem"] is True
    assert container_security["capabilities"] == {"drop": ["ALL"]}
    assert not container_security.get("privileged", False)
    # With a read-only root, SQLite's temporary files need a writable /tmp.
    mount, volume = _mount_covering(collector_pod, collector_container, "/tmp/x")
    assert mount["mountPath"] == "/tmp" and "emptyDir" in volume


def test_collector_runs_with_the_mounted_config(
    collector_pod: Doc, collector_container: Doc
) -> None:
    assert collector_container["args"] == ["collector", "--config", COLLECTOR_CONFIG_PATH]
    mount, volume = _mount_covering(collector_pod, collector_container, COLLECTOR_CONFIG_PATH)
    assert mount["mountPath"] == COLLECTOR_CONFIG_PATH
    assert mount["subPath"] == "collector.yaml"
    assert volume["configMap"]["name"] == COLLECTOR_NAME


def test_collector_ports_agree_with_service_deployment_and_config(
    collector_raw: Doc, collector_container: Doc, service: Doc, deployment: Doc
) -> None:
    grpc_port = _port_number(collector_container, "grpc")
    metrics_port = _port_number(collector_container, "metrics")
    assert str(collector_raw["listen"]).rsplit(":", 1)[1] == str(grpc_port)
    assert str(collector_raw["metricsAddress"]).rsplit(":", 1)[1] == str(metrics_port)
    for name, number in (("grpc", grpc_port), ("metrics", metrics_port)):
        port = _service_port(service, name)
        assert _port_number(collector_container, port["targetPort"]) == number, name
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_collector_probes_use_http_on_the_metrics_port(
    collector_container: Doc, collector_raw: Doc
) -> None:
    """The gRPC health service needs a client certificate, which a kubelet probe cannot
    present: HTTP /healthz and /readyz on metricsAddress, which must not be loopback (the
    kubelet probes the pod's IP)."""
    probes = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in probes.items():
        spec = collector_container[probe]
        assert "grpc" not in spec, f"{probe}: a kubelet gRPC probe has no client certificate"
        assert spec["httpGet"]["path"] == path, probe
        port = _port_number(collector_container, spec["httpGet"]["port"])
        assert port == _port_number(collector_container, "metrics"), probe
    host = str(collector_raw["metricsAddress"]).rsplit(":", 1)[0].strip("[]")
    assert not is_loopback(HostPort(host, 1)), "the kubelet cannot reach a loopback address"


def test_collector_reads_its_tls_files_from_its_secret(
    collector_pod: Doc, collector_container: Doc, collector_raw: Doc
) -> None:
    """tls.crt / tls.key / ca.crt: the layout of a kubernetes.io/tls Secret (and of a
    cert-manager Certificate's Secret), all from one Secret mounted as a directory (so a
    renewal reaches the pod)."""
    tls = collector_raw["tls"]
    names = set()
    for key in ("cert", "key", "clientCA"):
        mount, name = _secret_mount(collector_pod, collector_container, tls[key])
        assert "subPath" not in mount and mount.get("readOnly") is True
        assert name == "nodeguard-collector-tls"
        names.add(PurePosixPath(tls[key]).name)
    assert names == {"tls.crt", "tls.key", "ca.crt"}


def test_agents_dial_the_collector_service(config: AgentConfig, service: Doc) -> None:
    address = config.collector_address
    assert address is not None, "configmap-agent.yaml: collectorAddress is not set"
    meta = service["metadata"]
    # The short form <service>.<namespace>.svc resolves with any cluster domain.
    assert address.host == f"{meta['name']}.{meta['namespace']}.svc"
    assert address.port == _service_port(service, "grpc")["port"]
    assert config.collector_tls is not None
    assert config.collector_tls.server_name is None  # the dialled name is checked


def test_agent_collector_tls_comes_from_the_ca_secret_and_the_node(
    pod: Doc, agent: Doc, config: AgentConfig
) -> None:
    """The CA, the same for every node, from a Secret; the node's own certificate and
    key from the host (a DaemonSet cannot mount a different Secret per node), in the
    stateDir mount."""
    tls = config.collector_tls
    assert tls is not None
    mount, name = _secret_mount(pod, agent, str(tls.ca))
    assert name == "nodeguard-collector-ca"
    assert "subPath" not in mount and mount.get("readOnly") is True
    assert tls.ca.name == "ca.crt"
    for path in (tls.cert, tls.key):
        _host_mount(pod, agent, str(path))
        assert config.state_dir in path.parents, f"{path}: keep it under stateDir"
    assert tls.cert.parent == tls.key.parent


def test_agent_batches_fit_the_collector_limit(config: AgentConfig, collector_raw: Doc) -> None:
    limit = collector_raw["limits"]["maxRecordsPerBatch"]
    assert config.spool.batch_records <= limit


# --------------------------------------------- collector: docs -> files -> server --


def _doc_commands(prefix: str) -> list[list[str]]:
    """The shell commands in docs/deploy.md that start with ``prefix`` (continuation
    lines joined), split into words."""
    text = re.sub(r"\\\n\s*", " ", DEPLOY_DOC.read_text(encoding="utf-8"))
    return [
        shlex.split(line.strip()) for line in text.splitlines() if line.strip().startswith(prefix)
    ]


def _options(words: list[str], name: str) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == name]


@pytest.fixture(scope="module")
def documented_certs() -> tuple[str, list[str]]:
    """(--out, --host values) of the `nodeguard collector certs` command in the docs."""
    (words,) = _doc_commands("nodeguard collector certs --out")
    (out,) = _options(words, "--out")
    return out, _options(words, "--host")


@pytest.fixture(scope="module")
def documented_secrets() -> dict[str, dict[str, str]]:
    """Secret name -> {key: file} of the docs' `kubectl create secret` commands."""
    secrets: dict[str, dict[str, str]] = {}
    for words in _doc_commands("kubectl -n nodeguard create secret generic"):
        name = words[6]
        if name.startswith("nodeguard-collector"):
            files = [w.removeprefix("--from-file=") for w in words if w.startswith("--from")]
            secrets[name] = dict(f.split("=", 1) for f in files)
    return secrets


def test_docs_issue_the_server_certificate_for_the_address_the_agents_dial(
    config: AgentConfig, documented_certs: tuple[str, list[str]]
) -> None:
    _, hosts = documented_certs
    assert config.collector_address is not None
    assert hosts[0] == config.collector_address.host


def test_docs_create_the_secrets_the_pods_mount(
    documented_secrets: dict[str, dict[str, str]],
    collector_raw: Doc,
    config: AgentConfig,
    documented_certs: tuple[str, list[str]],
) -> None:
    out, _ = documented_certs
    assert set(documented_secrets) == {"nodeguard-collector-tls", "nodeguard-collector-ca"}
    tls = collector_raw["tls"]
    wanted = {PurePosixPath(tls[k]).name for k in ("cert", "key", "clientCA")}
    assert set(documented_secrets["nodeguard-collector-tls"]) == wanted
    assert config.collector_tls is not None
    assert set(documented_secrets["nodeguard-collector-ca"]) == {config.collector_tls.ca.name}
    for files in documented_secrets.values():
        for source in files.values():
            assert PurePosixPath(source).parent == PurePosixPath(out), source


def test_docs_bootstrap_puts_the_node_certificate_where_the_agent_reads_it(
    config: AgentConfig,
) -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    assert config.collector_tls is not None
    by_host = dict(re.findall(r"^install -m \d+ node-\S+\.(crt|key) (\S+)$", text, re.M))
    assert by_host == {"crt": str(config.collector_tls.cert), "key": str(config.collector_tls.key)}
    # the copy pod writes the same files below its mount of stateDir
    copy = re.search(r"hostPath: \{path: (\S+), type: DirectoryOrCreate\}", text)
    assert copy is not None and copy.group(1) == str(config.state_dir)
    host_mount = "/host"
    for path in (config.collector_tls.cert, config.collector_tls.key):
        inside = f"{host_mount}/{path.relative_to(config.state_dir)}"
        assert f" {inside}" in text, inside


@dataclass(frozen=True)
class PodFiles:
    """Temporary directories holding what the pods would see through their volumes."""

    pki: Path  # the `--out` directory of the documented `nodeguard collector certs`
    collector_mounts: dict[str, Path]  # mountPath in the collector pod -> directory
    agent_mounts: dict[str, Path]  # mountPath in the agent pod -> directory


def _pod_view(text: str, mounts: dict[str, Path]) -> str:
    """``text`` with every path below a mount rewritten to its stand-in directory."""
    for mount_path, directory in sorted(mounts.items(), key=lambda m: -len(m[0])):
        text = text.replace(f"{mount_path}/", f"{directory}/")
    return text


@pytest.fixture(scope="module")
def pod_files(
    tmp_path_factory: pytest.TempPathFactory,
    *,
    documented_certs: tuple[str, list[str]],
    documented_secrets: dict[str, dict[str, str]],
    collector_pod: Doc,
    collector_container: Doc,
    pod: Doc,
    agent: Doc,
    config: AgentConfig,
) -> PodFiles:
    """Runs the documented `nodeguard collector certs` (for node-1), fills one directory
    per Secret as the documented `kubectl create secret` commands would, and puts the
    node's certificate where the node bootstrap puts it."""
    root = tmp_path_factory.mktemp("pod-files")
    out, hosts = documented_certs
    pki = root / PurePosixPath(out).name
    command = [sys.executable, "-m", "nodeguard", "collector", "certs", "--out", str(pki)]
    command += [arg for host in hosts for arg in ("--host", host)]
    command += ["--node", config.node_name]
    made = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    secrets: dict[str, Path] = {}
    for name, files in documented_secrets.items():
        secrets[name] = root / f"secret-{name}"
        secrets[name].mkdir()
        for key, source in files.items():
            shutil.copyfile(pki / PurePosixPath(source).name, secrets[name] / key)

    def mounts(pod_spec: Doc, container: Doc, host: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for mount in container["volumeMounts"]:
            volume = _volumes(pod_spec)[mount["name"]]
            if "secret" in volume:
                found[mount["mountPath"]] = secrets[volume["secret"]["secretName"]]
            elif "persistentVolumeClaim" in volume or "hostPath" in volume:
                found[mount["mountPath"]] = host / mount["name"]
                found[mount["mountPath"]].mkdir(parents=True)
        return found

    collector_mounts = mounts(collector_pod, collector_container, root / "collector")
    agent_mounts = mounts(pod, agent, root / "node")
    tls = config.collector_tls
    assert tls is not None
    state = agent_mounts[str(config.state_dir)]
    for suffix, target in ((".crt", tls.cert), (".key", tls.key)):
        source = f"node-{config.node_name}{suffix}"
        placed = state / target.relative_to(config.state_dir)
        placed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pki / source, placed)
    return PodFiles(pki, collector_mounts, agent_mounts)


@pytest.fixture(scope="module")
def collector_config(collector_yaml: str, pod_files: PodFiles) -> CollectorConfig:
    """The ConfigMap's configuration, loaded by the collector's parser (which checks
    that the TLS files exist) with the pod's volumes standing in."""
    return parse_collector_config_text(
        _pod_view(collector_yaml, pod_files.collector_mounts), "collector/configmap.yaml"
    )


def test_collector_config_loads_with_the_collectors_parser(
    collector_config: CollectorConfig, collector_raw: Doc
) -> None:
    assert collector_config.tls is not None and not collector_config.insecure
    assert collector_config.listen.port == int(str(collector_raw["listen"]).rsplit(":")[1])
    assert collector_config.metrics_address is not None
    assert collector_config.store.durable
    assert collector_config.limits.max_streams >= 100, "one stream per node"


@pytest.fixture(scope="module")
def running_collector(collector_config: CollectorConfig) -> Iterator[CollectorServer]:
    """A collector started from the ConfigMap's configuration, on loopback ports."""
    server = CollectorServer(
        collector_config.model_copy(
            update={
                "listen": HostPort("127.0.0.1", 0),
                "metrics_address": HostPort("127.0.0.1", 0),
            }
        )
    )
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=0)


def _agent_tls(config: AgentConfig, pod_files: PodFiles) -> PublisherTLS:
    """The agent's collectorTLS, its files read through the stand-in volumes."""
    tls = config.collector_tls
    assert tls is not None and config.collector_address is not None
    ca, cert, key = (
        Path(_pod_view(str(p), pod_files.agent_mounts)) for p in (tls.ca, tls.cert, tls.key)
    )
    # what the agent dials is the name the server certificate is checked against
    return PublisherTLS(ca, cert, key, server_name=config.collector_address.host)


def _health_check(port: int, credentials: grpc.ChannelCredentials, server_name: str) -> int:
    options = [("grpc.ssl_target_name_override", server_name)]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT_S
        )
        return int(reply.status)


def test_collector_from_the_configmap_answers_the_kubelets_probes(
    running_collector: CollectorServer, collector_container: Doc
) -> None:
    port = running_collector.metrics_port
    assert port is not None
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = collector_container[probe]["httpGet"]["path"]
        url = f"http://127.0.0.1:{port}{path}"
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
            assert answer.status == 200, (probe, path)


def test_agent_with_its_node_certificate_is_served_by_the_collector(
    running_collector: CollectorServer, config: AgentConfig, pod_files: PodFiles
) -> None:
    """The agent's files (CA from its Secret, the node's certificate from the host)
    verify the collector's certificate for the Service's name, and the collector accepts
    the node's certificate; it names the agent's node."""
    tls = _agent_tls(config, pod_files)
    assert certificate_node(tls.cert) == config.node_name
    assert SERVICE == "nodeguard.v1.Collector"  # the service docs/deploy.md names
    assert tls.server_name is not None
    status = _health_check(running_collector.port, tls.credentials(), tls.server_name)
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_health_needs_a_client_certificate_so_probes_use_http(
    running_collector: CollectorServer, config: AgentConfig, pod_files: PodFiles
) -> None:
    """What a kubelet gRPC probe would get: no client certificate, no answer."""
    tls = _agent_tls(config, pod_files)
    assert tls.server_name is not None
    anonymous = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
    with pytest.raises(grpc.RpcError) as refused:
        _health_check(running_collector.port, anonymous, tls.server_name)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_agent_and_collector_with_one_image() -> None:
    """`kubectl kustomize` (offline) renders deploy/kubernetes with collector/ in it, and
    the top-level `images` entry reaches the collector too."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d is not None]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("DaemonSet", "nodeguard"),
        ("Deployment", COLLECTOR_NAME),
        ("Service", COLLECTOR_NAME),
        ("ConfigMap", COLLECTOR_NAME),
        ("PersistentVolumeClaim", "nodeguard-collector-store"),
    } <= kinds
    assert all(d["metadata"].get("namespace", NAMESPACE) == NAMESPACE for d in docs)
    images = {
        c["image"]
        for d in docs
        if d["kind"] in ("DaemonSet", "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1, images


# --------------------------------------------------------------------- image --


def test_dockerfile_builds_what_the_agent_needs() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM debian:bookworm", text, re.MULTILINE)
    assert "python3-bpfcc" in text
    assert "--system-site-packages" in text
    # guard.py and probe.py compile <package>/../bpf/*.bpf.c at run time.
    assert re.search(r"^COPY bpf ", text, re.MULTILINE)
    assert 'ENTRYPOINT ["nodeguard"]' in text
