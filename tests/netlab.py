"""Test-side helpers around nodeguard.lab.netns: the probe command and cgroup runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nodeguard.lab.netns import SYSTEM_PYTHON, Host, NetLab

PROBE = Path(__file__).with_name("probe.py")

__all__ = [
    "PROBE",
    "SYSTEM_PYTHON",
    "Host",
    "NetLab",
    "probe_cmd",
    "probe_results",
    "run_in_cgroup",
]


def probe_cmd(lab: NetLab, *actions: str) -> list[str]:
    """argv that runs probe.py inside the lab's client namespace with the given actions."""
    return [SYSTEM_PYTHON, str(PROBE), "--netns", lab.client_netns_path, *actions]


def run_in_cgroup(
    cgroup: Path, argv: list[str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run argv with its process placed in ``cgroup`` before exec (as nodeguard run does)."""
    procs = cgroup / "cgroup.procs"

    def join() -> None:
        with open(procs, "w") as f:
            f.write("0")

    return subprocess.run(
        argv,
        preexec_fn=join,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


def probe_results(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    out = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    if not out and proc.returncode != 0:
        sys.stderr.write(proc.stderr)
    return out
