"""The private cgroup of one `nodeguard run`, and the sweep of ones left by a killed run."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

from nodeguard import log
from nodeguard.errors import CgroupError
from nodeguard.identity.cgroupfs import NODEGUARD_PARENT, create_cgroup, remove_cgroup

RUN_PREFIX = "run-"
_RUN_RE = re.compile(r"^run-(\d+)-[0-9a-f]{8}$")

_log = log.get("nodeguard.runner.cgroup")


def run_parent(mount: Path) -> Path:
    return mount / NODEGUARD_PARENT


def create_run_cgroup(mount: Path) -> Path:
    parent = run_parent(mount)
    parent.mkdir(exist_ok=True)
    return create_cgroup(parent / f"{RUN_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(mount: Path) -> list[Path]:
    """Remove run cgroups whose nodeguard process is gone (it was SIGKILLed).

    Removing the cgroup kills what was left in it and releases the programs attached to it.
    """
    parent = run_parent(mount)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for child in parent.iterdir():
        match = _RUN_RE.match(child.name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        try:
            remove_cgroup(child)
            removed.append(child)
            _log.warning("stale_run_cgroup_removed", cgroup=str(child))
        except CgroupError as err:
            _log.warning("stale_run_cgroup_kept", cgroup=str(child), error=str(err))
    return removed


def remove_run_cgroup(mount: Path, path: Path) -> None:
    remove_cgroup(path)
    parent = run_parent(mount)
    with contextlib.suppress(OSError):  # busy: another run is using it
        parent.rmdir()
