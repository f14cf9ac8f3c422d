"""Checks before anything is loaded: each failure is one clear error with its fix."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from nodeguard import log
from nodeguard.bpf.guard import import_bcc
from nodeguard.errors import KernelFeatureError, PrivilegeError
from nodeguard.identity.cgroupfs import require_cgroup2_mount

TRACEFS = Path("/sys/kernel/tracing")

_log = log.get("nodeguard.runner.preflight")


def require_root() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(
            "nodeguard must run as root to load eBPF programs and create cgroups",
            fix="run it with sudo (it needs CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
        )


def require_headers(release: str | None = None) -> Path:
    build = Path(f"/lib/modules/{release or platform.release()}/build")
    if not (build / "include").is_dir():
        raise KernelFeatureError(
            f"kernel headers not found at {build} (BCC compiles the guard at start)",
            fix="run scripts/setup.sh: it installs linux-headers for this kernel, or links "
            "the distribution's headers when none match",
        )
    return build


def ensure_tracefs() -> None:
    """The exec tracepoint needs tracefs; mount it when missing (as setup.sh does)."""
    if (TRACEFS / "events").is_dir():
        return
    _log.warning("tracefs_mounting", path=str(TRACEFS))
    result = subprocess.run(
        ["mount", "-t", "tracefs", "tracefs", str(TRACEFS)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not (TRACEFS / "events").is_dir():
        raise KernelFeatureError(
            f"tracefs is not mounted at {TRACEFS} and mounting it failed: "
            f"{result.stderr.strip() or 'unknown error'}",
            fix=f"mount -t tracefs tracefs {TRACEFS}",
        )


def preflight() -> Path:
    """Run every check `nodeguard run` needs; returns the cgroup v2 mount."""
    require_root()
    mount = require_cgroup2_mount()
    import_bcc()
    require_headers()
    ensure_tracefs()
    return mount
