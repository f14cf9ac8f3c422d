"""deploy/: the Kubernetes manifests, the runtime hook's install script (the DaemonSet's
init container) and containerd's base-spec script, checked offline.

There is no cluster here: these tests parse what `kubectl apply -k deploy/kubernetes`
would send, check that the DaemonSet, the agent configuration and the runtime hook agree
on every shared path, and run the two shell scripts against temporary directories
(docs/deploy.md, "What was not tested").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from nodeguard.agent import hook
from nodeguard.agent.config import AgentConfig, parse_agent_config_text
from nodeguard.policy import compile_policies, load_policy_text

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
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
    manifests: dict[str, list[Doc]],
) -> None:
    """The hook lets the agent's own pod start while no agent answers only because its
    namespace is exempt by default."""
    assert NAMESPACE in hook.DEFAULT_EXEMPT
    ns = _one(manifests, "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for docs in manifests.values():
        for doc in docs:
            if doc["kind"] == "Kustomization":
                assert doc["namespace"] == NAMESPACE
            elif doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_kustomization_lists_every_manifest(manifests: dict[str, list[Doc]]) -> None:
    (kustomization,) = manifests["kustomization.yaml"]
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == set(manifests) - {"kustomization.yaml"}
    images = {i["name"] for i in kustomization.get("images", [])}
    used = {
        c["image"].rsplit(":", 1)[0]
        for docs in manifests.values()
        for d in docs
        if d["kind"] == "DaemonSet"
        for c in d["spec"]["template"]["spec"]["containers"]
        + d["spec"]["template"]["spec"].get("initContainers", [])
    }
    assert used <= images, "every image the DaemonSet uses can be set in kustomization.yaml"


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
    assert config.collector_address is None


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


# --------------------------------------------------------------------- image --


def test_dockerfile_builds_what_the_agent_needs() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM debian:bookworm", text, re.MULTILINE)
    assert "python3-bpfcc" in text
    assert "--system-site-packages" in text
    # guard.py and probe.py compile <package>/../bpf/*.bpf.c at run time.
    assert re.search(r"^COPY bpf ", text, re.MULTILINE)
    assert 'ENTRYPOINT ["nodeguard"]' in text
