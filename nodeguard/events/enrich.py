"""Best-effort process details from /proc (via psutil) for a violation's pid.

The process may be gone (an exec violation SIGKILLs it), a zombie, or unreadable: every
lookup degrades to what the kernel record already says and never raises.

exe and cmdline are cached for a short time by (pid, process start time), so a recycled
pid never inherits another process's details. An exec changes both without changing the
start time: exec records ask for a ``fresh`` read.

Hot path: a process that violates in a loop (thousands of records per second) is looked
up again and again. For ``recheck_s`` (default 0.25 s) after a pid's start time was last
read, its cached details are returned without touching /proc at all; a pid would have to
be recycled within that window (the whole pid space wrapping around) to be misattributed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import psutil

from nodeguard.events.model import ProcessInfo

_READ_ERRORS = (psutil.Error, OSError, ValueError)
_CacheKey = tuple[int, float]  # (pid, start time)
_ExeCmd = tuple[str | None, str | None]  # (exe, cmd_line)


# A process controls its own command line (up to several MiB of argv) and its bytes:
# records carry at most this much of either, as valid UTF-8, so no record can be too big
# for the collector or unencodable (psutil hands invalid bytes over as lone surrogates).
MAX_CMD_LINE = 4096
MAX_PATH = 4096
TRUNCATED = "…[truncated]"


def clean_text(text: str, limit: int) -> str:
    """``text`` as valid UTF-8 (invalid bytes replaced) of at most ``limit`` characters."""
    if not text.isascii():
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if len(text) > limit:
        text = text[: limit - len(TRUNCATED)] + TRUNCATED
    return text


def _exe(proc: psutil.Process) -> str | None:
    try:
        exe = proc.exe()
    except _READ_ERRORS:
        return None
    return clean_text(exe, MAX_PATH) if exe else None


def _cmd_line(proc: psutil.Process) -> str | None:
    try:
        argv = proc.cmdline()
    except _READ_ERRORS:
        return None
    return clean_text(" ".join(argv), MAX_CMD_LINE) if argv else None


def _ppid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except _READ_ERRORS:
        return None


class ProcessEnricher:
    """:meth:`lookup` pid -> ProcessInfo, with a small TTL cache."""

    def __init__(
        self,
        *,
        ttl_s: float = 2.0,
        max_entries: int = 1024,
        recheck_s: float = 0.25,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._recheck_s = min(recheck_s, ttl_s)
        self._now = now
        self._cache: OrderedDict[_CacheKey, tuple[float, _ExeCmd]] = OrderedDict()
        # pid -> (checked until, the last ProcessInfo answered): the no-/proc fast path
        self._recent: dict[int, tuple[float, ProcessInfo]] = {}

    def lookup(self, pid: int, tid: int, comm: str, *, fresh: bool = False) -> ProcessInfo:
        """Kernel facts (pid, tid, comm) always; exe, cmd_line, ppid when readable."""
        base = ProcessInfo(pid=pid, tid=tid, name=comm)
        if pid <= 0:
            return base
        now = self._now()
        if not fresh:
            hit = self._recent.get(pid)
            if hit is not None and hit[0] > now:
                last = hit[1]
                if last.tid == tid and last.name == comm:
                    return last  # the same object: callers may cache what they derive
                if last.name == comm:  # another thread of the same image
                    info = ProcessInfo(
                        pid=pid, tid=tid, name=comm, path=last.path, cmd_line=last.cmd_line,
                        ppid=last.ppid,
                    )  # fmt: skip
                    self._recent[pid] = (hit[0], info)
                    return info
                fresh = True  # comm changed: an exec; read the new image's details
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                key = (pid, proc.create_time())
                ppid = _ppid(proc)
                exe_cmd = None if fresh else self._get(key)
                if exe_cmd is None:
                    exe_cmd = (_exe(proc), _cmd_line(proc))
                    self._put(key, exe_cmd)
        except _READ_ERRORS:
            self._recent.pop(pid, None)
            return base
        exe, cmd_line = exe_cmd
        info = ProcessInfo(pid=pid, tid=tid, name=comm, path=exe, cmd_line=cmd_line, ppid=ppid)
        if len(self._recent) >= self._max:
            self._recent.clear()  # bounded; refilled by the next lookups
        self._recent[pid] = (now + self._recheck_s, info)
        return info

    def _get(self, key: _CacheKey) -> _ExeCmd | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        if hit[0] <= self._now():
            del self._cache[key]
            return None
        return hit[1]

    def _put(self, key: _CacheKey, value: _ExeCmd) -> None:
        self._cache[key] = (self._now() + self._ttl_s, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
