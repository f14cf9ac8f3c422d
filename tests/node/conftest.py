"""Fixtures for node tests: one private containerd per test session (CRI + runc + CNI) and a
kubelet stand-in per test that removes the pods it created, also when the test fails.

Node tests are marked ``node`` (skipped without root/BPF unless NODEGUARD_REQUIRE_BPF=1,
see tests/conftest.py). A missing containerd/runc/CNI/umoci/busybox is a skip with the fix,
or a failure under NODEGUARD_REQUIRE_BPF=1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.identity.cgroupfs import find_cgroup2_mount
from nodeguard.lab.containerd import (
    ContainerdRuntime,
    KubeletSim,
    RuntimeSetupError,
    Timings,
    check_tools,
    cleanup_stale,
    find_cni_bin_dir,
    new_workdir,
)

REQUIRE = os.environ.get("NODEGUARD_REQUIRE_BPF") == "1"
_timings: list[Timings] = []


@pytest.fixture(scope="session")
def runtime() -> Iterator[ContainerdRuntime]:
    """A private containerd with its CRI socket at ``runtime.endpoint``; torn down at the end."""
    try:
        check_tools()
        find_cni_bin_dir()
    except RuntimeSetupError as err:
        if REQUIRE:
            pytest.fail(f"NODEGUARD_REQUIRE_BPF=1 but the node runtime is missing: {err}")
        pytest.skip(f"node runtime: {err}")
    cleaned = cleanup_stale()
    if cleaned:
        print(f"removed leftovers of earlier runs: {', '.join(map(str, cleaned))}", file=sys.stderr)
    rt = ContainerdRuntime(new_workdir())
    _timings.append(rt.timings)
    rt.start()
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def kubelet(runtime: ContainerdRuntime) -> Iterator[KubeletSim]:
    """Creates pods through CRI like the kubelet; removes whatever the test left."""
    sim = KubeletSim(runtime)
    try:
        yield sim
    finally:
        sim.remove_all()


@pytest.fixture(scope="session")
def cgroup2_mount() -> Path:
    mount = find_cgroup2_mount()
    assert mount is not None, "cgroup v2 is not mounted"
    return mount


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for timings in _timings:
        if timings.steps:
            terminalreporter.write_sep("-", "private containerd: timings")
            terminalreporter.write_line(timings.render())
