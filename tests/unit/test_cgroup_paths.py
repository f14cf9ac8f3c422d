"""Pod cgroup layouts of the kubelet's two cgroup drivers, both ways."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from nodeguard.identity.cgroup_paths import (
    DRIVERS,
    QOS_CLASSES,
    CgroupDriver,
    CgroupRef,
    QosClass,
    cgroup_parent,
    container_cgroup_path,
    find_container_cgroup,
    find_pod_cgroup,
    parse_cgroup_path,
    pod_cgroup_candidates,
    pod_cgroup_path,
    systemd_escape_uid,
    valid_pod_uid,
)

UID = "3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b"
UID_ = "3f2a1b4c_5d6e_4f70_8a9b_0c1d2e3f4a5b"
STATIC_UID = "0123456789abcdef0123456789abcdef"  # static (mirror) pods: a 32-hex hash
CID = "4f8e" + "a" * 60
SANDBOX = "b" * 64

# (driver, qos) -> (pod cgroup, container cgroup), relative to the v2 mount.
LAYOUTS: dict[tuple[CgroupDriver, QosClass], tuple[str, str]] = {
    ("cgroupfs", "guaranteed"): (f"kubepods/pod{UID}", f"kubepods/pod{UID}/{CID}"),
    ("cgroupfs", "burstable"): (
        f"kubepods/burstable/pod{UID}",
        f"kubepods/burstable/pod{UID}/{CID}",
    ),
    ("cgroupfs", "besteffort"): (
        f"kubepods/besteffort/pod{UID}",
        f"kubepods/besteffort/pod{UID}/{CID}",
    ),
    ("systemd", "guaranteed"): (
        f"kubepods.slice/kubepods-pod{UID_}.slice",
        f"kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
    ),
    ("systemd", "burstable"): (
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
        f"/cri-containerd-{CID}.scope",
    ),
    ("systemd", "besteffort"): (
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice",
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        f"/cri-containerd-{CID}.scope",
    ),
}
CASES = sorted(LAYOUTS)


@pytest.mark.parametrize(("driver", "qos"), CASES)
def test_pod_and_container_paths(driver: CgroupDriver, qos: QosClass) -> None:
    pod, container = LAYOUTS[driver, qos]
    assert pod_cgroup_path(UID, qos, driver) == PurePosixPath(pod)
    assert container_cgroup_path(UID, qos, driver, CID) == PurePosixPath(container)
    assert not pod_cgroup_path(UID, qos, driver).is_absolute()  # safe to join to the mount


@pytest.mark.parametrize(
    ("driver", "qos", "expected"),
    [
        ("cgroupfs", "besteffort", f"/kubepods/besteffort/pod{UID}"),
        ("cgroupfs", "burstable", f"/kubepods/burstable/pod{UID}"),
        ("cgroupfs", "guaranteed", f"/kubepods/pod{UID}"),
        ("systemd", "besteffort", f"kubepods-besteffort-pod{UID_}.slice"),
        ("systemd", "burstable", f"kubepods-burstable-pod{UID_}.slice"),
        ("systemd", "guaranteed", f"kubepods-pod{UID_}.slice"),
    ],
)
def test_cgroup_parent_as_the_kubelet_sends_it(
    driver: CgroupDriver, qos: QosClass, expected: str
) -> None:
    assert cgroup_parent(UID, qos, driver) == expected


def test_systemd_escape() -> None:
    assert systemd_escape_uid(UID) == UID_
    assert systemd_escape_uid(STATIC_UID) == STATIC_UID


@pytest.mark.parametrize(("driver", "qos"), CASES)
def test_parse_round_trip(driver: CgroupDriver, qos: QosClass) -> None:
    pod, container = LAYOUTS[driver, qos]
    pod_path = PurePosixPath(pod)
    assert parse_cgroup_path(pod) == CgroupRef(driver, qos, UID, None, pod_path)
    assert parse_cgroup_path(container) == CgroupRef(driver, qos, UID, CID, pod_path)
    # As /proc/<pid>/cgroup shows it (leading slash), and as a PurePosixPath.
    assert parse_cgroup_path("/" + container) == CgroupRef(driver, qos, UID, CID, pod_path)
    assert parse_cgroup_path(PurePosixPath(container)) == CgroupRef(driver, qos, UID, CID, pod_path)


@pytest.mark.parametrize(("driver", "qos"), CASES)
def test_cgroups_below_a_container_belong_to_it(driver: CgroupDriver, qos: QosClass) -> None:
    _pod, container = LAYOUTS[driver, qos]
    ref = parse_cgroup_path(f"/{container}/nested/deeper")
    assert ref is not None
    assert (ref.pod_uid, ref.container_id) == (UID, CID)


def test_static_pod_uid() -> None:
    path = container_cgroup_path(STATIC_UID, "guaranteed", "systemd", CID)
    assert parse_cgroup_path(path) == CgroupRef(
        "systemd", "guaranteed", STATIC_UID, CID, path.parent
    )
    assert parse_cgroup_path(f"/kubepods/pod{STATIC_UID}") is not None


@pytest.mark.parametrize(
    ("path", "driver", "qos", "container"),
    [
        # CRI-O and Docker scopes under the systemd driver
        (
            f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope",
            "systemd",
            "guaranteed",
            CID,
        ),
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
            f"/docker-{CID}.scope",
            "systemd",
            "burstable",
            CID,
        ),
        # CRI-O with the cgroupfs driver
        (f"/kubepods/besteffort/pod{UID}/crio-{CID}", "cgroupfs", "besteffort", CID),
        # the sandbox (pause) container is a container cgroup too
        (f"/kubepods/besteffort/pod{UID}/{SANDBOX}", "cgroupfs", "besteffort", SANDBOX),
        # kubelet --cgroup-root: kind nodes nest kubepods under kubelet(.slice)
        (
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice"
            f"/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
            "systemd",
            "besteffort",
            CID,
        ),
        (f"/kubelet/kubepods/burstable/pod{UID}/{CID}", "cgroupfs", "burstable", CID),
    ],
)
def test_parse_other_runtimes_and_roots(
    path: str, driver: CgroupDriver, qos: QosClass, container: str
) -> None:
    ref = parse_cgroup_path(path)
    assert ref is not None
    assert (ref.driver, ref.qos, ref.pod_uid, ref.container_id) == (driver, qos, UID, container)
    assert path.startswith("/" + str(ref.pod_path))


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/system.slice/containerd.service",
        "/user.slice/user-0.slice/session-1.scope",
        "/kubepods",
        "/kubepods/besteffort",
        "/kubepods/burstable",
        "/kubepods.slice",
        "/kubepods.slice/kubepods-besteffort.slice",
        "/kubepods/besteffort/notapod",
        f"/kubepods/guaranteed/pod{UID}",  # Guaranteed pods have no QoS level
        f"/kubepods/besteffort/pod{UID.upper()}",
        f"/kubepods/besteffort/pod{UID}/not-a-container",
        f"/kubepods/besteffort/pod{UID}/{CID[:12]}",  # short ids are not cgroup names
        f"/kubepods/besteffort/pod{UID}/crio-conmon-{CID}",
        f"/kubepods/besteffort/pod../../etc/{CID}",
        # systemd: wrong parents, conmon scopes, unknown leaves
        f"/kubepods-besteffort-pod{UID_}.slice",
        f"/kubepods.slice/kubepods-besteffort-pod{UID_}.slice",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID_}.slice",
        f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope",
        f"/kubepods.slice/kubepods-pod{UID_}.slice/{CID}",
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}",
        "/kubepods.slice/kubepods-pod_.slice",
    ],
)
def test_parse_rejects(path: str) -> None:
    assert parse_cgroup_path(path) is None


@pytest.mark.parametrize(
    "uid", ["", "../../etc", "a/b", "x" * 8, UID.upper(), "-" + UID, UID + "-", "a" * 65]
)
def test_invalid_uids(uid: str, tmp_path: Path) -> None:
    assert not valid_pod_uid(uid)
    with pytest.raises(ValueError, match="pod uid"):
        pod_cgroup_path(uid, "besteffort", "cgroupfs")
    with pytest.raises(ValueError, match="pod uid"):
        cgroup_parent(uid, "besteffort")
    assert find_pod_cgroup(tmp_path, uid) is None


@pytest.mark.parametrize("container_id", ["", "../x", "a/b", ".hidden"])
def test_invalid_container_ids(container_id: str) -> None:
    with pytest.raises(ValueError, match="container id"):
        container_cgroup_path(UID, "besteffort", "cgroupfs", container_id)


def test_candidates_cover_every_layout() -> None:
    found = {(d, q): str(p) for d, q, p in pod_cgroup_candidates(UID)}
    assert found == {key: pod for key, (pod, _container) in LAYOUTS.items()}
    assert len(pod_cgroup_candidates(UID)) == len(DRIVERS) * len(QOS_CLASSES)


@pytest.mark.parametrize(("driver", "qos"), CASES)
def test_find_pod_cgroup(tmp_path: Path, driver: CgroupDriver, qos: QosClass) -> None:
    pod, container = LAYOUTS[driver, qos]
    (tmp_path / container).mkdir(parents=True)
    assert find_pod_cgroup(tmp_path, UID) == tmp_path / pod
    assert find_pod_cgroup(tmp_path, "0" + UID[1:]) is None  # another pod


@pytest.mark.parametrize(("driver", "qos"), CASES)
def test_find_container_cgroup(tmp_path: Path, driver: CgroupDriver, qos: QosClass) -> None:
    _pod, container = LAYOUTS[driver, qos]
    (tmp_path / container).mkdir(parents=True)
    assert find_container_cgroup(tmp_path, UID, CID) == tmp_path / container
    assert find_container_cgroup(tmp_path, UID, SANDBOX) is None
    assert find_container_cgroup(tmp_path, UID, "../..") is None
    assert find_container_cgroup(tmp_path, STATIC_UID, CID) is None


def test_find_pod_cgroup_absent_or_not_a_directory(tmp_path: Path) -> None:
    assert find_pod_cgroup(tmp_path, UID) is None
    (tmp_path / "kubepods" / "besteffort").mkdir(parents=True)
    (tmp_path / "kubepods" / "besteffort" / f"pod{UID}").write_text("")
    assert find_pod_cgroup(tmp_path, UID) is None


def test_find_pod_cgroup_hybrid_mount(tmp_path: Path) -> None:
    # Hybrid hosts: the v2 tree is mounted at /sys/fs/cgroup/unified and runc puts a
    # cgroupfs-driver pod at the same relative path there as in the v1 hierarchies.
    unified = tmp_path / "sys/fs/cgroup/unified"
    (unified / f"kubepods/besteffort/pod{UID}/{CID}").mkdir(parents=True)
    (tmp_path / f"sys/fs/cgroup/memory/kubepods/besteffort/pod{UID}").mkdir(parents=True)
    assert find_pod_cgroup(unified, UID) == unified / f"kubepods/besteffort/pod{UID}"
