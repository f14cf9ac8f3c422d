"""The seccomp filter, run through a small classic-BPF interpreter (the few opcodes the
assembler emits), so every rule is checked without installing anything."""

from __future__ import annotations

import struct

import pytest

from nodeguard.bpf.abi import SOCK_ALL
from nodeguard.policy.compiled import (
    CompiledPolicy,
    CompiledSockets,
    CompiledSyscalls,
    SocketDeny,
)
from nodeguard.seccomp import filter as f


def run(prog: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:
            acc &= k
        elif code == 0x05:
            pc += k
        elif code == 0x15:
            pc += jt if acc == k else jf
        elif code == 0x35:
            pc += jt if acc >= k else jf
        elif code == 0x06:
            return int(k)
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def policy(
    syscalls: dict[str, tuple[int, ...]] | None = None,
    sockets: tuple[SocketDeny, ...] = (),
    action: str = "kill",
    mode: str = "enforce",
) -> CompiledPolicy:
    return CompiledPolicy(
        name="p",
        uid="u",
        version="v",
        mode=mode,  # type: ignore[arg-type]
        egress=None,
        exec=None,
        syscalls=CompiledSyscalls(("x",), action, syscalls) if syscalls else None,  # type: ignore[arg-type]
        sockets=CompiledSockets(sockets) if sockets else None,
    )


X86, I386 = f.AUDIT_ARCH_X86_64, f.AUDIT_ARCH_I386
KILL, ALLOW, NOTIFY = f.RET_KILL_PROCESS, f.RET_ALLOW, f.RET_USER_NOTIF
PACKET = SocketDeny(17, SOCK_ALL, SOCK_ALL, ("packet",))
NETLINK_AUDIT = SocketDeny(16, SOCK_ALL, 1 << 9, ("netlink:audit",))
UNIX_DGRAM = SocketDeny(1, (1 << 2) | (1 << 3), SOCK_ALL, ("unix:dgram",))


def test_denied_syscalls_are_killed_and_others_allowed_on_both_abis() -> None:
    p = f.plan(policy({"x86_64": (101, 272), "i386": (26, 310), "arm64": (117,)}))
    assert p is not None and not p.needs_listener
    prog = f.assemble(p, "x86_64")
    assert run(prog, 101, X86) == KILL
    assert run(prog, 272, X86) == KILL
    assert run(prog, 39, X86) == ALLOW  # getpid
    assert run(prog, 26, I386) == KILL  # i386 ptrace
    assert run(prog, 310, I386) == KILL  # i386 unshare
    assert run(prog, 101, I386) == ALLOW  # 101 is not ptrace on i386
    assert run(prog, 0x40000000 | 39, X86) == KILL  # x32 ABI
    assert run(prog, 39, 0x1234) == KILL  # an ABI nobody checked the policy for


def test_arm64_filter() -> None:
    p = f.plan(policy({"x86_64": (101,), "arm64": (117,)}))
    assert p is not None
    prog = f.assemble(p, "arm64")
    assert run(prog, 117, f.AUDIT_ARCH_AARCH64) == KILL
    assert run(prog, 101, f.AUDIT_ARCH_AARCH64) == ALLOW
    assert run(prog, 26, I386) == KILL  # no 32-bit ABI on the arm64 filter


def test_socket_families_go_to_the_supervisor() -> None:
    p = f.plan(policy(sockets=(NETLINK_AUDIT, PACKET, UNIX_DGRAM)))
    assert p is not None and p.needs_listener
    prog = f.assemble(p, "x86_64")
    socket_nr = 41
    assert run(prog, socket_nr, X86, (17, 3, 0)) == NOTIFY
    assert run(prog, socket_nr, X86, (16, 3, 9)) == NOTIFY  # netlink audit
    assert run(prog, socket_nr, X86, (16, 3, 0)) == ALLOW  # netlink route
    assert run(prog, socket_nr, X86, (1, 1, 0)) == ALLOW  # unix stream
    assert run(prog, socket_nr, X86, (1, 2 | 0x80000, 0)) == NOTIFY  # dgram|CLOEXEC
    assert run(prog, socket_nr, X86, (2, 1, 0)) == ALLOW  # inet: the cgroup hook's job
    assert run(prog, socket_nr, X86, (2, 10, 0x300)) == NOTIFY  # AF_INET SOCK_PACKET
    assert run(prog, 53, X86, (1, 2, 0)) == NOTIFY  # socketpair
    assert run(prog, 359, I386, (17, 3, 0)) == NOTIFY  # i386 socket
    assert run(prog, 102, I386, (1, 0, 0)) == KILL  # i386 socketcall: cannot be read
    assert run(prog, 102, I386) == KILL
    assert run(prog, 39, X86) == ALLOW


def test_nothing_for_seccomp_in_audit() -> None:
    assert f.plan(policy({"x86_64": (101,)}, action="audit")) is None
    assert f.plan(policy({"x86_64": (101,)}, sockets=(PACKET,), mode="audit")) is None
    assert f.plan(policy()) is None
    enforce = policy({"x86_64": (101,)})
    assert f.plan(enforce, "audit") is None


@pytest.mark.parametrize("n", [0, 1, 300])
def test_large_deny_lists_assemble(n: int) -> None:
    nrs = tuple(range(1000, 1000 + n)) or (5,)
    p = f.plan(policy({"x86_64": nrs}, sockets=(PACKET,)))
    assert p is not None
    prog = f.assemble(p, "x86_64")
    for nr in nrs:
        assert run(prog, nr, X86) == KILL
    assert run(prog, 41, X86, (17, 3, 0)) == NOTIFY
