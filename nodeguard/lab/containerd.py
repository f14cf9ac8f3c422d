"""A real node runtime for the demo, tests and benchmarks: a private containerd (CRI plugin,
runc, CNI bridge) and a kubelet stand-in that creates pods through CRI like the kubelet.

Everything lives below one temporary directory (root, state, socket, config, CNI config and
IPAM data, the image archive) and is removed on close(), also after a failed start:

- containerd runs with its own ``root``, ``state``, gRPC socket and runc state directory,
  the ``native`` snapshotter, runc (``io.containerd.runc.v2``, ``SystemdCgroup = false``)
  and ``restrict_oom_score_adj = true`` (this VM lacks CAP_SYS_RESOURCE).
- It never pulls: the only image is built here (umoci + the static busybox) and imported
  with ``ctr images import`` under a fully qualified name, and the registry hosts
  directory points docker.io and registry.k8s.io at a closed loopback port, so even an
  accidental pull cannot leave the machine.
- CNI: a bridge of our own (``ngcni<tag>``, created here with the gateway address) and
  host-local IPAM in a free /24 of 198.19.0.0/16 (benchmarking range). No masquerade, no
  default route in pods, no sysctl change: pods reach each other and the bridge address
  on the host, nothing else.

What is left outside the directory, by design of containerd 1.6 / libcni: shim sockets in
/run/containerd/s/, CNI result caches in /var/lib/cni/results/ (removed with the pod) and
the pods' cgroups below /kubepods in each hierarchy (removed like the kubelet removes them).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nodeguard.identity import cgroupfs
from nodeguard.identity.cgroup_paths import QosClass, cgroup_parent, pod_cgroup_candidates
from nodeguard.identity.cri import CRIClient, CRIError
from nodeguard.proto.runtime.v1 import api_pb2

IMAGE = "docker.io/local/busybox:pod"
IMAGE_NAMESPACE = "k8s.io"  # containerd namespace of the CRI plugin
BUSYBOX = Path("/bin/busybox")
# Applets linked into the image's /bin (busybox-static has them all).
APPLETS = (
    "sh", "sleep", "nc", "wget", "touch", "cat", "ls", "echo", "ip", "ps", "id",
    "hostname", "true", "false", "env", "mkdir", "rm", "kill", "printf", "test",
    "grep", "head", "timeout", "ping", "unshare", "arping",
)  # fmt: skip
CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))  # Debian's, then upstream's
CNI_PLUGINS = ("bridge", "host-local", "loopback")
SUBNETS = ipaddress.IPv4Network("198.19.0.0/16")  # inside 198.18.0.0/15 (benchmarking)
TMP_PREFIX = "ngcri-"
# Nothing listens here: a pull that slipped through fails at once, on loopback.
BLACKHOLE_REGISTRY = "http://127.0.0.1:9"
REDIRECTED_REGISTRIES = ("docker.io", "registry-1.docker.io", "registry.k8s.io", "k8s.gcr.io")
DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)
SNAPSHOTTER = "native"
SHIM_SOCKET_DIR = Path("/run/containerd/s")
CNI_RESULTS_DIR = Path("/var/lib/cni/results")
START_TIMEOUT_S = 20.0


# Namespace whose containers the runtime hook refuses while no agent answers.
FAIL_CLOSED_NS = "agents-closed"


class RuntimeSetupError(Exception):
    """The private runtime could not be set up (message says which step and why)."""


# --------------------------------------------------------------------------------------
# small helpers


def run(cmd: list[str], timeout: float = 60.0, check: bool = True) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeSetupError(f"{' '.join(cmd)}: {err}") from err
    if check and proc.returncode != 0:
        raise RuntimeSetupError(
            f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc.stdout


@dataclass
class Timings:
    """Wall time of each setup/teardown step, and samples of repeated CRI operations."""

    steps: list[tuple[str, float]] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append((name, time.perf_counter() - t0))

    def add(self, operation: str, seconds: float) -> None:
        self.samples.setdefault(operation, []).append(seconds)

    def render(self) -> str:
        lines = [f"  {name:<32} {secs * 1000:8.1f} ms" for name, secs in self.steps]
        for op, values in self.samples.items():
            ordered = sorted(values)
            median = ordered[len(ordered) // 2]
            lines.append(
                f"  {op:<32} {median * 1000:8.1f} ms median, {ordered[-1] * 1000:.1f} ms max"
                f" (n={len(ordered)})"
            )
        return "\n".join(lines)


def find_cni_bin_dir() -> Path:
    for d in CNI_BIN_DIRS:
        if all((d / p).is_file() for p in CNI_PLUGINS):
            return d
    raise RuntimeSetupError(
        f"CNI plugins {', '.join(CNI_PLUGINS)} not found in "
        f"{' or '.join(map(str, CNI_BIN_DIRS))}: run scripts/setup.sh "
        "(installs containernetworking-plugins)"
    )


def check_tools() -> None:
    missing = [t for t in ("containerd", "ctr", "runc", "umoci") if shutil.which(t) is None]
    if not BUSYBOX.is_file():
        missing.append(f"{BUSYBOX} (busybox-static)")
    if shutil.which("containerd-shim-runc-v2") is None:
        missing.append("containerd-shim-runc-v2")
    if missing:
        raise RuntimeSetupError(
            f"missing {', '.join(missing)}: run scripts/setup.sh (installs containerd, runc, "
            "containernetworking-plugins, umoci, busybox-static)"
        )


def mounts_below(root: Path) -> list[str]:
    """Mount points at or below root, deepest first."""
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = cgroupfs._unescape(line.split(" ")[4])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def unmount_below(root: Path) -> int:
    count = 0
    for _ in range(5):  # stacked mounts: repeat until none is left
        points = mounts_below(root)
        if not points:
            break
        for point in points:
            proc = subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            count += proc.returncode == 0
    return count


def cgroup_mounts() -> list[Path]:
    """Every cgroup hierarchy's mount point (v1 controllers and the v2 one)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] in ("cgroup", "cgroup2"):
            out.append(Path(cgroupfs._unescape(left.split(" ")[4])))
    return out


def remove_pod_cgroups(pod_uid: str, timeout: float = 5.0) -> None:
    """What the kubelet does after RemovePodSandbox: delete the pod's cgroup everywhere.

    runc creates the pod level (``/kubepods/<qos>/pod<uid>``) implicitly as the parent of
    the sandbox's and containers' cgroups but removes only those. In hybrid mode that is one
    directory per hierarchy. Whatever still runs inside is killed (v2 ``cgroup.kill``).
    """
    mounts = cgroup_mounts()
    v2 = cgroupfs.find_cgroup2_mount()
    for _driver, _qos, rel in pod_cgroup_candidates(pod_uid):
        if v2 is not None and (v2 / rel).is_dir():
            cgroupfs.remove_cgroup(v2 / rel, timeout)
        for mount in mounts:
            if mount != v2:
                cgroupfs.remove_tree(mount / rel, timeout, kill=False)


def remove_empty_kubepods() -> None:
    """Remove kubepods/{besteffort,burstable} and kubepods when nothing is left in them."""
    for mount in cgroup_mounts():
        for rel in ("kubepods/besteffort", "kubepods/burstable", "kubepods"):
            with contextlib.suppress(OSError):
                (mount / rel).rmdir()


def pick_subnet() -> ipaddress.IPv4Network:
    """The first /24 of 198.19.0.0/16 that no route and no interface address overlaps."""
    used: list[ipaddress.IPv4Network] = []
    for line in run(["ip", "-4", "-o", "addr", "show"]).splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            used.append(ipaddress.IPv4Interface(m.group(1)).network)
    for line in run(["ip", "-4", "route", "show", "table", "all"]).splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest and dest[0].isdigit():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dest, strict=False))
    for net in SUBNETS.subnets(new_prefix=24):
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeSetupError("no free /24 left in 198.19.0.0/16 for the CNI bridge")


# --------------------------------------------------------------------------------------
# image


def build_image(workdir: Path) -> Path:
    """A tiny OCI image: /bin/busybox + applet links, command ``sleep inf``; as an archive."""
    layout, bundle = workdir / "oci", workdir / "bundle"
    ref = f"{layout}:pod"
    run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", ref])
    run(["umoci", "unpack", "--image", ref, str(bundle)])
    rootfs = bundle / "rootfs"
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "run", "var"):
        (rootfs / d).mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    run(["umoci", "repack", "--image", ref, str(bundle)])
    run(
        [
            "umoci", "config", "--image", ref, "--clear=config.cmd",
            "--config.cmd", "/bin/sleep", "--config.cmd", "inf",
            "--config.env", "PATH=/bin",
        ]
    )  # fmt: skip
    archive = workdir / "image.tar"
    run(["tar", "-C", str(layout), "-cf", str(archive), "."])
    shutil.rmtree(bundle)
    shutil.rmtree(layout)
    return archive


# --------------------------------------------------------------------------------------
# containerd configuration (pure)


def set_toml_key(text: str, section: str, key: str, value: str) -> str:
    """Set ``key = value`` (value already TOML) in one section of a TOML document.

    ``section`` is the header as written between the brackets ("" for the top level).
    The key is replaced where it is, or added right below the section header.
    """
    lines = text.splitlines()
    current = ""
    header_at: int | None = 0 if section == "" else None
    key_re = re.compile(rf"^(\s*){re.escape(key)}\s*=")
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            current = stripped[1:-1].strip()
            if current == section:
                header_at = i
            continue
        if current == section:
            m = key_re.match(line)
            if m:
                lines[i] = f"{m.group(1)}{key} = {value}"
                return "\n".join(lines) + "\n"
    if header_at is None:
        lines += ["", f"[{section}]", f"  {key} = {value}"]
    elif section == "":
        lines.insert(0, f"{key} = {value}")
    else:
        indent = re.match(r"^(\s*)", lines[header_at])
        pad = (indent.group(1) if indent else "") + "  "
        lines.insert(header_at + 1, f"{pad}{key} = {value}")
    return "\n".join(lines) + "\n"


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))


def containerd_config(
    default_toml: str,
    *,
    root: Path,
    state: Path,
    socket: Path,
    runc_root: Path,
    sandbox_image: str,
    cni_bin_dir: Path,
    cni_conf_dir: Path,
    registry_dir: Path,
    opt_dir: Path,
    base_runtime_spec: Path | None = None,
) -> str:
    """`containerd config default` with the edits this machine and the tests need."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    runc = f"{cri}.containerd.runtimes.runc"
    edits: list[tuple[str, str, str]] = [
        ("", "root", _toml_str(root)),
        ("", "state", _toml_str(state)),
        ("", "disabled_plugins", json.dumps(list(DISABLED_PLUGINS))),
        ("grpc", "address", _toml_str(socket)),
        (cri, "sandbox_image", _toml_str(sandbox_image)),
        (cri, "restrict_oom_score_adj", "true"),
        (cri, "disable_apparmor", "true"),
        (cri, "netns_mounts_under_state_dir", "true"),
        (cri, "disable_tcp_service", "true"),
        (cri, "enable_selinux", "false"),
        (f"{cri}.containerd", "snapshotter", _toml_str(SNAPSHOTTER)),
        (f"{cri}.containerd", "default_runtime_name", _toml_str("runc")),
        (runc, "runtime_type", _toml_str("io.containerd.runc.v2")),
        (f"{runc}.options", "BinaryName", _toml_str("runc")),
        (f"{runc}.options", "Root", _toml_str(runc_root)),
        (f"{runc}.options", "SystemdCgroup", "false"),
        (f"{cri}.cni", "bin_dir", _toml_str(cni_bin_dir)),
        (f"{cri}.cni", "conf_dir", _toml_str(cni_conf_dir)),
        (f"{cri}.cni", "max_conf_num", "1"),
        (f"{cri}.registry", "config_path", _toml_str(registry_dir)),
        ('plugins."io.containerd.internal.v1.opt"', "path", _toml_str(opt_dir)),
    ]
    if base_runtime_spec is not None:
        edits.append((runc, "base_runtime_spec", _toml_str(base_runtime_spec)))
    text = default_toml
    for section, key, value in edits:
        text = set_toml_key(text, section, key, value)
    _verify_config(text, edits)
    return text


def _verify_config(text: str, edits: list[tuple[str, str, str]]) -> None:
    doc = tomllib.loads(text)
    for section, key, value in edits:
        node = doc
        for part in _split_section(section):
            node = node[part]
        if node.get(key) != tomllib.loads(f"v = {value}")["v"]:
            raise RuntimeSetupError(f"containerd config edit did not take: [{section}] {key}")


def _split_section(section: str) -> list[str]:
    """'plugins."io.containerd.grpc.v1.cri".cni' -> ['plugins', 'io.containerd...cri', 'cni']"""
    return [a or b for a, b in re.findall(r'"([^"]*)"|([^."]+)', section)]


def cni_conflist(name: str, bridge: str, subnet: ipaddress.IPv4Network, data_dir: Path) -> str:
    """bridge + host-local; the bridge and its gateway address are created by the harness.

    No ``isGateway`` (the plugin would turn on ip_forward host-wide), no ``ipMasq``
    (iptables), no routes: pods reach their subnet (other pods, the bridge address on the
    host) and nothing beyond it.
    """
    hosts = list(subnet.hosts())
    conf = {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(data_dir),
                    "ranges": [
                        [
                            {
                                "subnet": str(subnet),
                                "rangeStart": str(hosts[9]),
                                "rangeEnd": str(hosts[-2]),
                                "gateway": str(hosts[0]),
                            }
                        ]
                    ],
                },
            }
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


def registry_hosts(registry_dir: Path) -> None:
    """Point every registry the runtime could default to at a closed loopback port."""
    for registry in REDIRECTED_REGISTRIES:
        d = registry_dir / registry
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(
            f'server = "{BLACKHOLE_REGISTRY}"\n\n'
            f'[host."{BLACKHOLE_REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'
        )


# --------------------------------------------------------------------------------------
# the runtime


@dataclass
class ContainerdRuntime:
    """A private containerd with CRI and CNI. ``start()`` it, ``close()`` it."""

    workdir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    timings: Timings = field(default_factory=Timings)
    subnet: ipaddress.IPv4Network | None = None
    process: subprocess.Popen[bytes] | None = None
    _cri: CRIClient | None = None

    # layout --------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.workdir / "run" / "containerd.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def bridge(self) -> str:
        return f"ngcni{self.tag}"

    @property
    def network_name(self) -> str:
        return f"ngcri-{self.tag}"

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(next(self.subnet.hosts()))

    @property
    def agent_socket(self) -> Path:
        """Where the runtime hook looks for the nodeguard agent's API (tests start one)."""
        return self.workdir / "agent" / "agent.sock"

    def base_spec(self) -> Path:
        """containerd's default OCI spec plus nodeguard's createRuntime hook, as a real
        node would configure it (docs/runtime-hook.md): every container asks the agent
        before its process starts; namespace FAIL_CLOSED_NS is refused when no agent
        answers."""
        spec = json.loads(run(["ctr", "oci", "spec"]))
        spec.setdefault("hooks", {})["createRuntime"] = [
            {
                "path": sys.executable,
                "args": [
                    sys.executable, "-m", "nodeguard.cli.hook",
                    "--socket", str(self.agent_socket),
                    "--fail-closed-namespaces", FAIL_CLOSED_NS,
                    "--timeout-ms", "5000",
                ],
                "timeout": 10,
            }
        ]  # fmt: skip
        path = self.workdir / "base-spec.json"
        path.write_text(json.dumps(spec, indent=1))
        return path

    @property
    def log_path(self) -> Path:
        return self.workdir / "containerd.log"

    @property
    def pod_log_root(self) -> Path:
        return self.workdir / "pod-logs"

    @property
    def cri(self) -> CRIClient:
        if self._cri is None:
            raise RuntimeSetupError("runtime not started")
        return self._cri

    # start ---------------------------------------------------------------------------

    def start(self) -> ContainerdRuntime:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        with self.timings.step("check tools"):
            check_tools()
            cni_bin = find_cni_bin_dir()
        (self.workdir / "owner.pid").write_text(f"{os.getpid()}\n")
        with self.timings.step("build image (umoci)"):
            archive = build_image(self.workdir)
        with self.timings.step("write config"):
            default = run(["containerd", "config", "default"])
            dirs = {
                n: self.workdir / n
                for n in ("root", "state", "run", "runc", "cni-conf", "cni-ipam", "certs.d", "opt")
            }
            for d in dirs.values():
                d.mkdir(mode=0o711)
            self.pod_log_root.mkdir()
            registry_hosts(dirs["certs.d"])
            self.subnet = pick_subnet()
            (dirs["cni-conf"] / "10-ngcri.conflist").write_text(
                cni_conflist(self.network_name, self.bridge, self.subnet, dirs["cni-ipam"])
            )
            config = containerd_config(
                default,
                root=dirs["root"],
                state=dirs["state"],
                socket=self.socket,
                runc_root=dirs["runc"],
                sandbox_image=IMAGE,
                cni_bin_dir=cni_bin,
                cni_conf_dir=dirs["cni-conf"],
                registry_dir=dirs["certs.d"],
                opt_dir=dirs["opt"],
                base_runtime_spec=self.base_spec(),
            )
            (self.workdir / "config.toml").write_text(config)
            (self.workdir / "bridge").write_text(self.bridge + "\n")
        with self.timings.step("create bridge"):
            self._create_bridge()
        with self.timings.step("start containerd"):
            self._start_containerd()
        with self.timings.step("import image (ctr)"):
            self.ctr("images", "import", "--base-name", IMAGE.rsplit(":", 1)[0],
                     "--snapshotter", SNAPSHOTTER, str(archive))  # fmt: skip
            listed = self.ctr("images", "ls", "-q")
            if IMAGE not in listed.split():
                raise RuntimeSetupError(f"image import did not create {IMAGE}: {listed!r}")

    def _create_bridge(self) -> None:
        assert self.subnet is not None
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])

    def _start_containerd(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            ["containerd", "--config", str(self.workdir / "config.toml")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        (self.workdir / "containerd.pid").write_text(f"{self.process.pid}\n")
        self._cri = CRIClient(self.endpoint, timeout_s=10.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeSetupError(
                    f"containerd exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.socket.exists():
                try:
                    version = self._cri.version()
                except CRIError:
                    pass
                else:
                    if version.runtime_name:
                        return
            if time.monotonic() > deadline:
                raise RuntimeSetupError(
                    f"containerd's CRI did not answer within {START_TIMEOUT_S} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def ctr(self, *args: str) -> str:
        return run(["ctr", "--address", str(self.socket), "--namespace", IMAGE_NAMESPACE, *args])

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no containerd log)"

    # close ---------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every pod, stop containerd, unmount, delete the bridge and the directory."""
        if self._cri is not None and self.process is not None and self.process.poll() is None:
            with self.timings.step("remove leftover pods"), contextlib.suppress(CRIError):
                for pod in self._cri.list_pods():
                    with contextlib.suppress(CRIError):
                        self._cri.stop_pod_sandbox(pod.id)
                        self._cri.remove_pod_sandbox(pod.id)
                    with contextlib.suppress(OSError):
                        remove_pod_cgroups(pod.uid)
        if self._cri is not None:
            self._cri.close()
            self._cri = None
        with self.timings.step("stop containerd"):
            self._stop_containerd()
        with self.timings.step("cleanup (mounts, bridge, dirs)"):
            cleanup_workdir(self.workdir, self.bridge)
            remove_empty_kubepods()

    def _stop_containerd(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.process = None


def _shim_pids(socket: Path) -> list[int]:
    """containerd shims started for this socket (they outlive a killed containerd)."""
    pids = []
    needle = str(socket).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        args = cmdline.split(b"\0")
        if args and args[0].endswith(b"containerd-shim-runc-v2") and needle in args:
            pids.append(int(entry.name))
    return pids


def _task_ids(workdir: Path) -> list[str]:
    """Sandboxes and containers the runtime still had tasks for (normally none at the end)."""
    tasks = workdir / "state" / "io.containerd.runtime.v2.task" / IMAGE_NAMESPACE
    return [p.name for p in tasks.iterdir()] if tasks.is_dir() else []


def cleanup_workdir(workdir: Path, bridge: str | None) -> None:
    """Undo everything a runtime in ``workdir`` left: shims, mounts, bridge, CNI caches.

    After a clean shutdown only the directory and the bridge are left; the rest matters when
    containerd or the test process was killed.
    """
    socket = workdir / "run" / "containerd.sock"
    for pid in _shim_pids(socket):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for task_id in _task_ids(workdir):
        # containerd 1.6 puts shim sockets in /run/containerd/s/sha256(<address>/<ns>/<id>)
        # whatever its state dir, and libcni caches results in /var/lib/cni/results.
        key = hashlib.sha256(f"{socket}/{IMAGE_NAMESPACE}/{task_id}".encode()).hexdigest()
        with contextlib.suppress(OSError):
            (SHIM_SOCKET_DIR / key).unlink()
        for cache in CNI_RESULTS_DIR.glob(f"*-{task_id}-*"):
            with contextlib.suppress(OSError):
                cache.unlink()
    unmount_below(workdir)
    if bridge:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
    shutil.rmtree(workdir, ignore_errors=True)
    if workdir.exists():
        # A mount we could not detach keeps files busy: say so instead of hiding it.
        print(f"nodeguard tests: could not remove {workdir} completely", file=sys.stderr)


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    return Path(f"/proc/{pid}").exists()


def cleanup_stale(tmp: Path | None = None) -> list[Path]:
    """Remove what earlier test sessions that died (SIGKILL, power loss) left behind.

    Only directories of ours (``ngcri-*``) whose owning test process is gone are touched.
    Their pods' cgroups are found through the runtime's own records and killed/removed.
    """
    cleaned = []
    base = tmp if tmp is not None else Path(tempfile.gettempdir())
    for workdir in sorted(base.glob(f"{TMP_PREFIX}*")):
        if not workdir.is_dir() or _alive(workdir / "owner.pid"):
            continue
        pid = _our_containerd(workdir)
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for uid in _recorded_pod_uids(workdir):
            with contextlib.suppress(OSError):
                remove_pod_cgroups(uid)
        bridge_file = workdir / "bridge"
        bridge = bridge_file.read_text().strip() if bridge_file.exists() else None
        cleanup_workdir(workdir, bridge)
        cleaned.append(workdir)
    if cleaned:
        remove_empty_kubepods()
    return cleaned


def _our_containerd(workdir: Path) -> int | None:
    """The pid in workdir/containerd.pid if it still is that containerd (pids get reused)."""
    try:
        pid = int((workdir / "containerd.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(workdir / "config.toml").encode() in cmdline else None


def _recorded_pod_uids(workdir: Path) -> list[str]:
    path = workdir / "pod-uids"
    if not path.exists():
        return []
    return [u for u in path.read_text().split() if u]


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix=TMP_PREFIX))


# --------------------------------------------------------------------------------------
# the kubelet's part


@dataclass
class PodHandle:
    """A pod this KubeletSim created."""

    id: str
    """CRI sandbox id."""
    uid: str
    namespace: str
    name: str
    qos: QosClass
    config: api_pb2.PodSandboxConfig
    containers: dict[str, str] = field(default_factory=dict)
    """container name -> container id"""

    @property
    def cgroup_parent(self) -> str:
        return self.config.linux.cgroup_parent


class KubeletSim:
    """Creates and removes pods through CRI the way the kubelet does (cgroupfs driver)."""

    def __init__(self, runtime: ContainerdRuntime, image: str = IMAGE) -> None:
        self.runtime = runtime
        self.cri = runtime.cri
        self.image = image
        self.pods: dict[str, PodHandle] = {}

    def run_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        qos: QosClass = "besteffort",
    ) -> PodHandle:
        """RunPodSandbox with ``cgroup_parent=/kubepods/<qos>/pod<uid>`` and a new uid."""
        uid = str(uuid.uuid4())
        with (self.runtime.workdir / "pod-uids").open("a") as f:
            f.write(uid + "\n")
        all_labels = dict(labels or {})
        # The kubelet adds these to every sandbox's CRI labels.
        all_labels.update(
            {
                "io.kubernetes.pod.name": name,
                "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid,
            }
        )
        log_dir = self.runtime.pod_log_root / f"{namespace}_{name}_{uid}"
        log_dir.mkdir(parents=True)
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace=namespace),
            hostname=name,
            log_directory=str(log_dir),
            labels=all_labels,
            annotations=dict(annotations or {}),
            linux=api_pb2.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent(uid, qos, "cgroupfs"),
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=_namespaces()
                ),
            ),
        )
        t0 = time.perf_counter()
        pod_id = self.cri.run_pod_sandbox(config)
        self.runtime.timings.add("RunPodSandbox", time.perf_counter() - t0)
        pod = PodHandle(pod_id, uid, namespace, name, qos, config)
        self.pods[pod_id] = pod
        return pod

    def start_container(
        self,
        pod: PodHandle,
        name: str,
        command: list[str],
        image: str | None = None,
        seccomp_profile: Path | None = None,
    ) -> str:
        """CreateContainer + StartContainer; returns the container id. ``seccomp_profile``:
        a Localhost profile (the kubelet sends the absolute path, as here)."""
        labels = {
            "io.kubernetes.container.name": name,
            "io.kubernetes.pod.name": pod.name,
            "io.kubernetes.pod.namespace": pod.namespace,
            "io.kubernetes.pod.uid": pod.uid,
        }
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=image or self.image),
            command=command,
            labels=labels,
            log_path=f"{name}/0.log",
            linux=api_pb2.LinuxContainerConfig(
                security_context=api_pb2.LinuxContainerSecurityContext(
                    namespace_options=_namespaces(),
                    seccomp=(
                        api_pb2.SecurityProfile(
                            profile_type=api_pb2.SecurityProfile.Localhost,
                            localhost_ref=str(seccomp_profile),
                        )
                        if seccomp_profile is not None
                        else None
                    ),
                )
            ),
        )
        t0 = time.perf_counter()
        container_id = self.cri.create_container(pod.id, config, pod.config)
        self.cri.start_container(container_id)
        self.runtime.timings.add("CreateContainer+StartContainer", time.perf_counter() - t0)
        pod.containers[name] = container_id
        return container_id

    def container_pid(self, container_id: str) -> int:
        status = self.cri.container_status(container_id)
        if status.pid is None:
            raise AssertionError(f"container {container_id} has no pid (state {status.state})")
        return status.pid

    def remove_pod(self, pod: PodHandle) -> None:
        """StopPodSandbox + RemovePodSandbox, then the pod cgroup, as the kubelet does."""
        t0 = time.perf_counter()
        self.cri.stop_pod_sandbox(pod.id)
        self.cri.remove_pod_sandbox(pod.id)
        remove_pod_cgroups(pod.uid)
        self.runtime.timings.add("remove pod (Stop+Remove+cgroup)", time.perf_counter() - t0)
        self.pods.pop(pod.id, None)

    def remove_all(self) -> None:
        for pod in list(self.pods.values()):
            with contextlib.suppress(CRIError, OSError):
                self.remove_pod(pod)
        self.pods.clear()


def _namespaces() -> api_pb2.NamespaceOption:
    # What the kubelet sends for an ordinary pod: shared network and IPC, private PIDs.
    return api_pb2.NamespaceOption(network=api_pb2.POD, pid=api_pb2.CONTAINER, ipc=api_pb2.POD)
