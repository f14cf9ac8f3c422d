"""Where the kubelet and the container runtime put a pod's cgroups, and back.

Pure functions over paths relative to the cgroup v2 mount (find the mount with
:func:`nodeguard.identity.cgroupfs.find_cgroup2_mount`; it is /sys/fs/cgroup on pure v2
hosts and /sys/fs/cgroup/unified on hybrid ones). The kubelet names a pod's cgroup after
the pod uid and its QoS class, in one of two layouts depending on its cgroup driver:

cgroupfs driver (the runtime's ``SystemdCgroup = false``)::

    kubepods/pod<uid>                       Guaranteed
    kubepods/burstable/pod<uid>             Burstable
    kubepods/besteffort/pod<uid>            BestEffort
    .../pod<uid>/<container-id>             each container (and the sandbox), containerd

systemd driver (uid with '-' replaced by '_', systemd's escaping)::

    kubepods.slice/kubepods-pod<uid_>.slice
    kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice
    kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice
    .../cri-containerd-<container-id>.scope   (crio-<id>.scope, docker-<id>.scope)

The QoS class is not part of CRI, so :func:`find_pod_cgroup` probes the candidates.
:func:`parse_cgroup_path` is the reverse, for the agent that watches the cgroup tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

CgroupDriver = Literal["cgroupfs", "systemd"]
QosClass = Literal["guaranteed", "burstable", "besteffort"]

DRIVERS: tuple[CgroupDriver, ...] = ("cgroupfs", "systemd")
# Probe order: most pods on a node running agents are BestEffort or Burstable.
QOS_CLASSES: tuple[QosClass, ...] = ("besteffort", "burstable", "guaranteed")

KUBEPODS = "kubepods"
# Kubernetes uids are UUIDs; static (mirror) pods use a 32-hex-digit hash. Both fit.
_UID = r"[0-9a-f](?:[0-9a-f-]{0,62}[0-9a-f])?"
_UID_RE = re.compile(_UID)
_CONTAINER_ID_RE = re.compile(r"[0-9a-f]{64}")
# Container ids the builders accept: never a path separator or a dot-name.
_ID_ARG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Runtimes' systemd scope prefixes (CRI-O's "crio-conmon-<id>.scope" is not a container).
_SYSTEMD_SCOPE_RE = re.compile(r"(?:cri-containerd|crio|docker)-([0-9a-f]{64})\.scope")
_CGROUPFS_CONTAINER_RE = re.compile(r"(?:crio-)?([0-9a-f]{64})")
_CGROUPFS_POD_RE = re.compile(rf"pod({_UID})")
_SYSTEMD_POD_RE = re.compile(
    r"(?P<prefix>(?:[a-z0-9_]+-)*)kubepods(?:-(?P<qos>burstable|besteffort))?"
    r"-pod(?P<uid>[0-9a-f_]+)\.slice"
)


@dataclass(frozen=True)
class CgroupRef:
    """What a cgroup path under kubepods says about the pod (and container) it belongs to."""

    driver: CgroupDriver
    qos: QosClass
    pod_uid: str
    """The Kubernetes pod uid, with dashes (as CRI reports it)."""
    container_id: str | None
    """Runtime container id for a container's cgroup (or below it), None for the pod's own."""
    pod_path: PurePosixPath
    """The pod's cgroup, relative to the v2 mount."""


def valid_pod_uid(pod_uid: str) -> bool:
    return _UID_RE.fullmatch(pod_uid) is not None


def _check_uid(pod_uid: str) -> None:
    if not valid_pod_uid(pod_uid):
        raise ValueError(f"not a Kubernetes pod uid: {pod_uid!r}")


def systemd_escape_uid(pod_uid: str) -> str:
    """The kubelet's systemd driver writes uid dashes as underscores ('-' nests slices)."""
    return pod_uid.replace("-", "_")


def cgroup_parent(pod_uid: str, qos: QosClass, driver: CgroupDriver = "cgroupfs") -> str:
    """``LinuxPodSandboxConfig.cgroup_parent`` as the kubelet sends it in RunPodSandbox.

    cgroupfs: ``/kubepods/besteffort/pod<uid>``; systemd: the pod slice's name,
    ``kubepods-besteffort-pod<uid_>.slice`` (the runtime expands it to the full path).
    """
    _check_uid(pod_uid)
    if driver == "cgroupfs":
        return "/" + str(pod_cgroup_path(pod_uid, qos, driver))
    return pod_cgroup_path(pod_uid, qos, driver).name


def pod_cgroup_path(pod_uid: str, qos: QosClass, driver: CgroupDriver) -> PurePosixPath:
    """The pod's cgroup relative to the v2 mount (no leading slash)."""
    _check_uid(pod_uid)
    if driver == "cgroupfs":
        if qos == "guaranteed":
            return PurePosixPath(KUBEPODS, f"pod{pod_uid}")
        return PurePosixPath(KUBEPODS, qos, f"pod{pod_uid}")
    uid_ = systemd_escape_uid(pod_uid)
    if qos == "guaranteed":
        return PurePosixPath(f"{KUBEPODS}.slice", f"{KUBEPODS}-pod{uid_}.slice")
    return PurePosixPath(
        f"{KUBEPODS}.slice", f"{KUBEPODS}-{qos}.slice", f"{KUBEPODS}-{qos}-pod{uid_}.slice"
    )


def container_cgroup_path(
    pod_uid: str, qos: QosClass, driver: CgroupDriver, container_id: str
) -> PurePosixPath:
    """A containerd container's cgroup (relative to the v2 mount): ``<pod>/<id>`` with
    cgroupfs, ``<pod>/cri-containerd-<id>.scope`` with systemd."""
    if _ID_ARG_RE.fullmatch(container_id) is None:
        raise ValueError(f"not a container id: {container_id!r}")
    leaf = container_id if driver == "cgroupfs" else f"cri-containerd-{container_id}.scope"
    return pod_cgroup_path(pod_uid, qos, driver) / leaf


def pod_cgroup_candidates(pod_uid: str) -> list[tuple[CgroupDriver, QosClass, PurePosixPath]]:
    """Every place the kubelet may have put this pod's cgroup, in probe order."""
    _check_uid(pod_uid)
    return [(d, q, pod_cgroup_path(pod_uid, q, d)) for d in DRIVERS for q in QOS_CLASSES]


def find_pod_cgroup(mount: Path, pod_uid: str) -> Path | None:
    """The pod's cgroup directory under the v2 mount, or None when there is none (yet).

    Probes both drivers' layouts and the three QoS classes (CRI does not say which).
    An invalid uid finds nothing.
    """
    if not valid_pod_uid(pod_uid):
        return None
    for _driver, _qos, rel in pod_cgroup_candidates(pod_uid):
        path = mount / rel
        if path.is_dir():
            return path
    return None


def find_container_cgroup(mount: Path, pod_uid: str, container_id: str) -> Path | None:
    """A container's cgroup directory (the sandbox id finds the pause container's), or None.

    Looks below the pod's cgroup for the leaf names containerd, CRI-O and Docker use with
    either driver.
    """
    pod_dir = find_pod_cgroup(mount, pod_uid)
    if pod_dir is None or _ID_ARG_RE.fullmatch(container_id) is None:
        return None
    for leaf in (
        container_id,
        f"cri-containerd-{container_id}.scope",
        f"crio-{container_id}.scope",
        f"crio-{container_id}",
        f"docker-{container_id}.scope",
    ):
        path = pod_dir / leaf
        if path.is_dir():
            return path
    return None


def parse_cgroup_path(path: str | PurePosixPath) -> CgroupRef | None:
    """Recognise a pod (or container) cgroup from its path relative to the v2 mount.

    Accepts what /proc/<pid>/cgroup shows ("/kubepods/..."), a relative path, or one with a
    prefix before ``kubepods`` (kubelet ``--cgroup-root``, e.g. kind's ``kubelet.slice``).
    Paths below a container's cgroup belong to that container. Returns None for anything
    that is not laid out as the kubelet and a CRI runtime do.
    """
    parts = [p for p in PurePosixPath(path).parts if p != "/"]
    ref = _parse_cgroupfs(parts)
    return ref if ref is not None else _parse_systemd(parts)


def _parse_cgroupfs(parts: list[str]) -> CgroupRef | None:
    if KUBEPODS not in parts:
        return None
    i = parts.index(KUBEPODS) + 1
    qos: QosClass = "guaranteed"
    if i < len(parts) and parts[i] in ("burstable", "besteffort"):
        qos = "burstable" if parts[i] == "burstable" else "besteffort"
        i += 1
    if i >= len(parts):
        return None
    m = _CGROUPFS_POD_RE.fullmatch(parts[i])
    if m is None:
        return None
    pod_path = PurePosixPath(*parts[: i + 1])
    rest = parts[i + 1 :]
    container_id = None
    if rest:
        cm = _CGROUPFS_CONTAINER_RE.fullmatch(rest[0])
        if cm is None:
            return None
        container_id = cm.group(1)
    return CgroupRef("cgroupfs", qos, m.group(1), container_id, pod_path)


def _parse_systemd(parts: list[str]) -> CgroupRef | None:
    for i, part in enumerate(parts):
        m = _SYSTEMD_POD_RE.fullmatch(part)
        if m is None:
            continue
        prefix, qos_name, uid_ = m.group("prefix"), m.group("qos"), m.group("uid")
        uid = uid_.replace("_", "-")
        if not valid_pod_uid(uid):
            return None
        # The slices above must be the ones systemd nests it in.
        expected = [f"{prefix}{KUBEPODS}.slice"]
        if qos_name:
            expected.append(f"{prefix}{KUBEPODS}-{qos_name}.slice")
        if i < len(expected) or parts[i - len(expected) : i] != expected:
            return None
        qos: QosClass = "guaranteed"
        if qos_name == "burstable":
            qos = "burstable"
        elif qos_name == "besteffort":
            qos = "besteffort"
        rest = parts[i + 1 :]
        container_id = None
        if rest:
            sm = _SYSTEMD_SCOPE_RE.fullmatch(rest[0])
            if sm is None:
                return None
            container_id = sm.group(1)
        return CgroupRef("systemd", qos, uid, container_id, PurePosixPath(*parts[: i + 1]))
    return None
