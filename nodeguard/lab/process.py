"""Stopping the helper processes the lab starts (receivers, servers)."""

from __future__ import annotations

import signal
import subprocess


def stop_process(
    proc: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout_s: float
) -> None:
    """Send ``sig`` to ``proc`` if it still runs and wait; SIGKILL it when it has not
    exited within ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
