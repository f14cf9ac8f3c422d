"""vagrant/ and deploy/kind/: the "try it on a laptop" path (docs/try-it.md), checked offline.

There is no virtualization, container engine or kind where nodeguard is developed, so
nothing here boots a VM or a cluster. What is checked: the Vagrantfile parses (``ruby -c``)
and validates (``vagrant validate``, when Vagrant is installed); the scripts pass
shellcheck; the kind configuration gives the node container what the DaemonSet mounts; the
names, paths and policy that e2e.sh relies on agree with deploy/kubernetes and with the
agent's own policy selection; and e2e.sh itself runs against a fake ``kubectl`` that
answers with status and violation JSON produced by nodeguard's own code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeguard.agent.config import parse_agent_config_text
from nodeguard.agent.selection import select_policy
from nodeguard.agent.status import (
    AgentHealth,
    CollectorLink,
    Counters,
    KernelInfo,
    PodStatus,
    PolicyDirStatus,
    PolicyStatus,
    StatusSnapshot,
)
from nodeguard.events.model import EgressDetail, PolicyRef, ProcessInfo, Violation, WorkloadRef
from nodeguard.events.ocsf import to_json_line
from nodeguard.policy import AgentPolicy, compile_policies, load_policy_text

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
VAGRANTFILE = VAGRANT_DIR / "Vagrantfile"
PROVISION = VAGRANT_DIR / "provision.sh"
KIND_CONFIG = REPO / "deploy" / "kind" / "kind-config.yaml"
E2E = REPO / "deploy" / "kind" / "e2e.sh"
K8S = REPO / "deploy" / "kubernetes"
TRY_IT = REPO / "docs" / "try-it.md"
SCRIPTS = [PROVISION, E2E]

Doc = dict[str, Any]

# Where each hostPath of the DaemonSet comes from inside a kind node (a Docker container
# on the machine that runs the kernel):
# - bind-mounted from that machine by deploy/kind/kind-config.yaml (kernel-wide state);
KIND_EXTRA_MOUNTS = {"/sys/fs/bpf", "/sys/kernel/tracing", "/usr/src"}
# - mounted by kind itself into every node (read-only); a second mount of the same path
#   is refused by Docker ("Duplicate mount point");
KIND_DEFAULT_MOUNTS = {"/lib/modules"}
# - the node container's own (its cgroup namespace, its containerd, its state).
NODE_OWN_PATHS = {
    "/sys/fs/cgroup",
    "/run/containerd",
    "/var/lib/nodeguard",
    "/run/nodeguard",
    "/opt/nodeguard",
    "/var/lib/kubelet/seccomp/nodeguard",
}

# kind's v1alpha4 fields (kind decodes its configuration strictly: an unknown key fails).
KIND_CLUSTER_KEYS = {"kind", "apiVersion", "name", "nodes", "networking", "featureGates"}
KIND_NODE_KEYS = {"role", "image", "labels", "extraMounts", "extraPortMappings"}
KIND_MOUNT_KEYS = {"hostPath", "containerPath", "readOnly", "selinuxRelabel", "propagation"}
KIND_PROPAGATIONS = {"None", "HostToContainer", "Bidirectional"}


def _load_all(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _manifests() -> list[Doc]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _load_all(p)]


def _one(kind: str, name: str) -> Doc:
    found = [d for d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/kubernetes"
    return found[0]


def _e2e_constants() -> dict[str, str]:
    """The ``readonly NAME=value`` lines of e2e.sh, with ``${VAR:-default}`` as its default."""
    constants = {}
    for name, value in re.findall(r"^readonly (\w+)=(.*)$", E2E.read_text(), re.MULTILINE):
        default = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
        constants[name] = default.group(1) if default else value
    return constants


def _provision_default(name: str) -> str:
    found = re.search(
        rf"^{name}=\$\{{\w+:-([^}}]*)\}}$|^{name}=(\S+)$", PROVISION.read_text(), re.M
    )
    assert found, f"{name} not set in provision.sh"
    return found.group(1) if found.group(1) is not None else found.group(2)


def _e2e_policy_text() -> str:
    """The policy file that e2e.sh puts into the policies ConfigMap (between its markers)."""
    found = re.search(
        r"^( *)# >>> e2e policy\n(.*?)^\1# <<< e2e policy$", E2E.read_text(), re.M | re.S
    )
    assert found, "e2e.sh: the policy between '# >>> e2e policy' and '# <<< e2e policy' is missing"
    return textwrap.dedent(found.group(2))


def _shipped_policies() -> list[AgentPolicy]:
    cm = _one("ConfigMap", "nodeguard-policies")
    return [p for key, text in cm["data"].items() for p in load_policy_text(text, key)]


def _bash_functions(names: list[str]) -> str:
    """The readonly lines and the named functions of e2e.sh, to be run on their own."""
    text = E2E.read_text()
    parts = re.findall(r"^readonly .*$", text, re.M)
    for name in names:
        body = re.search(rf"^{name}\(\) \{{\n.*?^\}}$", text, re.M | re.S)
        assert body, f"e2e.sh: function {name} not found"
        parts.append(body.group(0))
    return "\n".join(parts)


# ------------------------------------------------------------------ Vagrantfile --


@pytest.mark.skipif(
    shutil.which("ruby") is None, reason="ruby not installed (apt-get install ruby)"
)
def test_vagrantfile_is_valid_ruby() -> None:
    result = subprocess.run(
        ["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Syntax OK" in result.stdout


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant not installed")
def test_vagrant_validate(tmp_path: Path) -> None:
    """Every machine's configuration, provisioner options included. Provider blocks are
    validated for the providers whose plugin is installed (vagrant-libvirt on Debian);
    without any, ``--ignore-provider`` checks the rest."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAGRANT_")}
    env |= {
        "VAGRANT_CWD": str(VAGRANT_DIR),
        "VAGRANT_HOME": str(tmp_path / "home"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),  # no vagrant/.vagrant left behind
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }

    def validate(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["vagrant", "validate", *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    had_dotdir = (VAGRANT_DIR / ".vagrant").exists()
    result = validate()
    if result.returncode != 0 and "provider" in (result.stdout + result.stderr).lower():
        result = validate("--ignore-provider")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
    assert had_dotdir or not (VAGRANT_DIR / ".vagrant").exists(), "validate left vagrant/.vagrant"


def test_vagrantfile_machines_and_provisioning() -> None:
    text = VAGRANTFILE.read_text()
    assert 'ENV.fetch("NODEGUARD_VM_BOX", "debian/bookworm64")' in text
    assert '"/nodeguard", type: "rsync"' in text, "the repository is synced at /nodeguard"
    assert 'provider "libvirt"' in text and 'provider "virtualbox"' in text
    assert re.search(r'define "default", primary: true', text)
    assert re.search(r'define "kind", autostart: false', text), "`vagrant up` must not start kind"
    # Provisioning: the kernel step (with a reboot) first on both machines, then the rest.
    steps = re.findall(r'path: "provision\.sh", args: \[([^\]]*)\]', text)
    assert steps == ['"kernel"', '"setup"', '"kernel", "kind"', '"kind"'], steps
    assert text.count("reboot: true") == 2
    assert '"NODEGUARD_VM_TEST" => VM_TEST' in text
    # Excluded from the copy: host artefacts, and .vagrant/ (machine keys).
    for excluded in (".git/", ".venv/", ".vagrant/", "__pycache__/"):
        assert f'"{excluded}"' in text
    # kind: the same default version as provision.sh, and no checksum filled in for the
    # user (they must get it themselves).
    version = re.search(r'KIND_VERSION = ENV\.fetch\("NODEGUARD_KIND_VERSION", "([^"]+)"\)', text)
    assert version and version.group(1) == _provision_default("KIND_VERSION")
    assert 'KIND_SHA256 = ENV.fetch("NODEGUARD_KIND_SHA256", "")' in text
    assert "FILL IN" in text


def test_makefile_vm_target() -> None:
    makefile = (REPO / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.M)
    assert phony and "vm" in phony.group(1).split()
    assert re.search(r"^vm:\n\tcd vagrant && vagrant up$", makefile, re.M)
    assert re.search(r'^\t@echo "make vm ', makefile, re.M), "make help lists vm"


# ---------------------------------------------------------------------- scripts --


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_strict_executable_bash(script: Path) -> None:
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _path_references(text: str) -> set[str]:
    text = text.replace("$REPO/", " ")  # provision.sh: $REPO is the repository root
    found = re.findall(
        r"(?<![\w/.$-])((?:deploy|docs|vagrant|scripts|tests|examples)/[\w./-]+)", text
    )
    return {ref.rstrip(".,:;)") for ref in found}


@pytest.mark.parametrize("source", [E2E, PROVISION, VAGRANTFILE, KIND_CONFIG], ids=lambda p: p.name)
def test_referenced_repository_paths_exist(source: Path) -> None:
    refs = _path_references(source.read_text())
    assert refs, f"{source.name} names no repository path (the pattern is wrong)"
    missing = sorted(ref for ref in refs if not (REPO / ref).exists())
    assert not missing, f"{source.name} refers to paths that do not exist: {missing}"


def test_provision_uses_the_files_it_names() -> None:
    text = PROVISION.read_text()
    for used in (
        "$REPO/deploy/kind/kind-config.yaml",
        "$REPO/deploy/kind/e2e.sh",
        "$REPO/deploy/containerd/make-base-spec.sh",
        "deploy/Dockerfile",
        '-C "$REPO" --no-print-directory setup',
    ):
        assert used in text, used
    # The image build copies what the Dockerfile COPYs.
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    copied = {
        src for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for src in line.split()[:-1]
    }
    tar = re.search(r'-cf "\$ctx/context\.tar" (.+)$', text, re.M)
    assert tar, "provision.sh: the image context tar command changed"
    assert copied <= set(tar.group(1).split()), (copied, tar.group(1))
    # kind's containerd config points runc at this base spec, which keeps kind's own hook.
    assert "--from /etc/containerd/cri-base.json" in text
    assert 'base_runtime_spec = \\"/etc/containerd/cri-base.json\\"' in text


# ------------------------------------------------------------------ kind config --


@pytest.fixture(scope="module")
def kind_config() -> Doc:
    docs = _load_all(KIND_CONFIG)
    assert len(docs) == 1
    return docs[0]


def _hostpaths() -> set[str]:
    ds = _one("DaemonSet", "nodeguard")
    return {
        v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"] if "hostPath" in v
    }


def test_kind_config_is_a_cluster(kind_config: Doc) -> None:
    assert kind_config["kind"] == "Cluster"
    assert kind_config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert set(kind_config) <= KIND_CLUSTER_KEYS
    for node in kind_config["nodes"]:
        assert set(node) <= KIND_NODE_KEYS
        for mount in node.get("extraMounts", []):
            assert set(mount) <= KIND_MOUNT_KEYS, mount
            assert mount.get("propagation", "None") in KIND_PROPAGATIONS


def test_kind_config_one_node(kind_config: Doc) -> None:
    """All kind nodes share one kernel and its bpffs: agents on two nodes of one machine
    would pin into the same directory."""
    assert [n["role"] for n in kind_config["nodes"]] == ["control-plane"]


def test_kind_config_mounts_what_the_agent_needs(kind_config: Doc) -> None:
    mounts = {m["containerPath"]: m for m in kind_config["nodes"][0]["extraMounts"]}
    for path, mount in mounts.items():
        assert mount["hostPath"] == path, "the node must see the host's path at the same place"
    assert set(mounts) == KIND_EXTRA_MOUNTS
    # bpffs: pins written through it; a slave mount in the node, or containerd refuses the
    # DaemonSet's HostToContainer volume.
    assert mounts["/sys/fs/bpf"].get("propagation") == "HostToContainer"
    assert not mounts["/sys/fs/bpf"].get("readOnly", False)
    assert mounts["/usr/src"].get("readOnly") is True
    # kind mounts /lib/modules itself; listing it again would be a duplicate mount point.
    assert not KIND_DEFAULT_MOUNTS & set(mounts)


def test_every_daemonset_hostpath_has_a_source_in_kind() -> None:
    """A new hostPath in the DaemonSet must be classified here (and mounted by
    kind-config.yaml when it is the host's, not the node container's)."""
    assert _hostpaths() == KIND_EXTRA_MOUNTS | KIND_DEFAULT_MOUNTS | NODE_OWN_PATHS


# ----------------------------------------------------------------------- e2e.sh --


def test_e2e_names_match_the_manifests() -> None:
    c = _e2e_constants()
    ds = _one("DaemonSet", c["AGENT_DS"])
    assert ds["metadata"]["namespace"] == c["AGENT_NS"]
    key, value = c["AGENT_SELECTOR"].split("=")
    assert ds["spec"]["template"]["metadata"]["labels"][key] == value
    pod = ds["spec"]["template"]["spec"]
    assert "agent" in [x["name"] for x in pod["containers"]], "e2e.sh execs into -c agent"
    cm = _one("ConfigMap", c["POLICY_CONFIGMAP"])
    assert cm["metadata"]["namespace"] == c["AGENT_NS"]
    assert c["POLICY_KEY"] not in cm["data"], "e2e.sh adds and removes its own key"
    assert c["POLICY_KEY"].endswith(".yaml"), "the agent loads *.yaml and *.yml only"
    # The event log e2e.sh reads is the one the agent writes: <stateDir>/events/violations.jsonl.
    agent_cm = _one("ConfigMap", "nodeguard-agent")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NODE_NAME", "node-1")
        config = parse_agent_config_text(agent_cm["data"]["agent.yaml"], "agent.yaml")
    assert c["EVENTS_FILE"] == str(config.state_dir / "events" / "violations.jsonl")
    # The policies ConfigMap is the agent's policy directory.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = [
        m["mountPath"]
        for x in pod["containers"]
        for m in x["volumeMounts"]
        if volumes[m["name"]].get("configMap", {}).get("name") == c["POLICY_CONFIGMAP"]
    ]
    assert mounted == [str(config.policy_dir)]


def test_e2e_policy_is_valid_and_selects_only_the_labelled_client() -> None:
    c = _e2e_constants()
    policies = load_policy_text(_e2e_policy_text(), "e2e.sh")
    compile_policies(policies)
    assert [p.name for p in policies] == [c["POLICY_NAME"]]
    policy = policies[0]
    assert policy.spec.mode == "enforce"
    assert policy.spec.egress is not None and not policy.spec.egress.allow, (
        "no egress allowed: the server's pod IP is refused whatever it is"
    )
    # Together with the policies the DaemonSet ships, as the agent will have them.
    everything = [*_shipped_policies(), *policies]
    compile_policies(everything)
    labelled = {c["GUARDED_LABEL_KEY"]: c["GUARDED_LABEL_VALUE"]}
    assert select_policy(c["NAMESPACE"], labelled, everything).name == c["POLICY_NAME"]
    assert select_policy(c["NAMESPACE"], {}, everything).name is None
    # provision.sh makes the same namespace fail-closed in the base spec.
    assert _provision_default("FAIL_CLOSED_NAMESPACES") == c["NAMESPACE"]


def test_e2e_manifests(tmp_path: Path) -> None:
    script = _bash_functions(["namespace_and_server", "client_pod"]) + textwrap.dedent(
        """
        namespace_and_server
        client_pod client-guarded http://10.244.0.7:8080/ "app: research-agent"
        client_pod client-unguarded http://10.244.0.7:8080/
        """
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Namespace", "agents"),
        ("Pod", "server"),
        ("Pod", "client-guarded"),
        ("Pod", "client-unguarded"),
    ]
    guarded, unguarded = docs[2], docs[3]
    assert guarded["metadata"]["labels"] == {"app": "research-agent"}
    assert unguarded["metadata"]["labels"] == {}
    for pod in (guarded, unguarded):
        assert pod["metadata"]["namespace"] == "agents"
        assert pod["spec"]["restartPolicy"] == "Never"
        first = pod["spec"]["containers"][0]
        # The container's entrypoint is the connect itself.
        assert first["name"] == "client"
        assert first["command"][0] == "wget" and first["command"][-1] == "http://10.244.0.7:8080/"
    assert guarded["spec"] == unguarded["spec"], "the clients differ only in the label"


# -------------------------------------------- e2e.sh against a fake kubectl --

FAKE_KUBECTL = r"""
import json, os, sys
from pathlib import Path

state = Path(os.environ["FAKE_KUBECTL_DIR"])
s = json.loads((state / "scenario.json").read_text())
argv = sys.argv[1:]
with open(state / "calls.jsonl", "a") as log:
    log.write(json.dumps(argv) + "\n")
ns = None
if argv[:1] == ["-n"]:
    ns, argv = argv[1], argv[2:]

def out(text, code=0):
    sys.stdout.write(text)
    sys.exit(code)

def unknown():
    with open(state / "calls.jsonl", "a") as log:
        log.write(json.dumps(["UNKNOWN", ns, *argv]) + "\n")
    sys.stderr.write("fake kubectl: unexpected call: %r\n" % (sys.argv,))
    sys.exit(99)

verb = argv[0] if argv else ""
if verb == "get" and argv[1] == "daemonset" and argv[3:] == ["-o", "name"]:
    if s["daemonset"]:
        out("daemonset.apps/" + argv[2] + "\n")
    sys.stderr.write('Error from server (NotFound): daemonsets.apps "nodeguard" not found\n')
    sys.exit(1)
if verb == "get" and argv[1] == "configmap" and argv[3:] == ["-o", "name"]:
    out("configmap/" + argv[2] + "\n")
if verb == "rollout" and argv[1:3] == ["status", "daemonset/nodeguard"]:
    out('daemon set "nodeguard" successfully rolled out\n')
if verb == "get" and argv[1] == "pods" and argv[2] == "-l" and argv[-2:] == ["-o", "json"]:
    out(json.dumps({"items": [{"metadata": {"name": "nodeguard-x7k2p"}}]}))
if verb == "get" and argv[1] == "pods" and argv[2:] == ["-o", "wide"]:
    out("")
if verb == "get" and argv[1:3] == ["namespace", "agents"]:
    out(json.dumps(s["existing_namespace"]) if s["existing_namespace"] else "")
if verb == "patch" and argv[1:3] == ["configmap", "nodeguard-policies"]:
    patch = {"type": argv[argv.index("--type") + 1], "patch": argv[argv.index("-p") + 1]}
    with open(state / "patches.jsonl", "a") as f:
        f.write(json.dumps(patch) + "\n")
    out("")
if verb == "annotate" and argv[1] == "pods":
    out("")
in_agent = verb == "exec" and argv[2:5] == ["-c", "agent", "--"]
if in_agent and argv[5:] == ["nodeguard", "status", "--json"]:
    out(s["status"])
if in_agent and argv[5:7] == ["tail", "-n"]:
    out(s["records"])
if verb == "apply" and argv[1:] == ["-f", "-"]:
    with open(state / "applied.yaml", "a") as f:
        f.write(sys.stdin.read() + "\n---\n")
    out("")
if verb == "wait" and argv[2] == "pod/server":
    out("")
if verb == "get" and argv[1] == "pod" and argv[3:] == ["-o", "json"]:
    out(json.dumps(s["pods"][argv[2]]))
if verb == "logs" and argv[2:] == ["-c", "client"]:
    out(s["logs"][argv[1]])
if verb == "logs" and argv[1] == "-l":
    out("")
if verb == "delete" and argv[1:3] == ["namespace", "agents"]:
    out("")
unknown()
"""

SERVER_IP = "10.244.0.7"
UID = {"client-guarded": "uid-guarded-1", "client-unguarded": "uid-unguarded-2"}
EPERM_LOG = f"wget: can't connect to remote host ({SERVER_IP}): Operation not permitted\n"


@dataclass
class Scenario:
    """What the fake cluster answers; the defaults are a cluster where nodeguard works."""

    daemonset: bool = True
    existing_namespace: Doc | None = None
    exit_codes: dict[str, int] = field(
        default_factory=lambda: {"client-guarded": 1, "client-unguarded": 0}
    )
    logs: dict[str, str] = field(
        default_factory=lambda: {
            "client-guarded": EPERM_LOG,
            "client-unguarded": "hello-from-nodeguard-e2e\n",
        }
    )
    guarded_in_status: bool = True
    record: bool = True

    def status(self) -> str:
        pods = [
            PodStatus(
                namespace="agents",
                name="client-unguarded",
                uid=UID["client-unguarded"],
                policy=None,
                mode="",
                selection_reason="no policy selects it",
                violations=0,
                cgroup="/kubelet.slice/kubelet-kubepods.slice/x",
                guarded_since=None,
            )
        ]
        if self.guarded_in_status:
            pods.append(
                PodStatus(
                    namespace="agents",
                    name="client-guarded",
                    uid=UID["client-guarded"],
                    policy="nodeguard-e2e",
                    mode="enforce",
                    selection_reason="namespace agents, labels app=research-agent (only match)",
                    violations=1,
                    cgroup="/kubelet.slice/kubelet-kubepods.slice/y",
                    guarded_since=1_700_000_000.0,
                )
            )
        snapshot = StatusSnapshot(
            agent=AgentHealth(
                "ready", 1_700_000_000.0, 60.0, "nodeguard-control-plane", "0.1.0", 1
            ),
            kernel=KernelInfo("6.1.0-28-amd64"),
            policies=(
                PolicyStatus(
                    "nodeguard-e2e", "0123456789ab", "enforce", 1, "/p/nodeguard-e2e.yaml"
                ),
                PolicyStatus(
                    "research-agent", "ba9876543210", "audit", 0, "/p/research-agent.yaml"
                ),
            ),
            pods=tuple(pods),
            counters=Counters({"egress": 1}, records=1),
            policy_dir=PolicyDirStatus("/etc/nodeguard/policies", 2),
            collector=CollectorLink("not configured"),
        )
        return snapshot.to_json()

    def records(self) -> str:
        if not self.record:
            return ""
        violation = Violation(
            uid="01890a5d-ac96-774b-bcce-b302099a8057",
            sequence=1,
            kind="egress",
            time_ms=1_700_000_000_123,
            first_time_ms=1_700_000_000_123,
            count=1,
            verdict="blocked",
            cgroup_id=4242,
            process=ProcessInfo(pid=77, tid=77, name="wget"),
            policy=PolicyRef("nodeguard-e2e", "nodeguard-e2e@v1", "0123456789ab", "enforce"),
            egress=EgressDetail(ip=SERVER_IP, port=8080, protocol="tcp", family=4, hook="connect4"),
            workload=WorkloadRef(
                namespace="agents",
                pod_name="client-guarded",
                pod_uid=UID["client-guarded"],
                pod_labels={"app": "research-agent"},
                container_name="client",
            ),
            node="nodeguard-control-plane",
        )
        other = "{" + '"note": "a record of another pod"' + "}"
        return other + "\n" + to_json_line(violation) + "\n"

    def pods(self) -> dict[str, Doc]:
        node = {"nodeName": "nodeguard-control-plane"}
        pods: dict[str, Doc] = {
            "server": {
                "metadata": {"uid": "uid-server"},
                "spec": node,
                "status": {"podIP": SERVER_IP},
            }
        }
        for name, code in self.exit_codes.items():
            statuses = [
                {"name": "client", "state": {"terminated": {"exitCode": code}}},
                {"name": "holder", "state": {"running": {}}},
            ]
            pods[name] = {
                "metadata": {"uid": UID[name]},
                "spec": node,
                "status": {"podIP": "10.244.0.9", "containerStatuses": statuses},
            }
        return pods

    def to_json(self) -> str:
        return json.dumps(
            {
                "daemonset": self.daemonset,
                "existing_namespace": self.existing_namespace,
                "status": self.status(),
                "records": self.records(),
                "pods": self.pods(),
                "logs": self.logs,
            }
        )


@dataclass
class E2ERun:
    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]
    patches: list[Doc]


def _run_e2e(tmp_path: Path, scenario: Scenario) -> E2ERun:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    kubectl = bindir / "kubectl"
    kubectl.write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}")
    kubectl.chmod(0o755)
    (tmp_path / "scenario.json").write_text(scenario.to_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEGUARD_E2E_")}
    env |= {
        "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}",
        "FAKE_KUBECTL_DIR": str(tmp_path),
        "NODEGUARD_E2E_POLL": "0.05",
        "NODEGUARD_E2E_TIMEOUT": "2",
        "NODEGUARD_E2E_POLICY_TIMEOUT": "2",
        "NODEGUARD_E2E_EVENT_TIMEOUT": "1",
    }
    result = subprocess.run(
        ["bash", str(E2E)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    calls_file = tmp_path / "calls.jsonl"
    calls = (
        [json.loads(line) for line in calls_file.read_text().splitlines()]
        if calls_file.exists()
        else []
    )
    patches_file = tmp_path / "patches.jsonl"
    patches = (
        [json.loads(line) for line in patches_file.read_text().splitlines()]
        if patches_file.exists()
        else []
    )
    return E2ERun(result.returncode, result.stdout, result.stderr, calls, patches)


def _assert_cleaned_up(run: E2ERun) -> None:
    assert ["delete", "namespace", "agents"] in [c[:3] for c in run.calls], "namespace not deleted"
    assert run.patches[-1]["type"] == "json"
    assert json.loads(run.patches[-1]["patch"]) == [
        {"op": "remove", "path": "/data/nodeguard-e2e.yaml"}
    ]


needs_jq = pytest.mark.skipif(
    shutil.which("jq") is None, reason="jq not installed (e2e.sh needs it)"
)


@needs_jq
def test_e2e_passes_on_a_working_cluster(tmp_path: Path) -> None:
    run = _run_e2e(tmp_path, Scenario())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS" in run.stdout
    assert not [c for c in run.calls if c[0] == "UNKNOWN"]
    # The policy patch is a merge patch whose key holds exactly the policy checked above.
    merge = run.patches[0]
    assert merge["type"] == "merge"
    data = yaml.safe_load(merge["patch"])["data"]
    assert list(data) == ["nodeguard-e2e.yaml"]
    assert [p.name for p in load_policy_text(data["nodeguard-e2e.yaml"])] == ["nodeguard-e2e"]
    # The violation record is printed.
    assert '"pod_uid": "uid-guarded-1"' in run.stdout
    _assert_cleaned_up(run)


@needs_jq
def test_e2e_fails_when_the_labelled_client_connects(tmp_path: Path) -> None:
    scenario = Scenario()
    scenario.exit_codes["client-guarded"] = 0
    scenario.logs["client-guarded"] = "hello-from-nodeguard-e2e\n"
    run = _run_e2e(tmp_path, scenario)
    assert run.returncode == 1
    assert "client-guarded reached the server" in run.stderr
    assert "diagnostics" in run.stderr
    _assert_cleaned_up(run)


@needs_jq
def test_e2e_fails_when_the_failure_is_not_eperm(tmp_path: Path) -> None:
    scenario = Scenario()
    scenario.logs["client-guarded"] = "wget: download timed out\n"
    run = _run_e2e(tmp_path, scenario)
    assert run.returncode == 1
    assert "but not with EPERM" in run.stderr


@needs_jq
def test_e2e_fails_when_the_unlabelled_client_cannot_connect(tmp_path: Path) -> None:
    scenario = Scenario()
    scenario.exit_codes["client-unguarded"] = 1
    scenario.logs["client-unguarded"] = EPERM_LOG
    run = _run_e2e(tmp_path, scenario)
    assert run.returncode == 1
    assert "client-unguarded (not selected by any policy) should have fetched" in run.stderr


@needs_jq
def test_e2e_fails_when_status_does_not_show_the_pod_guarded(tmp_path: Path) -> None:
    run = _run_e2e(tmp_path, Scenario(guarded_in_status=False))
    assert run.returncode == 1
    assert "does not show agents/client-guarded" in run.stderr
    _assert_cleaned_up(run)


@needs_jq
def test_e2e_fails_without_a_violation_record(tmp_path: Path) -> None:
    run = _run_e2e(tmp_path, Scenario(record=False))
    assert run.returncode == 1
    assert "no violation record for agents/client-guarded" in run.stderr


@needs_jq
def test_e2e_needs_nodeguard_deployed(tmp_path: Path) -> None:
    run = _run_e2e(tmp_path, Scenario(daemonset=False))
    assert run.returncode == 2
    assert "deploy nodeguard first" in run.stderr
    assert not run.patches, "nothing may be changed when a prerequisite is missing"


@needs_jq
def test_e2e_leaves_a_foreign_namespace_alone(tmp_path: Path) -> None:
    foreign = {"metadata": {"name": "agents", "labels": {"team": "research"}}}
    run = _run_e2e(tmp_path, Scenario(existing_namespace=foreign))
    assert run.returncode == 2
    assert "was not created by this script" in run.stderr
    assert ["delete", "namespace", "agents"] not in [c[:3] for c in run.calls]
    assert not run.patches


# ------------------------------------------------------------------------- docs --


def test_try_it_doc_is_linked_and_its_links_resolve() -> None:
    readme = (VAGRANT_DIR / "README.md").read_text()
    assert "../docs/try-it.md" in readme
    for doc in (TRY_IT, VAGRANT_DIR / "README.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"
