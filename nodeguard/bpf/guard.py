"""Load the guard programs (bpf/guard.bpf.c) with BCC and put cgroups under policies.

One :class:`Guard` owns one loaded copy of the programs and maps. It

- loads compiled policies into the rule maps under a policy id (all or nothing),
- guards cgroups: writes cgroup id -> policy, then attaches the four sock_addr programs
  and the sock_create program (only to cgroups that pass :func:`assert_safe_target`),
- hands ring buffer records to a callback, and exposes counters and aggregates,
- detaches everything it attached on :meth:`close` (also called on errors).

The tracepoints (exec, fork, exit, and the signal_generate raw tracepoint that reports
seccomp kills) are attached when the module loads; they do nothing for a process whose
cgroup (or guarded ancestor) is not in ``cgroup_policy``. The per-syscall audit
tracepoints are attached on demand (:meth:`Guard.set_audit`), only while a loaded policy
audits a syscall, because every syscall tracepoint slows every syscall on the node.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from nodeguard import log
from nodeguard.bpf import abi, maps, syscalls
from nodeguard.errors import BccMissingError, BpfLoadError, NodeguardError
from nodeguard.identity.cgroupfs import assert_safe_target, cgroup_id, cgroup_level
from nodeguard.policy.compiled import CompiledPolicy, Mode
from nodeguard.policy.syscalls import host_arch

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
GUARD_SOURCE = BPF_DIR / "guard.bpf.c"
BPF_F_ALLOW_MULTI = 1 << 1
EXEC_TRACEPOINT = ("sched", "sched_process_exec")
EXEC_FN = b"tracepoint__sched__sched_process_exec"
# (link name, category, tracepoint, function): attached for the life of the programs
TRACEPOINTS: tuple[tuple[str, str, str, bytes], ...] = (
    ("exec", *EXEC_TRACEPOINT, EXEC_FN),
    ("exec-budget", *EXEC_TRACEPOINT, b"ng_exec_budget"),
    ("fork", "task", "task_newtask", b"tracepoint__task__task_newtask"),
    ("exit", "sched", "sched_process_exit", b"tracepoint__sched__sched_process_exit"),
)
# Where each execve began (see ng_exec_enter in guard.bpf.c): an exec that began before the
# runtime moved its process into a guarded cgroup is not the workload's. Needs the syscall
# tracepoints (CONFIG_FTRACE_SYSCALLS); without them every exec is checked where it ends,
# and runc 1.1 can now and then fail to start a container in a pod with an exec policy.
EXEC_ORIGIN_TRACEPOINTS: tuple[tuple[str, str, str, bytes], ...] = (
    ("exec-enter", "syscalls", "sys_enter_execve", b"ng_exec_enter"),
    ("exec-enter-at", "syscalls", "sys_enter_execveat", b"ng_exec_enter"),
    ("exec-leave", "syscalls", "sys_exit_execve", b"ng_exec_leave"),
    ("exec-leave-at", "syscalls", "sys_exit_execveat", b"ng_exec_leave"),
)
# (link name, raw tracepoint, function)
RAW_TRACEPOINTS: tuple[tuple[str, str, bytes], ...] = (
    ("seccomp-kill", "signal_generate", b"raw_tracepoint__signal_generate"),
)
SYSCALL_AUDIT_FN = b"ng_syscall_audit"
SOCKET_AUDIT_FN = b"ng_socket_audit"
TRACEFS = Path("/sys/kernel/tracing")
# syscalls whose tracepoint is named differently from the syscall
_TRACEPOINT_NAMES = {"umount2": "umount", "newfstatat": "newfstatat", "_sysctl": "sysctl"}
BPFFS_MAGIC = 0xCAFE4A11
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./-]+$")

# attach type numbers from uapi/linux/bpf.h (enum bpf_attach_type)
ATTACH_INET4_CONNECT = 10
ATTACH_INET6_CONNECT = 11
ATTACH_UDP4_SENDMSG = 14
ATTACH_UDP6_SENDMSG = 15
ATTACH_INET_SOCK_CREATE = 2
PROG_TYPE_CGROUP_SOCK = 9
PROG_TYPE_CGROUP_SOCK_ADDR = 18

EGRESS_PROGRAMS: tuple[tuple[str, int], ...] = (
    ("ng_connect4", ATTACH_INET4_CONNECT),
    ("ng_connect6", ATTACH_INET6_CONNECT),
    ("ng_sendmsg4", ATTACH_UDP4_SENDMSG),
    ("ng_sendmsg6", ATTACH_UDP6_SENDMSG),
)
EGRESS_NAMES = frozenset(name for name, _ in EGRESS_PROGRAMS)
EGRESS_ATTACH_TYPES = tuple(attach_type for _, attach_type in EGRESS_PROGRAMS)
# Every program attached to a guarded cgroup: (name, program type, attach type).
CGROUP_PROGRAMS: tuple[tuple[str, int, int], ...] = (
    *((name, PROG_TYPE_CGROUP_SOCK_ADDR, attach_type) for name, attach_type in EGRESS_PROGRAMS),
    ("ng_sock_create", PROG_TYPE_CGROUP_SOCK, ATTACH_INET_SOCK_CREATE),
)
CGROUP_NAMES = frozenset(name for name, _, _ in CGROUP_PROGRAMS)
CGROUP_ATTACH_TYPES = tuple(attach_type for _, _, attach_type in CGROUP_PROGRAMS)

_log = log.get("nodeguard.bpf.guard")


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """Map sizes and tunables, validated before they become -D flags."""

    max_cgroups: int = 4096
    egress_max: int = 1 << 17
    exec_max: int = 1 << 14
    agg_max: int = 1 << 14
    # 4 MiB with 4 KiB pages (a power of two): ~45,000 egress records, about a second of
    # slack for the agent at its full rate (bench --only stream); 1 MiB lost records in
    # bursts at 50,000 distinct violations/s
    ringbuf_pages: int = 1024
    agg_window_ms: int = 1000
    syscall_max: int = 1 << 14  # (policy, syscall) deny entries
    socket_max: int = 1 << 12  # (policy, family) deny entries
    policy_max: int = 1 << 12  # policies with process budgets

    def cflags(self, pin_dir: Path | None = None) -> list[str]:
        for name in (
            "max_cgroups",
            "egress_max",
            "exec_max",
            "agg_max",
            "agg_window_ms",
            "syscall_max",
            "socket_max",
            "policy_max",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 1 << 24:
                raise NodeguardError(f"guard limit {name}={value!r} must be in 1..{1 << 24}")
        pages = self.ringbuf_pages
        if pages < 1 or pages & (pages - 1) or pages > 1 << 16:
            raise NodeguardError(
                f"ringbuf_pages={pages} must be a power of two between 1 and 65536"
            )
        return [
            f"-I{BPF_DIR / 'include'}",
            f"-DNG_MAX_CGROUPS={self.max_cgroups}",
            f"-DNG_EGRESS_MAX={self.egress_max}",
            f"-DNG_EXEC_MAX={self.exec_max}",
            f"-DNG_AGG_MAX={self.agg_max}",
            f"-DNG_RINGBUF_PAGES={pages}",
            f"-DNG_AGG_WINDOW_NS={self.agg_window_ms * 1_000_000}ULL",
            f"-DNG_SYSCALL_MAX={self.syscall_max}",
            f"-DNG_SOCKET_MAX={self.socket_max}",
            f"-DNG_POLICY_MAX={self.policy_max}",
            f"-DNG_EXEC_BEGUN_MAX={max(4096, 256 * possible_cpus())}",
            "-Wno-unused-function",
            *([f'-DNG_PIN_DIR="{pin_dir}"'] if pin_dir is not None else []),
        ]


@dataclass(slots=True)
class _Guarded:
    path: Path
    cgid: int
    level: int
    fd: int
    policy_id: int
    attached: list[tuple[Any, int]] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)  # attach types found already attached


def import_bcc() -> Any:
    try:
        import bcc  # noqa: PLC0415 - optional system package, imported on demand
    except ImportError as err:
        raise BccMissingError(
            "cannot import BCC's Python bindings (module 'bcc')",
            fix="install Debian's python3-bpfcc (scripts/setup.sh does) and use a venv "
            "made with --system-site-packages from /usr/bin/python3",
        ) from err
    return bcc


def possible_cpus(path: Path = Path("/sys/devices/system/cpu/possible")) -> int:
    """Number of possible CPUs (``0-3,8-11`` -> 8); os.cpu_count() if unreadable."""
    try:
        total = 0
        for part in path.read_text().strip().split(","):
            lo, _, hi = part.partition("-")
            total += int(hi or lo) - int(lo) + 1
        return max(total, 1)
    except (OSError, ValueError):
        return os.cpu_count() or 1


def program_version(limits: GuardLimits) -> str:
    """Hash of everything that shapes the programs and maps: a pinned set is adopted only
    by an agent whose programs are identical (same sources, same limits)."""
    h = hashlib.sha256()
    for path in [*sorted((BPF_DIR / "include").glob("*.h")), GUARD_SOURCE]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(" ".join(limits.cflags()).encode())
    return f"v{abi.ABI_VERSION}-{h.hexdigest()[:12]}"


def _is_bpffs(path: Path) -> bool:
    buf = ct.create_string_buffer(120)  # struct statfs; f_type is the first field
    libc = ct.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return int.from_bytes(buf.raw[:8], "little") == BPFFS_MAGIC


def prepare_pin_dir(root: Path, version: str) -> Path:
    """``root/<version>``, created on a bpffs. Raises with the fix when root is unusable."""
    if not _SAFE_PATH.match(str(root)) or ".." in root.parts:
        raise NodeguardError(
            f"pin directory {root} must be an absolute path of [A-Za-z0-9_./-] characters"
        )
    if not root.exists():
        parent = root.parent
        if not _is_bpffs(parent):
            raise NodeguardError(
                f"{parent} is not a BPF filesystem, so {root} cannot hold pinned maps",
                fix="mount -t bpf bpf /sys/fs/bpf (scripts/setup.sh does; in Kubernetes "
                "mount the host's /sys/fs/bpf into the agent pod)",
            )
        root.mkdir(mode=0o700)
    elif not _is_bpffs(root):
        raise NodeguardError(
            f"{root} is not on a BPF filesystem", fix="mount -t bpf bpf /sys/fs/bpf"
        )
    pin = root / version
    pin.mkdir(mode=0o700, exist_ok=True)
    (pin / "links").mkdir(mode=0o700, exist_ok=True)
    return pin


def stale_pin_sets(root: Path, version: str) -> list[Path]:
    """Pinned sets of other program versions (left by an older agent) under ``root``."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != version)


def _bpf_class(bcc: Any) -> Any:
    class NoAutoAttachBPF(bcc.BPF):  # type: ignore[misc]
        """bcc.BPF that does not attach tracepoint__* functions by itself: nodeguard
        attaches the exec tracepoint as a plain perf event or as a pinned link."""

        def _trace_autoload(self) -> None:
            return None

    return NoAutoAttachBPF


class Guard:
    """One loaded copy of the guard programs and maps.

    ``pin_root`` (the node agent): maps, the ring buffer and the exec tracepoint link are
    pinned under ``pin_root/<program version>``; cgroup attachments stay in the kernel by
    themselves. A Guard created later with the same version adopts all of it: it reads the
    same ring buffer (records written while no agent ran are still there), finds the
    exec link in place and never attaches a second copy to a cgroup that has one.
    :meth:`close` then leaves enforcement running; :meth:`teardown` removes everything.
    """

    def __init__(self, limits: GuardLimits | None = None, pin_root: Path | None = None) -> None:
        self.limits = limits or GuardLimits()
        bcc = import_bcc()
        self._bcc = bcc
        self.version = program_version(self.limits)
        self.pin_root = pin_root
        self.pin_dir = prepare_pin_dir(pin_root, self.version) if pin_root else None
        self.adopted = False  # pinned state from an earlier agent was found and reused
        cflags = self.limits.cflags(self.pin_dir)
        if self.pin_dir is not None:
            self.adopted = (self.pin_dir / "links" / "exec").exists()
        try:
            self._bpf: Any = _bpf_class(bcc)(src_file=str(GUARD_SOURCE).encode(), cflags=cflags)
        except Exception as err:
            raise BpfLoadError(
                f"cannot compile/load {GUARD_SOURCE.name}: {err}",
                fix="run `nodeguard doctor` to see which kernel feature or header is missing",
            ) from err
        self._fns: dict[int, Any] = {}
        try:
            for name, prog_type, attach_type in CGROUP_PROGRAMS:
                self._fns[attach_type] = self._bpf.load_func(
                    name.encode(), prog_type, attach_type=attach_type
                )
        except Exception as err:
            self._bpf.cleanup()
            raise BpfLoadError(f"cannot load cgroup socket program: {err}") from err
        # kernel tag per program: tells our programs from another version's on a cgroup
        self._tags = {t: syscalls.prog_tag(fn.fd) for t, fn in self._fns.items()}
        self._guarded: dict[int, _Guarded] = {}
        self._policies: dict[int, CompiledPolicy] = {}
        self._next_policy_id = 1 + max(self.policy_ids_in_maps(), default=0)
        self._closed = False
        self._ringbuf_open = False
        self._links: dict[str, int] = {}  # link name -> fd (unpinned: closing detaches)
        self._host_arch = host_arch()
        try:
            for link, category, tracepoint, fn_name in TRACEPOINTS:
                self._attach_tracepoint(link, category, tracepoint, fn_name)
            for link, raw_tp, fn_name in RAW_TRACEPOINTS:
                self._attach_raw_tracepoint(link, raw_tp, fn_name)
        except Exception as err:
            self._close_links()
            self._bpf.cleanup()
            raise BpfLoadError(f"cannot attach the guard's tracepoints: {err}") from err
        self.exec_origin_tracked = self._attach_exec_origin()

    def _attach_exec_origin(self) -> bool:
        """Attach the sys_enter/sys_exit execve(at) programs; False (logged) if this kernel
        has no syscall tracepoints. Enforcement does not depend on them."""
        try:
            for link, category, tracepoint, fn_name in EXEC_ORIGIN_TRACEPOINTS:
                self._attach_tracepoint(link, category, tracepoint, fn_name)
        except Exception as err:
            for link, *_ in EXEC_ORIGIN_TRACEPOINTS:
                self._drop_link(link)
            _log.warning(
                "exec_origin_untracked",
                error=str(err),
                effect="execs are judged where they end; runc may now and then fail to "
                "start a container in a pod with an exec policy",
                fix="run `nodeguard doctor` (tracepoint.sys_enter_execve): the kernel needs "
                "syscall tracepoints (CONFIG_FTRACE_SYSCALLS)",
            )
            return False
        return True

    def _keep_link(self, link: str, link_fd: int) -> None:
        """Pin a link (agent) or hold its fd (run); either way it stays attached."""
        if self.pin_dir is None:
            self._links[link] = link_fd
            return
        try:
            syscalls.obj_pin(link_fd, self.pin_dir / "links" / link)
        finally:
            os.close(link_fd)

    def _has_link(self, link: str) -> bool:
        if self.pin_dir is None:
            return link in self._links
        return (self.pin_dir / "links" / link).exists()

    def _attach_tracepoint(self, link: str, category: str, tracepoint: str, fn_name: bytes) -> None:
        if self._has_link(link):
            return  # adopted: the pinned link of an earlier agent keeps running
        fn = self._bpf.load_func(fn_name, self._bcc.BPF.TRACEPOINT)
        perf_fd = syscalls.perf_event_open_tracepoint(syscalls.tracepoint_id(category, tracepoint))
        try:
            self._keep_link(link, syscalls.link_create_perf_event(fn.fd, perf_fd))
        finally:
            os.close(perf_fd)

    def _attach_raw_tracepoint(self, link: str, raw_tp: str, fn_name: bytes) -> None:
        if self._has_link(link):
            return
        fn = self._bpf.load_func(fn_name, self._bcc.BPF.RAW_TRACEPOINT)
        self._keep_link(link, syscalls.raw_tracepoint_open(fn.fd, raw_tp))

    def _drop_link(self, link: str) -> None:
        if self.pin_dir is None:
            fd = self._links.pop(link, None)
            if fd is not None:
                os.close(fd)
            return
        with contextlib.suppress(FileNotFoundError):
            (self.pin_dir / "links" / link).unlink()

    def _close_links(self) -> None:
        for fd in self._links.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._links.clear()

    # ------------------------------------------------------- audit tracepoints ---
    def audit_links(self) -> set[str]:
        """Names of the audit tracepoints attached now (``sys_enter_<syscall>``)."""
        if self.pin_dir is None:
            names = set(self._links)
        else:
            names = {p.name for p in (self.pin_dir / "links").iterdir()}
        return {n.removeprefix("audit-") for n in names if n.startswith("audit-")}

    def set_audit(self, syscall_names: Iterable[str], sockets: bool) -> list[str]:
        """Attach the audit tracepoints for exactly these syscalls (and sys_enter_socket
        when ``sockets``), detaching the ones no longer needed. Returns the syscalls that
        have no tracepoint on this kernel (their audit sees nothing: say so to the user)."""
        wanted: dict[str, bytes] = {}
        missing: list[str] = []
        for name in sorted(set(syscall_names)):
            tp = tracepoint_of(name)
            if tp is None:
                missing.append(name)
            else:
                wanted[tp] = SYSCALL_AUDIT_FN
        if sockets:
            wanted["sys_enter_socket"] = SOCKET_AUDIT_FN
        for tp in self.audit_links() - set(wanted):
            self._drop_link(f"audit-{tp}")
        for tp, fn_name in wanted.items():
            self._attach_tracepoint(f"audit-{tp}", "syscalls", tp, fn_name)
        return missing

    def policy_ids_in_maps(self) -> set[int]:
        """Policy ids present in the kernel maps (pinned state of an earlier agent)."""
        ids: set[int] = set()
        for value in self.table("cgroup_policy").values():
            ids.add(int(abi.CgroupPolicy.from_buffer_copy(bytes(value)).policy_id))
        for name in ("egress_rules", "exec_rules"):
            for key in self.table(name).keys():  # noqa: SIM118 - BCC tables iterate keys
                ids.add(int.from_bytes(bytes(key)[4:8], "little"))
        for name in ("syscall_deny", "socket_deny", "policy_limits"):
            for key in self.table(name).keys():  # noqa: SIM118 - BCC tables iterate keys
                ids.add(int.from_bytes(bytes(key)[0:4], "little"))
        return ids

    def gc_policies(self, keep: set[int]) -> int:
        """Delete rule entries of policy ids not in ``keep`` (left by an earlier agent).
        Returns how many entries were removed."""
        removed = 0
        for name, offset in (
            ("egress_rules", 4),
            ("exec_rules", 4),
            ("syscall_deny", 0),
            ("socket_deny", 0),
            ("policy_limits", 0),
        ):
            table = self.table(name)
            for key in list(table.keys()):
                if int.from_bytes(bytes(key)[offset : offset + 4], "little") not in keep:
                    with contextlib.suppress(KeyError):
                        del table[key]
                        removed += 1
        return removed

    # ------------------------------------------------------------------ maps ---
    def table(self, name: str) -> Any:
        return self._bpf[name.encode()]

    def load_policy(self, policy: CompiledPolicy) -> int:
        """Write a compiled policy's rules under a new policy id. All or nothing."""
        policy_id = self._next_policy_id
        self._next_policy_id += 1
        if policy_id >= 1 << 32:
            raise BpfLoadError("policy ids exhausted; restart the agent with --reset-pins")
        written: list[tuple[Any, Any]] = []
        try:
            egress = self.table("egress_rules")
            for key, value in maps.egress_entries(policy_id, policy):
                egress[key] = value
                written.append((egress, key))
            exec_rules = self.table("exec_rules")
            for xkey, xvalue in maps.exec_entries(policy_id, policy):
                exec_rules[xkey] = xvalue
                written.append((exec_rules, xkey))
            for table, key, value in self._sandbox_entries(policy_id, policy):
                table[key] = value
                written.append((table, key))
        except Exception as err:
            for table, key in reversed(written):
                with contextlib.suppress(Exception):
                    del table[key]
            raise BpfLoadError(
                f"cannot load policy {policy.name!r} into the kernel maps: {err}",
                fix="the rule maps may be full: raise egress_max/exec_max/syscall_max/"
                "socket_max/policy_max or split the policy",
            ) from err
        self._policies[policy_id] = policy
        _log.debug(
            "policy_loaded",
            policy=policy.name,
            policy_id=policy_id,
            egress_entries=len(policy.egress or ()),
            exec_entries=len(policy.exec or ()),
        )
        return policy_id

    def unload_policy(self, policy_id: int) -> None:
        policy = self._policies.pop(policy_id, None)
        if policy is None:
            return
        egress = self.table("egress_rules")
        for key, _ in maps.egress_entries(policy_id, policy):
            with contextlib.suppress(KeyError):
                del egress[key]
        exec_rules = self.table("exec_rules")
        for xkey, _ in maps.exec_entries(policy_id, policy):
            with contextlib.suppress(KeyError):
                del exec_rules[xkey]
        for table, key, _ in self._sandbox_entries(policy_id, policy):
            with contextlib.suppress(KeyError):
                del table[key]

    def _sandbox_entries(
        self, policy_id: int, policy: CompiledPolicy
    ) -> list[tuple[Any, Any, Any]]:
        """(table, key, value) of a policy's syscall, socket and budget entries."""
        out: list[tuple[Any, Any, Any]] = []
        deny = self.table("syscall_deny")
        out += [(deny, k, v) for k, v in maps.syscall_entries(policy_id, policy, self._host_arch)]
        sockets = self.table("socket_deny")
        out += [(sockets, k, v) for k, v in maps.socket_entries(policy_id, policy)]
        limits = maps.limits_entry(policy)
        if limits is not None:
            out.append((self.table("policy_limits"), ct.c_uint32(policy_id), limits))
        return out

    @property
    def policies(self) -> dict[int, CompiledPolicy]:
        return dict(self._policies)

    def _write_levels(self) -> None:
        mask = 0
        for g in self._guarded.values():
            mask |= 1 << g.level
        self.table("guarded_levels")[ct.c_int(0)] = ct.c_uint64(mask)

    # --------------------------------------------------------------- cgroups ---
    def guard(self, mount: Path, path: Path, policy_id: int, mode: Mode | None = None) -> int:
        """Put a cgroup (that the caller created) under a loaded policy. Returns its id."""
        if policy_id not in self._policies:
            raise NodeguardError(f"policy id {policy_id} is not loaded")
        assert_safe_target(mount, path)
        level = cgroup_level(mount, path)
        if level >= 32:
            raise NodeguardError(f"cgroup {path} is nested too deep ({level} > 31 levels)")
        cgid = cgroup_id(path)
        value = abi.CgroupPolicy()
        value.policy_id = policy_id
        value.flags = int(self._policies[policy_id].flags(mode))
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        entry = _Guarded(path=path, cgid=cgid, level=level, fd=fd, policy_id=policy_id)
        self._guarded[cgid] = entry
        try:
            self.table("cgroup_policy")[ct.c_uint64(cgid)] = value
            self._write_levels()
            older: list[tuple[int, int]] = []  # (attach type, prog id) of another version
            for attach_type, fn in self._fns.items():
                present = our_programs(fd, attach_type)
                if any(tag == self._tags[attach_type] for _, tag in present):
                    entry.adopted.append(attach_type)  # same program, attached earlier
                    continue
                older += [(attach_type, prog_id) for prog_id, _ in present]
                self._bcc.BPF.attach_func(fn, fd, attach_type, BPF_F_ALLOW_MULTI)
                entry.attached.append((fn, attach_type))
            self._write_storage(cgid, value)
            self._seed_budget(cgid, path)
            # Make before break: another version's programs go only once ours enforce.
            for attach_type, prog_id in older:
                detach_prog_id(fd, attach_type, prog_id)
        except Exception as err:
            self.unguard(cgid)
            raise BpfLoadError(f"cannot attach the egress programs to {path}: {err}") from err
        _log.debug("cgroup_guarded", cgroup=str(path), cgroup_id=cgid, policy_id=policy_id)
        return cgid

    def repoint(self, cgid: int, policy_id: int, mode: Mode | None = None) -> None:
        """Move a guarded cgroup to another loaded policy: one 8-byte update of its hash
        entry and of its storage, so each hook sees either the old or the new policy."""
        entry = self._guarded[cgid]
        if policy_id not in self._policies:
            raise NodeguardError(f"policy id {policy_id} is not loaded")
        value = abi.CgroupPolicy()
        value.policy_id = policy_id
        value.flags = int(self._policies[policy_id].flags(mode))
        self.table("cgroup_policy")[ct.c_uint64(cgid)] = value
        self._write_storage(cgid, value)
        entry.policy_id = policy_id
        self._seed_budget(cgid, entry.path)

    def _seed_budget(self, cgid: int, path: Path) -> None:
        """Start a guarded cgroup's budget with the processes already in it (kept if the
        cgroup has one: a restarted agent or a policy change must not reset counts)."""
        table = self.table("budget")
        if ct.c_uint64(cgid) in table:
            return
        value = abi.Budget()
        value.processes = count_processes(path)
        table[ct.c_uint64(cgid)] = value

    def add_processes(self, cgid: int, delta: int) -> None:
        """Count processes that join a guarded cgroup from outside (fork hooks only count
        processes created inside it): `nodeguard run` adds its command this way."""
        table = self.table("budget")
        key = ct.c_uint64(cgid)
        value = abi.Budget.from_buffer_copy(bytes(table[key])) if key in table else abi.Budget()
        value.processes = max(0, value.processes + delta)
        table[key] = value

    def budget(self, cgid: int) -> abi.Budget | None:
        table = self.table("budget")
        key = ct.c_uint64(cgid)
        return abi.Budget.from_buffer_copy(bytes(table[key])) if key in table else None

    def unguard(self, cgid: int) -> None:
        entry = self._guarded.pop(cgid, None)
        if entry is None:
            return
        for fn, attach_type in entry.attached:
            try:
                self._bcc.BPF.detach_func(fn, entry.fd, attach_type)
            except Exception as err:  # the cgroup may be gone already: that detaches too
                _log.debug("detach_failed", cgroup=str(entry.path), error=str(err))
        detach_ours(entry.fd, entry.adopted)
        with contextlib.suppress(KeyError):
            del self.table("cgroup_policy")[ct.c_uint64(cgid)]
        with contextlib.suppress(KeyError):
            del self.table("budget")[ct.c_uint64(cgid)]
        self._write_levels()
        os.close(entry.fd)

    def _write_storage(self, cgid: int, value: abi.CgroupPolicy) -> None:
        """Fill the egress programs' cgroup storage (the fast path) for every attach type.

        The kernel creates the storage on attach; the hooks use cgroup_policy until this
        write lands, so there is no window without enforcement.
        """
        lib = self._bcc.libbcc.lib
        fd = lib.bpf_table_fd(self._bpf.module, b"egress_policy")
        stored = abi.CgroupPolicy(value.policy_id, value.flags | abi.PolicyFlag.ACTIVE)
        for attach_type in EGRESS_ATTACH_TYPES:
            key = abi.CgroupStorageKey(cgroup_inode_id=cgid, attach_type=attach_type)
            res = lib.bpf_update_elem(
                fd,
                ct.cast(ct.pointer(key), ct.c_void_p),
                ct.cast(ct.pointer(stored), ct.c_void_p),
                0,
            )
            if res < 0:
                raise BpfLoadError(
                    f"cannot write the egress policy storage of cgroup {cgid}: "
                    f"{os.strerror(ct.get_errno())}"
                )

    def guarded_policy(self, cgid: int) -> int | None:
        entry = self._guarded.get(cgid)
        return entry.policy_id if entry is not None else None

    @property
    def guarded(self) -> dict[int, Path]:
        return {cgid: g.path for cgid, g in self._guarded.items()}

    # ---------------------------------------------------------------- events ---
    def on_record(self, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(record_bytes)`` for every ring buffer record during :meth:`poll`."""

        def _cb(_ctx: Any, data: Any, size: int) -> int:
            callback(ct.string_at(data, size))
            return 0

        self.table("events").open_ring_buffer(_cb)
        self._ringbuf_open = True

    def poll(self, timeout_ms: int) -> None:
        if self._ringbuf_open:
            self._bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> None:
        if self._ringbuf_open:
            self._bpf.ring_buffer_consume()

    def counters(self) -> dict[str, int]:
        table = self.table("counters")
        return {c.name.lower(): int(table.sum(ct.c_int(int(c))).value) for c in abi.Counter}

    def aggregates(self) -> list[tuple[abi.AggKey, abi.AggValue]]:
        out: list[tuple[abi.AggKey, abi.AggValue]] = []
        table = self.table("agg")
        try:
            # BPF_MAP_LOOKUP_BATCH: the whole table in a few syscalls instead of two per
            # entry (the agent reads it every second; a full table holds NG_AGG_MAX keys)
            items = list(table.items_lookup_batch())
        except Exception:  # kernels/BCC without batch ops: entry by entry
            items = list(table.items())
        for key, value in items:
            out.append(
                (
                    abi.AggKey.from_buffer_copy(bytes(key)),
                    abi.AggValue.from_buffer_copy(bytes(value)),
                )
            )
        return out

    # --------------------------------------------------------------- cleanup ---
    def close(self) -> None:
        """Release this process's hold. Without pinning everything is detached; with
        pinning enforcement stays in the kernel for the next agent to adopt."""
        if self._closed:
            return
        self._closed = True
        if self.pin_dir is None:
            for cgid in list(self._guarded):
                self.unguard(cgid)
        else:
            for entry in self._guarded.values():
                os.close(entry.fd)
            self._guarded.clear()
        self._close_links()
        with contextlib.suppress(Exception):
            self._bpf.cleanup()

    def teardown(self) -> None:
        """Detach from every cgroup this Guard knows, then remove the pinned set."""
        for cgid in list(self._guarded):
            self.unguard(cgid)
        self.close()
        if self.pin_dir is not None:
            remove_pin_set(self.pin_dir)

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def detach_prog_id(cgroup_fd: int, attach_type: int, prog_id: int) -> bool:
    try:
        prog_fd = syscalls.prog_get_fd_by_id(prog_id)
    except OSError:
        return False
    try:
        syscalls.prog_detach(cgroup_fd, prog_fd, attach_type)
        return True
    except OSError as err:
        _log.debug("detach_failed", prog_id=prog_id, error=str(err))
        return False
    finally:
        os.close(prog_fd)


def our_programs(cgroup_fd: int, attach_type: int) -> list[tuple[int, bytes]]:
    """(id, tag) of the nodeguard cgroup programs attached to a cgroup for one attach type,
    whoever attached them (this agent, an earlier one, another version)."""
    return [
        (prog_id, tag)
        for prog_id, name, tag in syscalls.attached_programs(cgroup_fd, attach_type)
        if name in CGROUP_NAMES
    ]


def detach_ours(cgroup_fd: int, attach_types: Iterable[int] = CGROUP_ATTACH_TYPES) -> int:
    """Detach every nodeguard cgroup program attached to a cgroup (including ones an
    earlier agent attached). Returns how many were detached."""
    return sum(
        detach_prog_id(cgroup_fd, attach_type, prog_id)
        for attach_type in attach_types
        for prog_id, _ in our_programs(cgroup_fd, attach_type)
    )


def tracepoint_of(syscall: str, tracefs: Path = TRACEFS) -> str | None:
    """The sys_enter tracepoint of a syscall on this kernel, None if it has none (built
    out, like init_module without module support, or a name the tracepoints spell
    differently and we do not know)."""
    for name in (syscall, _TRACEPOINT_NAMES.get(syscall)):
        if name and (tracefs / "events" / "syscalls" / f"sys_enter_{name}").is_dir():
            return f"sys_enter_{name}"
    return None


def count_processes(path: Path) -> int:
    """Processes (thread groups) in a cgroup and its descendants."""
    total = 0
    for procs in [path / "cgroup.procs", *path.rglob("*/cgroup.procs")]:
        with contextlib.suppress(OSError):
            total += sum(1 for line in procs.read_text().splitlines() if line.strip())
    return total


def remove_pin_set(pin_dir: Path) -> None:
    """Unpin a program version's maps and links (the exec link detaches with it)."""
    if pin_dir.exists():
        shutil.rmtree(pin_dir, ignore_errors=True)
