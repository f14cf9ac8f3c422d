"""The node agent's policy directory: the last good set of policies, and change detection.

:class:`PolicyStore` loads every ``*.yaml``/``*.yml`` file of one directory (not
recursively; dotfiles and editor leftovers ignored; symlinks followed) as one unit:
either every file parses, validates and compiles, and the set replaces the current one,
or nothing changes and the problems are kept as ``last_error`` until a later valid
state clears them. So a broken edit never loosens (or tightens) what is enforced.

Change detection is inotify on the directory (plus its parent, for a directory that is
deleted or replaced, and the directories that symlinked policy files point into).
Kubernetes ConfigMap volumes are handled: the kubelet writes a new ``..<timestamp>``
directory and renames the ``..data`` symlink over the old one, which is an event in the
watched directory, and files are read through their ``name.yaml -> ..data/name.yaml``
links.

Typical use (one thread)::

    store = PolicyStore(config.policy_dir)   # PolicyDirectoryError if missing
    store.watch()                            # before the first reload: nothing is missed
    result = store.reload()
    while running:
        if store.wait_for_change(1.0):
            result = store.reload()
            if result.changed: apply(result.policies)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, NamedTuple, Self

import inotify_simple

from nodeguard.errors import NodeguardError, PolicyError, PolicyProblem
from nodeguard.policy import (
    AgentPolicy,
    CompiledPolicy,
    compile_policies,
    load_policy_files,
)

POLICY_SUFFIXES = (".yaml", ".yml")

# After the first event, wait until the directory has been quiet this long (an editor's
# write + rename, or a ConfigMap update, becomes one change) ...
DEBOUNCE_S = 0.02
# ... but never longer than this after the first event.
MAX_SETTLE_S = 0.06
# While the directory itself does not exist, look for it this often.
MISSING_POLL_S = 0.25

_EDITOR_SUFFIXES = ("~", ".swp", ".swo", ".swx", ".tmp", ".bak", ".orig", ".rej")


def is_editor_temp_name(name: str) -> bool:
    """Editor swap, lock, backup and auto-save files (``.#x``, ``x~``, ``.x.swp``,
    ``#x#``, vim's ``4913`` write probe)."""
    return (
        name.startswith((".#", "#"))
        or name.endswith(_EDITOR_SUFFIXES)
        or (name.isdigit() and name != "0")  # vim probes with 4913, 5036, ...
    )


def is_policy_file_name(name: str) -> bool:
    """``*.yaml`` / ``*.yml``, not hidden and not an editor leftover."""
    return (
        name.endswith(POLICY_SUFFIXES)
        and not name.startswith(".")
        and not is_editor_temp_name(name)
    )


class PolicyDirectoryError(NodeguardError):
    """The policy directory is missing or not a directory when the agent starts."""


class LoadedPolicy(NamedTuple):
    """A policy as written and as compiled for the kernel."""

    policy: AgentPolicy
    compiled: CompiledPolicy


Policies = Mapping[str, LoadedPolicy]

_NO_POLICIES: Policies = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one :meth:`PolicyStore.reload` found.

    ``policies`` is the set in force afterwards (the previous good set when ``error``
    is set); ``changed`` is True when it differs from the set in force before.
    ``generation`` counts good sets: 0 until a first valid load, +1 on every change.
    """

    changed: bool
    error: str | None
    policies: Policies
    generation: int
    problems: tuple[PolicyProblem, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreState:
    """A consistent snapshot of the store (for status and metrics; any thread)."""

    directory: Path
    policies: Policies
    generation: int
    loaded_at: float | None  # time.time() of the last change of the good set
    last_error: str | None
    last_error_at: float | None  # time.time() when this error was first seen
    problems: tuple[PolicyProblem, ...] = ()
    error_count: int = 0  # reloads that found a new invalid state (for a metric)


def _semantic_hash(policies: Mapping[str, LoadedPolicy]) -> str:
    """Changes when anything about the set changes except formatting, order of rules,
    file names and comments."""
    items = [
        [name, lp.compiled.version, lp.policy.metadata.model_dump(mode="json")]
        for name, lp in sorted(policies.items())
    ]
    text = json.dumps(items, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class PolicyStore:
    """The last good set of policies of one directory. See the module docstring."""

    def __init__(self, directory: Path, *, debounce_s: float = DEBOUNCE_S) -> None:
        if not directory.exists():
            raise PolicyDirectoryError(
                f"policy directory {directory} does not exist",
                fix=(
                    f"create it (mkdir -p {directory}) or set policyDir in the agent "
                    "configuration; in Kubernetes, mount the policies ConfigMap there"
                ),
            )
        if not directory.is_dir():
            raise PolicyDirectoryError(
                f"policy directory {directory} is not a directory",
                fix="point policyDir at a directory holding *.yaml policy files",
            )
        self.directory = directory
        self._debounce_s = debounce_s
        self._lock = threading.Lock()
        self._raw_hash: str | None = None  # names and bytes the last reload looked at
        self._state = StoreState(
            directory=directory,
            policies=_NO_POLICIES,
            generation=0,
            loaded_at=None,
            last_error=None,
            last_error_at=None,
        )
        self._watcher: _DirectoryWatcher | None = None

    # ------------------------------------------------------------------ state --

    def snapshot(self) -> StoreState:
        return self._state

    @property
    def policies(self) -> Policies:
        return self._state.policies

    @property
    def generation(self) -> int:
        return self._state.generation

    @property
    def last_error(self) -> str | None:
        return self._state.last_error

    @property
    def last_error_at(self) -> float | None:
        return self._state.last_error_at

    # ----------------------------------------------------------------- reload --

    def policy_files(self) -> list[Path]:
        """The files that make up the policy set now, sorted by name. Entries that are
        not regular files after following symlinks (directories, dangling links) are
        skipped. OSError when the directory cannot be listed."""
        files = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not is_policy_file_name(entry.name):
                    continue
                try:
                    if entry.is_file(follow_symlinks=True):
                        files.append(Path(entry.path))
                except OSError:
                    continue
        return sorted(files)

    def reload(self) -> ReloadResult:
        """Read the directory; adopt it if valid, otherwise keep the current set."""
        with self._lock:
            return self._reload()

    def _reload(self) -> ReloadResult:
        try:
            files = self.policy_files()
        except OSError as err:
            reason = err.strerror or str(err)
            message = f"{self.directory}: cannot read the policy directory: {reason}"
            self._raw_hash = None
            problem = PolicyProblem(str(self.directory), 1, "(directory)", message)
            return self._failed([problem])
        raw_hash = _raw_hash(files)
        if raw_hash == self._raw_hash:
            return self._result(changed=False)  # same bytes: same outcome as last time
        self._raw_hash = raw_hash
        try:
            policies = load_policy_files(files)
            compiled = compile_policies(policies)
        except PolicyError as err:
            return self._failed(err.problems)
        loaded = {
            c.name: LoadedPolicy(p, c)
            for p, c in sorted(zip(policies, compiled, strict=True), key=lambda pc: pc[0].name)
        }
        state = self._state
        if state.generation > 0 and _semantic_hash(loaded) == _semantic_hash(state.policies):
            self._state = replace(state, last_error=None, last_error_at=None, problems=())
            return self._result(changed=False)
        self._state = replace(
            state,
            policies=MappingProxyType(loaded),
            generation=state.generation + 1,
            loaded_at=time.time(),
            last_error=None,
            last_error_at=None,
            problems=(),
        )
        return self._result(changed=True)

    def _failed(self, problems: Iterable[PolicyProblem]) -> ReloadResult:
        found = tuple(problems)
        error = "\n".join(p.render() for p in found)
        state = self._state
        first_seen = state.last_error_at if error == state.last_error else time.time()
        self._state = replace(
            state,
            last_error=error,
            last_error_at=first_seen,
            problems=found,
            error_count=state.error_count + 1,
        )
        return self._result(changed=False)

    def _result(self, *, changed: bool) -> ReloadResult:
        state = self._state
        return ReloadResult(
            changed=changed,
            error=state.last_error,
            policies=state.policies,
            generation=state.generation,
            problems=state.problems,
        )

    # ------------------------------------------------------------------ watch --

    def watch(self) -> None:
        """Start watching the directory (idempotent). Call it before the first
        :meth:`reload` so that no change between the two is missed."""
        if self._watcher is None:
            self._watcher = _DirectoryWatcher(self.directory, debounce_s=self._debounce_s)

    def wait_for_change(self, timeout_s: float) -> bool:
        """Block until something in the directory changed (True) or ``timeout_s``
        passed (False). Bursts of events are debounced into one change.

        If :meth:`watch` was not called yet, it starts watching and returns True at
        once (a change may have been missed, so the caller should reload).
        """
        if self._watcher is None:
            self.watch()
            return True
        return self._watcher.wait(timeout_s)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _raw_hash(files: Iterable[Path]) -> str:
    """Hash of the names and bytes of ``files`` (unreadable ones by their error)."""
    digest = hashlib.sha256()
    for path in files:
        try:
            content = path.read_bytes()
        except OSError as err:
            content = f"\0unreadable: {err}".encode()
        digest.update(os.fsencode(path.name) + b"\0")
        digest.update(len(content).to_bytes(8, "little"))
        digest.update(content)
    return digest.hexdigest()


# ------------------------------------------------------------------- watching --

_F = inotify_simple.flags
_CONTENT_EVENTS = _F.CLOSE_WRITE | _F.MOVED_TO | _F.MOVED_FROM | _F.DELETE | _F.CREATE | _F.ATTRIB
_SELF_EVENTS = _F.DELETE_SELF | _F.MOVE_SELF
_WATCH_MASK = _CONTENT_EVENTS | _SELF_EVENTS


@dataclass
class _Watch:
    path: Path
    names: set[str] | None  # events about these names count; None: every name


@dataclass
class _DirectoryWatcher:
    """inotify on a directory, its parent (directory replaced) and symlink targets."""

    directory: Path
    debounce_s: float
    _inotify: Any = field(init=False)
    _watches: dict[int, _Watch] = field(init=False, default_factory=dict)
    _identity: tuple[int, int] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._inotify = inotify_simple.INotify()
        self._identity = _identity(self.directory)
        self._sync_watches()

    def close(self) -> None:
        self._inotify.close()

    def wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._sync_watches()
        while True:
            if self._replaced():
                self._settle()
                return True
            remaining = deadline - time.monotonic()
            step = min(remaining, MISSING_POLL_S) if self._identity is None else remaining
            # timeout 0 still reads what is queued
            events = self._inotify.read(timeout=max(0, math.ceil(step * 1000)))
            if self._relevant(events):
                self._settle()
                return True
            if remaining <= 0:
                return False

    def _settle(self) -> None:
        """Swallow the rest of a burst of events; then watch what is there now."""
        end = time.monotonic() + MAX_SETTLE_S
        while time.monotonic() < end:
            step = min(self.debounce_s, end - time.monotonic())
            events = self._inotify.read(timeout=max(1, math.ceil(step * 1000)))
            if not events:
                break
        self._replaced()
        self._sync_watches()

    def _replaced(self) -> bool:
        """True when the directory appeared, disappeared or is another one now."""
        identity = _identity(self.directory)
        if identity == self._identity:
            return False
        self._identity = identity
        self._sync_watches()
        return True

    def _relevant(self, events: Iterable[Any]) -> bool:
        for event in events:
            if event.mask & _F.Q_OVERFLOW:
                return True
            watch = self._watches.get(event.wd)
            if watch is None:
                continue  # a watch we dropped; its last events are of no interest
            if event.mask & (_SELF_EVENTS | _F.IGNORED):
                return True
            if watch.names is None:
                if not is_editor_temp_name(event.name):
                    return True
            elif event.name in watch.names:
                return True
        return False

    def _wanted(self) -> dict[Path, set[str] | None]:
        wanted: dict[Path, set[str] | None] = {}

        def want(path: Path, names: set[str] | None) -> None:
            if path in wanted:
                old = wanted[path]
                wanted[path] = None if old is None or names is None else old | names
            else:
                wanted[path] = names

        want(self.directory.parent, {self.directory.name})
        if self._identity is not None:
            want(self.directory, None)
            for target in _symlink_targets(self.directory):
                want(target.parent, {target.name})
        return wanted

    def _sync_watches(self) -> None:
        watches: dict[int, _Watch] = {}
        for path, names in self._wanted().items():
            try:
                wd = self._inotify.add_watch(path, _WATCH_MASK)
            except OSError:
                continue  # gone meanwhile; the next sync will try again
            old = watches.get(wd)  # two paths, one inode (e.g. a symlinked parent)
            merged = names
            if old is not None:
                merged = None if old.names is None or names is None else old.names | names
            watches[wd] = _Watch(path, merged)
        for wd in self._watches.keys() - watches.keys():
            with contextlib.suppress(OSError):  # the kernel dropped it (directory deleted)
                self._inotify.rm_watch(wd)
        self._watches = watches


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _symlink_targets(directory: Path) -> list[Path]:
    """Where the symlinked policy files of ``directory`` really are (outside it)."""
    targets = []
    resolved = Path(os.path.realpath(directory))
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not (is_policy_file_name(entry.name) and entry.is_symlink()):
                    continue
                target = Path(os.path.realpath(entry.path))
                if target.parent != resolved:
                    targets.append(target)
    except OSError:
        return []
    return targets
