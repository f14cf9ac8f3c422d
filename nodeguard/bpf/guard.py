"""Load the guard programs (bpf/guard.bpf.c) with BCC and put cgroups under policies.

One :class:`Guard` owns one loaded copy of the programs and maps. It

- loads compiled policies into the rule maps under a policy id (all or nothing),
- guards cgroups: writes cgroup id -> policy, then attaches the four sock_addr programs
  (only to cgroups that pass :func:`assert_safe_target`),
- hands ring buffer records to a callback, and exposes counters and aggregates,
- detaches everything it attached on :meth:`close` (also called on errors).

The exec tracepoint is attached when the module loads; it does nothing for a process
whose cgroup (or guarded ancestor) is not in ``cgroup_policy``.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from nodeguard import log
from nodeguard.bpf import abi, maps
from nodeguard.errors import BccMissingError, BpfLoadError, NodeguardError
from nodeguard.identity.cgroupfs import assert_safe_target, cgroup_id, cgroup_level
from nodeguard.policy.compiled import CompiledPolicy, Mode

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
GUARD_SOURCE = BPF_DIR / "guard.bpf.c"
BPF_F_ALLOW_MULTI = 1 << 1

# attach type numbers from uapi/linux/bpf.h (enum bpf_attach_type)
ATTACH_INET4_CONNECT = 10
ATTACH_INET6_CONNECT = 11
ATTACH_UDP4_SENDMSG = 14
ATTACH_UDP6_SENDMSG = 15
PROG_TYPE_CGROUP_SOCK_ADDR = 18

EGRESS_PROGRAMS: tuple[tuple[str, int], ...] = (
    ("ng_connect4", ATTACH_INET4_CONNECT),
    ("ng_connect6", ATTACH_INET6_CONNECT),
    ("ng_sendmsg4", ATTACH_UDP4_SENDMSG),
    ("ng_sendmsg6", ATTACH_UDP6_SENDMSG),
)

_log = log.get("nodeguard.bpf.guard")


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """Map sizes and tunables, validated before they become -D flags."""

    max_cgroups: int = 4096
    egress_max: int = 1 << 17
    exec_max: int = 1 << 14
    agg_max: int = 1 << 14
    ringbuf_pages: int = 256  # 1 MiB with 4 KiB pages; must be a power of two
    agg_window_ms: int = 1000

    def cflags(self) -> list[str]:
        for name in ("max_cgroups", "egress_max", "exec_max", "agg_max", "agg_window_ms"):
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
            "-Wno-unused-function",
        ]


@dataclass(slots=True)
class _Guarded:
    path: Path
    cgid: int
    level: int
    fd: int
    policy_id: int
    attached: list[tuple[Any, int]] = field(default_factory=list)


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


class Guard:
    """One loaded copy of the guard programs and maps."""

    def __init__(self, limits: GuardLimits | None = None) -> None:
        self.limits = limits or GuardLimits()
        bcc = import_bcc()
        self._bcc = bcc
        cflags = self.limits.cflags()
        try:
            self._bpf: Any = bcc.BPF(src_file=str(GUARD_SOURCE).encode(), cflags=cflags)
        except Exception as err:
            raise BpfLoadError(
                f"cannot compile/load {GUARD_SOURCE.name}: {err}",
                fix="run `nodeguard doctor` to see which kernel feature or header is missing",
            ) from err
        self._fns: dict[int, Any] = {}
        try:
            for name, attach_type in EGRESS_PROGRAMS:
                self._fns[attach_type] = self._bpf.load_func(
                    name.encode(), PROG_TYPE_CGROUP_SOCK_ADDR, attach_type=attach_type
                )
        except Exception as err:
            self._bpf.cleanup()
            raise BpfLoadError(f"cannot load cgroup sock_addr program: {err}") from err
        self._guarded: dict[int, _Guarded] = {}
        self._policies: dict[int, CompiledPolicy] = {}
        self._next_policy_id = 1
        self._closed = False
        self._ringbuf_open = False

    # ------------------------------------------------------------------ maps ---
    def table(self, name: str) -> Any:
        return self._bpf[name.encode()]

    def load_policy(self, policy: CompiledPolicy) -> int:
        """Write a compiled policy's rules under a new policy id. All or nothing."""
        policy_id = self._next_policy_id
        self._next_policy_id += 1
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
        except Exception as err:
            for table, key in reversed(written):
                with contextlib.suppress(Exception):
                    del table[key]
            raise BpfLoadError(
                f"cannot load policy {policy.name!r} into the kernel maps: {err}",
                fix="the rule maps may be full: raise egress_max/exec_max or split the policy",
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
            for attach_type, fn in self._fns.items():
                self._bcc.BPF.attach_func(fn, fd, attach_type, BPF_F_ALLOW_MULTI)
                entry.attached.append((fn, attach_type))
            self._write_storage(cgid, value)
        except Exception as err:
            self.unguard(cgid)
            raise BpfLoadError(f"cannot attach the egress programs to {path}: {err}") from err
        _log.debug("cgroup_guarded", cgroup=str(path), cgroup_id=cgid, policy_id=policy_id)
        return cgid

    def unguard(self, cgid: int) -> None:
        entry = self._guarded.pop(cgid, None)
        if entry is None:
            return
        for fn, attach_type in entry.attached:
            try:
                self._bcc.BPF.detach_func(fn, entry.fd, attach_type)
            except Exception as err:  # the cgroup may be gone already: that detaches too
                _log.debug("detach_failed", cgroup=str(entry.path), error=str(err))
        with contextlib.suppress(KeyError):
            del self.table("cgroup_policy")[ct.c_uint64(cgid)]
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
        for attach_type in self._fns:
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
        for key, value in self.table("agg").items():
            out.append(
                (
                    abi.AggKey.from_buffer_copy(bytes(key)),
                    abi.AggValue.from_buffer_copy(bytes(value)),
                )
            )
        return out

    # --------------------------------------------------------------- cleanup ---
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for cgid in list(self._guarded):
            self.unguard(cgid)
        with contextlib.suppress(Exception):
            self._bpf.cleanup()

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
