"""Syscall names and named groups for per-agent syscall deny lists.

NOT wired into the policy schema on purpose: a policy that accepts ``spec.syscalls``
before the kernel enforces it would promise a protection that does not exist. The
policy layer calls :func:`resolve` only once enforcement lands (see
docs/syscall-groups.md for what that enforcement has to get right).

Names are checked against the syscall tables of BOTH supported architectures
(:mod:`nodeguard.policy.syscall_tables`, generated from the Linux UAPI headers), so one
policy means the same on an x86_64 and an arm64 node. A name known on one architecture
only (x86_64's ``iopl``, ``open``; arm64 lacks the legacy non-``at`` calls) is accepted
and reported as architecture-specific; a name known on neither is an error with a
suggestion. ``@group`` names expand to their members.
"""

from __future__ import annotations

import difflib
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Final, Literal

from nodeguard.errors import NodeguardError
from nodeguard.policy.syscall_tables import HEADERS_VERSION, TABLES

Arch = Literal["x86_64", "arm64"]
ARCHES: Final[tuple[Arch, ...]] = ("x86_64", "arm64")

# uname -m spellings (and Debian/Go ones) of the supported architectures.
_ARCH_ALIASES: Final[Mapping[str, Arch]] = MappingProxyType(
    {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}
)

# Each group is a well-defined capability an agent never needs; docs/syscall-groups.md
# says why each member is there and what the group does NOT cover.
SYSCALL_GROUPS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "@mount": (
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
        ),
        # Not clone/clone3: every fork and thread goes through them (glibc >= 2.34 creates
        # threads with clone3), so denying them kills ordinary programs; their CLONE_NEW*
        # flags need an argument check, which a name cannot express.
        "@namespaces": ("unshare", "setns"),
        "@module": ("init_module", "finit_module", "delete_module"),
        "@tracing": (
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "pidfd_getfd",
            "perf_event_open",
        ),
        "@bpf": ("bpf",),
        "@reboot": ("reboot", "kexec_load", "kexec_file_load"),
        "@clock": ("settimeofday", "clock_settime", "clock_adjtime", "adjtimex"),
        "@swap": ("swapon", "swapoff"),
        "@raw-io": ("ioperm", "iopl"),
        "@keyring": ("add_key", "request_key", "keyctl"),
        "@io-uring": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    }
)

GROUP_SUMMARIES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "@mount": "mount, unmount and re-root file systems (old and new mount API)",
        "@namespaces": "create or join namespaces with unshare/setns",
        "@module": "load and unload kernel modules",
        "@tracing": "read or write other processes (ptrace and friends), perf events",
        "@bpf": "load BPF programs and maps",
        "@reboot": "reboot, power off, or boot into another kernel (kexec)",
        "@clock": "set or adjust the system clock",
        "@swap": "enable or disable swap devices",
        "@raw-io": "direct I/O port access (x86_64 only)",
        "@keyring": "kernel keyring (keys shared beyond the process)",
        "@io-uring": "io_uring, whose operations per-syscall hooks do not see",
    }
)

# Sets of syscalls that can each reach the same effect, with the advice given when a deny
# list names some but not all of them (the rest would be an easy way around the deny).
SAME_EFFECT: Final[tuple[tuple[frozenset[str], str], ...]] = (
    (frozenset({"open", "openat", "openat2", "creat"}), "deny all of them"),
    (frozenset({"execve", "execveat"}), "deny both"),
    (frozenset({"fork", "vfork", "clone", "clone3"}), "deny all of them"),
    (
        frozenset(
            {
                "mount",
                "fsopen",
                "fsconfig",
                "fsmount",
                "fspick",
                "move_mount",
                "open_tree",
                "mount_setattr",
            }
        ),
        "deny @mount",
    ),
    (frozenset({"ptrace", "process_vm_readv", "process_vm_writev"}), "deny @tracing"),
    (frozenset({"init_module", "finit_module"}), "deny @module"),
    (frozenset({"kexec_load", "kexec_file_load"}), "deny @reboot"),
    (
        frozenset({"settimeofday", "clock_settime", "clock_adjtime", "adjtimex"}),
        "deny @clock",
    ),
    (frozenset({"rename", "renameat", "renameat2"}), "deny all of them"),
    (frozenset({"unlink", "unlinkat", "rmdir"}), "deny all of them"),
    (frozenset({"mkdir", "mkdirat"}), "deny both"),
    (frozenset({"link", "linkat"}), "deny both"),
    (frozenset({"symlink", "symlinkat"}), "deny both"),
    (frozenset({"mknod", "mknodat"}), "deny both"),
    (frozenset({"chmod", "fchmod", "fchmodat"}), "deny all of them"),
    (frozenset({"chown", "fchown", "lchown", "fchownat"}), "deny all of them"),
    (frozenset({"setuid", "setreuid", "setresuid"}), "deny all of them"),
    (frozenset({"setgid", "setregid", "setresgid"}), "deny all of them"),
)

# Syscalls whose effect an io_uring operation can also produce (io_uring_enter(2)
# opcodes). Per-syscall hooks never see io_uring operations, so denying one of these
# without @io-uring leaves a way around the deny.
IO_URING_REACHABLE: Final[frozenset[str]] = frozenset(
    {
        "open",
        "openat",
        "openat2",
        "creat",
        "close",
        "read",
        "readv",
        "pread64",
        "preadv",
        "preadv2",
        "write",
        "writev",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "statx",
        "fsync",
        "fdatasync",
        "sync_file_range",
        "fallocate",
        "fadvise64",
        "madvise",
        "splice",
        "tee",
        "rename",
        "renameat",
        "renameat2",
        "unlink",
        "unlinkat",
        "rmdir",
        "mkdir",
        "mkdirat",
        "symlink",
        "symlinkat",
        "link",
        "linkat",
        "setxattr",
        "fsetxattr",
        "getxattr",
        "fgetxattr",
        "socket",
        "connect",
        "accept",
        "accept4",
        "bind",
        "listen",
        "shutdown",
        "sendmsg",
        "recvmsg",
        "sendto",
        "recvfrom",
        "epoll_ctl",
        "ftruncate",
        "waitid",
        "futex",
    }
)

_URING_GUARD: Final = "io_uring_setup"


class SyscallNameError(NodeguardError, ValueError):
    """A deny list names something that is neither a syscall (on any arch) nor a group.

    ``problems`` maps each bad entry, in input order, to the suggestions found for it
    (possibly none).
    """

    def __init__(self, problems: Mapping[str, tuple[str, ...]]) -> None:
        self.problems = dict(problems)
        super().__init__(
            "; ".join(_describe_problem(e, s) for e, s in self.problems.items()),
            fix=(
                f"names are checked against the x86_64 and arm64 syscall tables (Linux "
                f"{HEADERS_VERSION} headers); groups: {', '.join(sorted(SYSCALL_GROUPS))} "
                "(docs/syscall-groups.md)"
            ),
        )


def _describe_problem(entry: str, suggestions: tuple[str, ...]) -> str:
    if not entry.strip():
        return "empty syscall name"
    what = "group" if entry.startswith("@") else "syscall"
    text = f"unknown {what} {entry!r}"
    if entry.strip().isdigit():
        return text + " (use syscall names, not numbers: numbers differ between arches)"
    if suggestions:
        return text + f" (did you mean {' or '.join(repr(s) for s in suggestions)}?)"
    return text


@dataclass(frozen=True)
class ResolvedSyscalls:
    """A validated deny list, expanded and ready to compile per architecture.

    - ``names``: every syscall name after group expansion, sorted, without duplicates
    - ``numbers``: for each requested arch, the sorted numbers of those names that exist
      there (an arch-specific name simply has no number on the other arch)
    - ``origins``: name -> the entries of the input that brought it in (the name itself
      and/or groups), for messages and events ("denied by @mount")
    - ``arch_specific``: name -> the arches it exists on, for names not on every arch
      (whatever arches were requested)
    - ``warnings``: human-readable notes: names with nothing to deny on a requested arch,
      deny lists that leave a same-effect syscall or io_uring open
    """

    arches: tuple[Arch, ...]
    names: tuple[str, ...]
    numbers: Mapping[Arch, tuple[int, ...]]
    origins: Mapping[str, tuple[str, ...]]
    arch_specific: Mapping[str, tuple[Arch, ...]]
    warnings: tuple[str, ...]

    def numbers_for(self, arch: str) -> tuple[int, ...]:
        """Sorted syscall numbers to deny on ``arch`` (which must have been requested)."""
        canonical = normalize_arch(arch)
        if canonical not in self.numbers:
            raise ValueError(f"arch {arch!r} was not resolved (resolved: {self.arches})")
        return self.numbers[canonical]

    def names_for(self, arch: str) -> tuple[str, ...]:
        """Sorted names that exist on ``arch`` (the ones an enforcement can hook there)."""
        table = TABLES[normalize_arch(arch)]
        return tuple(name for name in self.names if name in table)


def normalize_arch(arch: str) -> Arch:
    """``x86_64``/``amd64`` -> ``x86_64``; ``arm64``/``aarch64`` -> ``arm64``; else ValueError."""
    try:
        return _ARCH_ALIASES[arch]
    except KeyError:
        raise ValueError(
            f"unsupported architecture {arch!r}: syscall tables exist for {', '.join(ARCHES)}"
        ) from None


def host_arch() -> Arch:
    """The architecture of the running machine (ValueError on an unsupported one)."""
    return normalize_arch(platform.machine())


def syscall_number(name: str, arch: str) -> int | None:
    """Number of ``name`` on ``arch``, or None if the arch has no such syscall."""
    return TABLES[normalize_arch(arch)].get(name)


def syscall_name(number: int, arch: str) -> str | None:
    """Name of syscall ``number`` on ``arch`` (for decoding events), or None."""
    return _reverse(normalize_arch(arch)).get(number)


@cache
def _reverse(arch: Arch) -> Mapping[int, str]:
    return MappingProxyType({number: name for name, number in TABLES[arch].items()})


@cache
def _known_names() -> frozenset[str]:
    known: set[str] = set()
    for table in TABLES.values():
        known.update(table)
    return frozenset(known)


def _suggest(entry: str) -> tuple[str, ...]:
    """Likely meant names for a bad entry: normalised spelling first, then close matches."""
    known = _known_names()
    bare = entry.strip().lower()
    for prefix in ("sys_enter_", "__nr_", "sys_", "@"):
        bare = bare.removeprefix(prefix)
    exact = [c for c in (bare, f"@{bare}") if c != entry and (c in known or c in SYSCALL_GROUPS)]
    if exact:
        return tuple(exact)
    pool = sorted(SYSCALL_GROUPS) if entry.startswith("@") else sorted(known)
    close = difflib.get_close_matches(entry.strip().lower(), pool, n=3, cutoff=0.7)
    if not close and entry.startswith("@"):  # "@ptrace": a syscall written as a group
        close = difflib.get_close_matches(bare, sorted(known), n=3, cutoff=0.7)
    return tuple(close)


def _join(items: Iterable[str]) -> str:
    return ", ".join(items)


def resolve(names: Iterable[str], arch: str | None = None) -> ResolvedSyscalls:
    """Validate and expand a syscall deny list.

    ``names`` holds syscall names and ``@group`` names. Every entry is checked against
    the tables of all supported arches; an entry known on none raises
    :class:`SyscallNameError` listing every bad entry with suggestions. ``arch`` selects
    the arches to compute numbers (and arch warnings) for: one arch (``x86_64``,
    ``arm64`` or an alias such as ``aarch64``), or all when None.
    """
    if isinstance(names, str):
        raise TypeError("resolve() takes a list of names, not one string")
    arches: tuple[Arch, ...] = ARCHES if arch is None else (normalize_arch(arch),)
    known = _known_names()

    entries: list[str] = []
    problems: dict[str, tuple[str, ...]] = {}
    for entry in names:
        if not isinstance(entry, str):
            raise TypeError(f"syscall names are strings, got {type(entry).__name__} {entry!r}")
        if entry in entries:
            continue  # duplicates collapse
        if entry in SYSCALL_GROUPS or entry in known:
            entries.append(entry)
            continue
        problems[entry] = _suggest(entry)
    if problems:
        raise SyscallNameError(problems)

    origins: dict[str, list[str]] = {}
    for entry in entries:
        for name in SYSCALL_GROUPS.get(entry, (entry,)):
            origins.setdefault(name, []).append(entry)
    names_sorted = tuple(sorted(origins))
    denied = frozenset(names_sorted)

    arch_specific: dict[str, tuple[Arch, ...]] = {}
    for name in names_sorted:
        present = tuple(a for a in ARCHES if name in TABLES[a])
        if len(present) != len(ARCHES):
            arch_specific[name] = present

    warnings: list[str] = []
    for entry in entries:
        members = SYSCALL_GROUPS.get(entry, (entry,))
        for a in arches:
            missing = [m for m in members if m not in TABLES[a]]
            if not missing:
                continue
            if entry in SYSCALL_GROUPS:
                warnings.append(
                    f"{entry}: {_join(missing)} {'does' if len(missing) == 1 else 'do'} "
                    f"not exist on {a}: nothing to deny there"
                )
            else:
                warnings.append(f"{entry!r} does not exist on {a}: nothing to deny there")

    for group, advice in SAME_EFFECT:
        present_denied = sorted(group & denied)
        if not present_denied:
            continue
        missing = sorted(m for m in group - denied if any(m in TABLES[a] for a in arches))
        if missing:
            warnings.append(
                f"{_join(present_denied)} denied but {_join(missing)} can do the same "
                f"and {'is' if len(missing) == 1 else 'are'} not: {advice}"
            )

    if _URING_GUARD not in denied:
        via_uring = sorted(denied & IO_URING_REACHABLE)
        if via_uring:
            warnings.append(
                f"{_join(via_uring)} can also be done through io_uring, which per-syscall "
                "hooks do not see: deny @io-uring as well"
            )

    numbers: dict[Arch, tuple[int, ...]] = {
        a: tuple(sorted(TABLES[a][n] for n in names_sorted if n in TABLES[a])) for a in arches
    }
    return ResolvedSyscalls(
        arches=arches,
        names=names_sorted,
        numbers=MappingProxyType(numbers),
        origins=MappingProxyType({n: tuple(o) for n, o in origins.items()}),
        arch_specific=MappingProxyType(arch_specific),
        warnings=tuple(warnings),
    )
