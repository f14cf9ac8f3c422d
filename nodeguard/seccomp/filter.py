"""The seccomp filter that enforces a policy's syscall deny list and the socket families
the cgroup sock_create hook cannot see (everything but AF_INET/AF_INET6).

Pure: :func:`plan` picks what the filter must do for a policy and mode, :func:`assemble`
turns that into classic BPF for one architecture. Installing it is
:mod:`nodeguard.seccomp.install`; answering its socket notifications is
:mod:`nodeguard.seccomp.notify`.

Shape of the program (every conditional jump skips at most one instruction; longer
jumps are ``ja``, so the program never hits cBPF's 8-bit jump limit):

    load arch
      native   -> load nr; x32 numbers -> kill; each denied nr -> kill;
                  socket/socketpair -> socket checks; else allow
      i386     -> (x86_64 only) the same with the i386 numbers; socketcall, whose
                  arguments are pointers, is killed when socket families are denied
      other    -> kill (no ABI the policy was checked for)
    socket checks: family, then type, then protocol -> notify (EPERM + report), else allow

Syscall rules only read the syscall number and arch, so the kernel's seccomp action
cache marks every other syscall "always allow" and skips the filter for it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from nodeguard.bpf.abi import SOCK_ALL
from nodeguard.policy.compiled import AF_INET, CompiledPolicy, Mode, SocketDeny
from nodeguard.policy.sockets import AF_PACKET, SOCK_PACKET

# linux/audit.h
AUDIT_ARCH_X86_64: Final = 0xC000003E
AUDIT_ARCH_I386: Final = 0x40000003
AUDIT_ARCH_AARCH64: Final = 0xC00000B7
X32_SYSCALL_BIT: Final = 0x40000000

# linux/seccomp.h return values
RET_KILL_PROCESS: Final = 0x80000000
RET_ERRNO: Final = 0x00050000
RET_USER_NOTIF: Final = 0x7FC00000
RET_ALLOW: Final = 0x7FFF0000
EPERM: Final = 1

# struct seccomp_data offsets
_NR, _ARCH, _ARG0, _ARG1, _ARG2 = 0, 4, 16, 24, 32

# classic BPF opcodes (linux/filter.h)
_LD_W_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_JGE_K: Final = 0x35
_JA: Final = 0x05
_AND_K: Final = 0x54
_RET_K: Final = 0x06

BPF_MAXINSNS: Final = 4096


@dataclass(frozen=True, slots=True)
class ArchInfo:
    audit_arch: int
    socket: int
    socketpair: int


ARCHES: Final[dict[str, ArchInfo]] = {
    "x86_64": ArchInfo(AUDIT_ARCH_X86_64, socket=41, socketpair=53),
    "arm64": ArchInfo(AUDIT_ARCH_AARCH64, socket=198, socketpair=199),
}
I386: Final = ArchInfo(AUDIT_ARCH_I386, socket=359, socketpair=360)
I386_SOCKETCALL: Final = 102


@dataclass(frozen=True, slots=True)
class SeccompPlan:
    """What the filter enforces for one policy in one mode."""

    kill: dict[str, tuple[int, ...]]  # arch ("x86_64", "arm64", "i386") -> syscall numbers
    sockets: tuple[SocketDeny, ...]  # families refused here (not AF_INET/AF_INET6)

    @property
    def needs_listener(self) -> bool:
        """Socket refusals go through a user notification: the supervisor answers EPERM
        and reports the attempt (seccomp itself cannot tell anyone about an errno)."""
        return bool(self.sockets)


def plan(policy: CompiledPolicy, mode: Mode | None = None) -> SeccompPlan | None:
    """The filter a policy needs, or None when nothing is left for seccomp to enforce
    (no deny lists, or audit: audit is observed by tracepoints and never blocks)."""
    effective = mode or policy.mode
    kill: dict[str, tuple[int, ...]] = {}
    if policy.syscalls is not None and not policy.syscall_audit(effective):
        kill = {arch: tuple(nrs) for arch, nrs in policy.syscalls.numbers.items()}
    sockets: tuple[SocketDeny, ...] = ()
    if policy.sockets is not None and effective != "audit":
        sockets = policy.sockets.seccomp_families
        # socket(AF_INET, SOCK_PACKET) is made a packet socket by the kernel, which the
        # inet sock_create hook never sees: refuse it here when packet sockets are denied.
        if any(d.family == AF_PACKET and d.types & (1 << SOCK_PACKET) for d in sockets):
            sockets = (*sockets, SocketDeny(AF_INET, 1 << SOCK_PACKET, SOCK_ALL, ("packet",)))
    if not any(kill.values()) and not sockets:
        return None
    return SeccompPlan(kill=kill, sockets=sockets)


class _Asm:
    """A tiny assembler: instructions with symbolic forward ``ja`` targets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int, int, int | str]] = []
        self.labels: dict[str, int] = {}

    def emit(self, code: int, k: int | str, jt: int = 0, jf: int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def load(self, offset: int) -> None:
        self.emit(_LD_W_ABS, offset)

    def ret(self, value: int) -> None:
        self.emit(_RET_K, value)

    def jump(self, label: str) -> None:
        self.emit(_JA, label)

    def if_eq(self, value: int, label: str) -> None:
        """Go to ``label`` when A == value."""
        self.emit(_JEQ_K, value, jt=0, jf=1)
        self.jump(label)

    def kill_if_eq(self, value: int) -> None:
        self.emit(_JEQ_K, value, jt=0, jf=1)
        self.ret(RET_KILL_PROCESS)

    def assemble(self) -> bytes:
        if len(self.code) > BPF_MAXINSNS:
            raise ValueError(f"seccomp filter of {len(self.code)} instructions > {BPF_MAXINSNS}")
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self.code):
            value = k
            if isinstance(k, str):
                target = self.labels[k]
                if target <= pc:
                    raise ValueError(f"backward jump to {k}")
                value = target - pc - 1
            out += struct.pack("<HBBI", code, jt, jf, value)
        return bytes(out)


def _bits(mask: int) -> list[int]:
    return [b for b in range(32) if mask & (1 << b)]


def _syscall_block(
    asm: _Asm, nrs: Sequence[int], info: ArchInfo, sockets: bool, *, i386: bool
) -> None:
    asm.load(_NR)
    for nr in sorted(set(nrs)):
        asm.kill_if_eq(nr)
    if sockets:
        if i386:
            asm.kill_if_eq(I386_SOCKETCALL)
        asm.if_eq(info.socket, "sockets")
        asm.if_eq(info.socketpair, "sockets")
    asm.ret(RET_ALLOW)


def assemble(p: SeccompPlan, arch: str) -> bytes:
    """The filter for ``arch`` ("x86_64" or "arm64") as struct sock_filter[] bytes."""
    info = ARCHES[arch]
    asm = _Asm()
    sockets = bool(p.sockets)
    asm.load(_ARCH)
    asm.if_eq(info.audit_arch, "native")
    if arch == "x86_64":
        asm.if_eq(AUDIT_ARCH_I386, "i386")
    asm.ret(RET_KILL_PROCESS)

    asm.label("native")
    if arch == "x86_64":
        asm.load(_NR)
        asm.emit(_JGE_K, X32_SYSCALL_BIT, jt=0, jf=1)
        asm.ret(RET_KILL_PROCESS)
    _syscall_block(asm, p.kill.get(arch, ()), info, sockets, i386=False)

    if arch == "x86_64":
        asm.label("i386")
        _syscall_block(asm, p.kill.get("i386", ()), I386, sockets, i386=True)

    if sockets:
        asm.label("sockets")
        deny = RET_USER_NOTIF
        for i, rule in enumerate(p.sockets):
            nxt = f"rule{i + 1}"
            asm.load(_ARG0)
            asm.emit(_JEQ_K, rule.family, jt=1, jf=0)  # family matches: skip the ja
            asm.jump(nxt)
            if rule.types != SOCK_ALL:
                asm.load(_ARG1)
                asm.emit(_AND_K, 0xF)
                for t in _bits(rule.types):
                    asm.if_eq(t, f"types{i}")
                asm.jump(nxt)
                asm.label(f"types{i}")
            if rule.protocols != SOCK_ALL:
                asm.load(_ARG2)
                for proto in _bits(rule.protocols):
                    asm.if_eq(proto, "deny")
                asm.jump(nxt)
            else:
                asm.jump("deny")
            asm.label(nxt)
        asm.ret(RET_ALLOW)
        asm.label("deny")
        asm.ret(deny)
    return asm.assemble()
