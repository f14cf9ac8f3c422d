"""cgroup v2 discovery and the cgroups nodeguard creates for itself.

The v2 hierarchy is found in /proc/self/mountinfo (hybrid hosts mount it at
/sys/fs/cgroup/unified, pure-v2 hosts at /sys/fs/cgroup): never hard-coded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

from nodeguard.errors import CgroupError

MOUNTINFO = Path("/proc/self/mountinfo")
# Every cgroup nodeguard creates lives below this directory of the v2 hierarchy.
NODEGUARD_PARENT = "nodeguard"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def find_cgroup2_mount(mountinfo: Path = MOUNTINFO) -> Path | None:
    """Mount point of the cgroup v2 hierarchy, or None when it is not mounted."""
    try:
        text = mountinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split(" ", 1)[0] if right else ""
        if fstype == "cgroup2":
            return Path(_unescape(left.split(" ")[4]))
    return None


def require_cgroup2_mount(mountinfo: Path = MOUNTINFO) -> Path:
    mount = find_cgroup2_mount(mountinfo)
    if mount is None:
        raise CgroupError(
            "cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mountinfo)",
            fix="mount it: mount -t cgroup2 none /sys/fs/cgroup/unified "
            "(or boot with systemd.unified_cgroup_hierarchy=1)",
        )
    return mount


def cgroup_id(path: Path) -> int:
    """The cgroup id the kernel reports (bpf_get_current_cgroup_id) = directory inode."""
    return os.stat(path).st_ino


def own_cgroup_path(mount: Path, pid: int | str = "self") -> Path:
    """v2 cgroup directory of a process."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hier, _, rest = line.partition(":")
        if hier == "0":
            return mount / rest.partition(":")[2].lstrip("/")
    raise CgroupError(f"process {pid} has no cgroup v2 membership")


def cgroup_level(mount: Path, path: Path) -> int:
    """Depth below the root cgroup (root = 0), as bpf_get_current_ancestor_cgroup_id counts."""
    rel = path.relative_to(mount)
    return len(rel.parts)


def assert_safe_target(mount: Path, path: Path) -> None:
    """Refuse to enforce on the root cgroup or on the cgroup this process lives in.

    Attaching there could cut off or kill the machine's own shell. Every attach goes
    through this check.
    """
    real = path.resolve()
    if real == mount.resolve():
        raise CgroupError(f"refusing to attach to the root cgroup {real}")
    mine = own_cgroup_path(mount).resolve()
    if real == mine or mine.is_relative_to(real):
        raise CgroupError(
            f"refusing to attach to {real}: this process (pid {os.getpid()}) lives in it",
        )


def create_cgroup(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=False)
    except FileExistsError as err:
        raise CgroupError(f"cgroup {path} already exists") from err
    except OSError as err:
        raise CgroupError(
            f"cannot create cgroup {path}: {err.strerror}",
            fix="run as root on a host with a writable cgroup v2 hierarchy",
        ) from err
    return path


def kill_all(path: Path, timeout: float = 5.0) -> None:
    """SIGKILL every process in the cgroup (cgroup.kill) and wait until it is empty."""
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            kill_file.write_text("1")
    else:  # kernels < 5.14
        for pid in _procs(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    deadline = time.monotonic() + timeout
    while _procs(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def _procs(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def remove_cgroup(path: Path, timeout: float = 5.0) -> None:
    """Kill what is left inside, then rmdir (retrying while the kernel frees it)."""
    remove_tree(path, timeout, kill=True)


def remove_tree(path: Path, timeout: float = 5.0, *, kill: bool = True) -> None:
    """Remove a cgroup directory and its sub-cgroups, deepest first; with ``kill``, every
    process still inside is SIGKILLed first (a v1 hierarchy without cgroup.kill may be
    passed with kill=False)."""
    if not path.exists():
        return
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        remove_tree(child, timeout, kill=kill)
    if kill:
        kill_all(path, timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {err.strerror}") from err
            time.sleep(0.02)
