"""Syscall names and named groups for per-agent syscall deny lists (``spec.syscalls``).

The policy schema validates every ``spec.syscalls.deny`` entry with :func:`entry_problem`
and the compiler expands it with :func:`resolve` and :func:`deny_numbers`; see
docs/syscall-groups.md for the groups and for what the enforcement has to get right.

Names are checked against the syscall tables of BOTH supported architectures
(:mod:`nodeguard.policy.syscall_tables`, generated from the Linux UAPI headers), so one
policy means the same on an x86_64 and an arm64 node. A name known on one architecture
only (x86_64's ``iopl``, ``open``; arm64 lacks the legacy non-``at`` calls) is accepted
and reported as architecture-specific; a name known on neither is an error with a
suggestion. ``@group`` names expand to their members.

A compiled deny list also has numbers for ``i386``, the 32-bit ABI of x86_64 kernels
(``int $0x80``, 32-bit programs), whose numbers differ: :func:`deny_numbers` maps the
names there, adding the i386-only variants that do the same thing (``clock_settime64``
for ``clock_settime``, ``setuid32`` for ``setuid``, the ``socketcall`` multiplexer for
the socket calls; :data:`I386_COUNTERPARTS`). i386 names are never accepted in policies.
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
ARCHES: Final[tuple[Arch, ...]] = ("x86_64", "arm64")  # names are validated against these
# Every table: the validated arches plus i386, the 32-bit ABI of x86_64 kernels.
TableArch = Literal["x86_64", "arm64", "i386"]
COMPILED_ARCHES: Final[tuple[TableArch, ...]] = ("x86_64", "arm64", "i386")

# uname -m spellings (and Debian/Go ones) of the supported architectures.
_ARCH_ALIASES: Final[Mapping[str, Arch]] = MappingProxyType(
    {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64"}
)
_TABLE_ARCH_ALIASES: Final[Mapping[str, TableArch]] = MappingProxyType(
    {**_ARCH_ALIASES, "i386": "i386", "i686": "i386", "ia32": "i386"}
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

_SOCKET_CALLS: Final = (
    "socket",
    "socketpair",
    "bind",
    "connect",
    "listen",
    "accept",
    "accept4",
    "getsockname",
    "getpeername",
    "sendto",
    "recvfrom",
    "shutdown",
    "setsockopt",
    "getsockopt",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
)
_SYSV_IPC_CALLS: Final = (
    "semget",
    "semctl",
    "shmget",
    "shmctl",
    "shmat",
    "shmdt",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
)

# x86_64/arm64 name -> the i386-only syscalls that do the same, denied on i386 along with
# the name itself (when i386 has it): 64-bit time (*_time64, *64), 32-bit ids (*32), large
# file offsets, old forms, and the multiplexers socketcall and ipc, which can perform any
# socket / System V IPC call and whose arguments a filter cannot see.
I386_COUNTERPARTS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        **{name: ("socketcall",) for name in _SOCKET_CALLS},
        "recvmmsg": ("socketcall", "recvmmsg_time64"),
        **{name: ("ipc",) for name in _SYSV_IPC_CALLS},
        "semop": ("ipc", "semtimedop_time64"),
        "semtimedop": ("ipc", "semtimedop_time64"),
        "umount2": ("umount",),
        "stat": ("stat64", "oldstat"),
        "lstat": ("lstat64", "oldlstat"),
        "fstat": ("fstat64", "oldfstat"),
        "newfstatat": ("fstatat64",),
        "statfs": ("statfs64",),
        "fstatfs": ("fstatfs64",),
        "truncate": ("truncate64",),
        "ftruncate": ("ftruncate64",),
        "fcntl": ("fcntl64",),
        "sendfile": ("sendfile64",),
        "lseek": ("_llseek",),
        "select": ("_newselect",),
        "mmap": ("mmap2",),
        "fadvise64": ("fadvise64_64",),
        "getdents": ("readdir",),
        "uname": ("olduname", "oldolduname"),
        "getrlimit": ("ugetrlimit",),
        "wait4": ("waitpid",),
        "setpriority": ("nice",),
        "rt_sigaction": ("sigaction", "signal"),
        "rt_sigprocmask": ("sigprocmask", "sgetmask", "ssetmask"),
        "rt_sigreturn": ("sigreturn",),
        "rt_sigsuspend": ("sigsuspend",),
        "rt_sigpending": ("sigpending",),
        "settimeofday": ("stime",),
        "clock_settime": ("clock_settime64", "stime"),
        "clock_adjtime": ("clock_adjtime64",),
        "clock_gettime": ("clock_gettime64",),
        "clock_getres": ("clock_getres_time64",),
        "clock_nanosleep": ("clock_nanosleep_time64",),
        "timer_gettime": ("timer_gettime64",),
        "timer_settime": ("timer_settime64",),
        "timerfd_gettime": ("timerfd_gettime64",),
        "timerfd_settime": ("timerfd_settime64",),
        "utimensat": ("utimensat_time64",),
        "pselect6": ("pselect6_time64",),
        "ppoll": ("ppoll_time64",),
        "io_pgetevents": ("io_pgetevents_time64",),
        "mq_timedsend": ("mq_timedsend_time64",),
        "mq_timedreceive": ("mq_timedreceive_time64",),
        "rt_sigtimedwait": ("rt_sigtimedwait_time64",),
        "futex": ("futex_time64",),
        "sched_rr_get_interval": ("sched_rr_get_interval_time64",),
        **{
            name: (f"{name}32",)
            for name in (
                "chown",
                "fchown",
                "lchown",
                "setuid",
                "setgid",
                "setreuid",
                "setregid",
                "setresuid",
                "setresgid",
                "setfsuid",
                "setfsgid",
                "setgroups",
                "getuid",
                "geteuid",
                "getgid",
                "getegid",
                "getresuid",
                "getresgid",
                "getgroups",
            )
        },
    }
)


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


def normalize_table_arch(arch: str) -> TableArch:
    """Like :func:`normalize_arch`, also accepting ``i386`` (``i686``, ``ia32``): the
    32-bit ABI of x86_64 kernels, which has a table but is never used to validate names."""
    try:
        return _TABLE_ARCH_ALIASES[arch]
    except KeyError:
        raise ValueError(
            f"unsupported architecture {arch!r}: syscall tables exist for "
            f"{', '.join(COMPILED_ARCHES)}"
        ) from None


def syscall_number(name: str, arch: str) -> int | None:
    """Number of ``name`` on ``arch`` (``x86_64``, ``arm64``, ``i386`` or an alias), or None
    if the arch has no such syscall."""
    return TABLES[normalize_table_arch(arch)].get(name)


def syscall_name(number: int, arch: str) -> str | None:
    """Name of syscall ``number`` on ``arch`` (for decoding events), or None."""
    return _reverse(normalize_table_arch(arch)).get(number)


@cache
def _reverse(arch: TableArch) -> Mapping[int, str]:
    return MappingProxyType({number: name for name, number in TABLES[arch].items()})


@cache
def _known_names() -> frozenset[str]:
    """Names a policy may use: those of the validated arches (not i386's)."""
    known: set[str] = set()
    for arch in ARCHES:
        known.update(TABLES[arch])
    return frozenset(known)


@cache
def _i386_canonical() -> Mapping[str, tuple[str, ...]]:
    """i386-only name -> the x86_64/arm64 names it is a variant of (for messages)."""
    found: dict[str, list[str]] = {}
    for name, variants in I386_COUNTERPARTS.items():
        for variant in variants:
            if variant not in _known_names():
                found.setdefault(variant, []).append(name)
    return MappingProxyType({k: tuple(v) for k, v in found.items()})


def i386_names(names: Iterable[str]) -> tuple[str, ...]:
    """The i386 syscalls denied for the (expanded, x86_64/arm64) ``names``: each name that
    i386 has, plus its i386-only variants (:data:`I386_COUNTERPARTS`); sorted, unique."""
    table = TABLES["i386"]
    found: set[str] = set()
    for name in names:
        if name in table:
            found.add(name)
        found.update(v for v in I386_COUNTERPARTS.get(name, ()) if v in table)
    return tuple(sorted(found))


def deny_numbers(names: Iterable[str], arch: str) -> tuple[int, ...]:
    """Sorted syscall numbers to deny on ``arch`` for the expanded ``names`` (syscall names,
    no groups): the numbers of the names that exist there; on ``i386`` those of
    :func:`i386_names`."""
    canonical = normalize_table_arch(arch)
    table = TABLES[canonical]
    if canonical == "i386":
        return tuple(sorted(table[n] for n in i386_names(names)))
    return tuple(sorted({table[n] for n in names if n in table}))


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


def entry_problem(entry: str) -> str | None:
    """None when ``entry`` may be in a deny list (a syscall on x86_64 or arm64, or a group);
    otherwise what is wrong with it and how to fix it, for the policy schema."""
    if entry in SYSCALL_GROUPS or entry in _known_names():
        return None
    suggestions = _suggest(entry)
    message = _describe_problem(entry, suggestions)
    if not entry.strip():
        return message + "; remove it or write a syscall name"
    if entry.startswith("@"):
        return message + f"; groups are {_join(sorted(SYSCALL_GROUPS))} (docs/syscall-groups.md)"
    variant_of = _i386_canonical().get(entry)
    if variant_of:
        intro = f"{entry!r} is an i386 (32-bit) syscall; deny lists use x86_64/arm64 names"
        if len(variant_of) > 2:
            shown = ", ".join(repr(n) for n in variant_of[:2])
            return f"{intro}: denying any of {shown}, ... also denies {entry!r} on i386"
        names = " or ".join(repr(n) for n in variant_of)
        return f"{intro}: write {names} (its i386 forms, {entry!r} among them, are denied too)"
    if suggestions or entry.strip().isdigit():
        return message
    return (
        message + f": it is in neither the x86_64 nor the arm64 syscall table (Linux "
        f"{HEADERS_VERSION} headers); check the spelling, or use a group "
        "(docs/syscall-groups.md)"
    )


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
