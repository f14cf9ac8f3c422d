"""Watch the kubelet's pod cgroup directories, so a new or removed pod triggers a resync
at once instead of at the next CRI poll.

The QoS directories of both cgroup drivers are watched (those that exist; the kubelet
creates them at start, so they are re-checked on every wait). Only directory creation
and removal matter: a pod cgroup appearing (RunPodSandbox) or going away.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from inotify_simple import INotify, flags

from nodeguard import log

_log = log.get("nodeguard.agent.cgroup_watch")

# Relative to the cgroup v2 mount: where pod cgroups are created (cgroupfs, systemd).
POD_PARENTS = (
    "",  # the root: for the kubepods directories themselves (first pod on a fresh node)
    "kubepods",
    "kubepods/burstable",
    "kubepods/besteffort",
    "kubepods.slice",
    "kubepods.slice/kubepods-burstable.slice",
    "kubepods.slice/kubepods-besteffort.slice",
)
_MASK = flags.CREATE | flags.DELETE | flags.MOVED_TO | flags.MOVED_FROM | flags.ONLYDIR


class PodCgroupWatch:
    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self._inotify = INotify()
        self._watched: dict[Path, int] = {}

    def _refresh(self) -> None:
        for rel in POD_PARENTS:
            path = self.mount / rel if rel else self.mount
            if path in self._watched or not path.is_dir():
                continue
            with contextlib.suppress(OSError):
                self._watched[path] = self._inotify.add_watch(path, _MASK)
                _log.debug("watching_pod_cgroups", path=str(path))

    def wait(self, timeout_s: float) -> bool:
        """True when a pod cgroup was created or removed within ``timeout_s``."""
        self._refresh()
        events = self._inotify.read(timeout=int(timeout_s * 1000))
        interesting = False
        for event in events:
            if event.mask & flags.IGNORED:  # the watched directory itself went away
                self._watched = {p: w for p, w in self._watched.items() if w != event.wd}
            if event.name.startswith(("pod", "kubepods", "besteffort", "burstable")):
                interesting = True  # a pod cgroup, or a parent that will hold them
        return interesting

    def close(self) -> None:
        self._inotify.close()
