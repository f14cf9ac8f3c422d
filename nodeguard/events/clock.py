"""Kernel CLOCK_MONOTONIC timestamps to wall-clock milliseconds.

BPF stamps records with ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC). The offset between the
two clocks is captured once (and again on :meth:`MonotonicClock.resync`, e.g. after an
NTP step); converting is then one addition.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_NS_PER_MS = 1_000_000


def _monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def capture_offset_ns(
    wall_ns: Callable[[], int] = time.time_ns,
    mono_ns: Callable[[], int] = _monotonic_ns,
    samples: int = 3,
) -> int:
    """``wall - monotonic`` in ns, from the tightest of a few bracketed readings."""
    readings = []  # (bracket width, offset)
    for _ in range(max(1, samples)):
        before = mono_ns()
        wall = wall_ns()
        after = mono_ns()
        width = after - before
        readings.append((width, wall - (before + width // 2)))
    return min(readings)[1]


class MonotonicClock:
    """Converts CLOCK_MONOTONIC ns (as the kernel writes them) to Unix ms."""

    def __init__(self, offset_ns: int | None = None) -> None:
        self._offset_ns = capture_offset_ns() if offset_ns is None else offset_ns

    @property
    def offset_ns(self) -> int:
        return self._offset_ns

    def resync(self) -> None:
        """Capture the offset again (the wall clock may have been stepped)."""
        self._offset_ns = capture_offset_ns()

    def wall_ns(self, mono_ns: int) -> int:
        return mono_ns + self._offset_ns

    def wall_ms(self, mono_ns: int) -> int:
        return (mono_ns + self._offset_ns) // _NS_PER_MS
