"""Shared pytest setup.

Privilege split: tests marked ``bpf`` or ``node`` need root, BCC and a BPF-capable kernel.
Without them they are skipped, unless NODEGUARD_REQUIRE_BPF=1 (CI), which turns every
such skip into a failure: a green CI always means the kernel paths ran.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import pytest

REQUIRE_BPF = os.environ.get("NODEGUARD_REQUIRE_BPF") == "1"


@functools.cache
def kernel_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        import bcc  # noqa: F401, PLC0415
    except ImportError:
        return "BCC (python3-bpfcc) is not importable"
    if not Path(f"/lib/modules/{platform.release()}/build/include").is_dir():
        return "kernel headers missing (run scripts/setup.sh)"
    if not Path("/sys/kernel/tracing/events").is_dir():
        return "tracefs not mounted (run scripts/setup.sh)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if not (item.get_closest_marker("bpf") or item.get_closest_marker("node")):
        return
    reason = kernel_unavailable_reason()
    if reason is None:
        return
    if REQUIRE_BPF:
        pytest.fail(f"NODEGUARD_REQUIRE_BPF=1 but this kernel test cannot run: {reason}")
    pytest.skip(f"kernel test: {reason}")
