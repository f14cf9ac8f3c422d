"""Install a seccomp filter in the calling process (the guarded command's, between fork
and exec). Raw prctl(2)/seccomp(2) through ctypes: the standard library has neither."""

from __future__ import annotations

import ctypes as ct
import os
import platform

from nodeguard.errors import NodeguardError

PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_USER_NOTIF = 0x7FC00000
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


class _SockFprog(ct.Structure):
    _fields_ = (("len", ct.c_ushort), ("filter", ct.c_void_p))


class SeccompError(NodeguardError):
    pass


def _seccomp(op: int, flags: int, arg: ct.c_void_p | None) -> int:
    nr = _SYS_SECCOMP.get(platform.machine())
    if nr is None:
        raise SeccompError(f"seccomp is not supported on {platform.machine()} by nodeguard")
    res = int(_libc.syscall(nr, op, flags, arg))
    if res < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def install(program: bytes, *, listener: bool) -> int | None:
    """Install ``program`` (struct sock_filter[]) for this process and its future
    children; returns the user-notification listener fd when ``listener``.

    Sets no_new_privs first: an unprivileged process needs it to install a filter, and a
    guarded command must not regain privileges through a setuid program anyway.
    """
    if len(program) % 8:
        raise SeccompError("seccomp program is not a whole number of instructions")
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ct.get_errno()
        raise SeccompError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(err)}")
    buf = ct.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ct.cast(buf, ct.c_void_p))
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else 0
    try:
        fd = _seccomp(SECCOMP_SET_MODE_FILTER, flags, ct.cast(ct.byref(fprog), ct.c_void_p))
    except OSError as err:
        raise SeccompError(
            f"cannot install the seccomp filter: {err.strerror}",
            fix="the kernel needs CONFIG_SECCOMP_FILTER (run `nodeguard doctor`)",
        ) from err
    return fd if listener else None


def user_notif_available() -> bool:
    """Whether the kernel supports SECCOMP_RET_USER_NOTIF (5.0+)."""
    action = ct.c_uint32(SECCOMP_RET_USER_NOTIF)
    try:
        _seccomp(SECCOMP_GET_ACTION_AVAIL, 0, ct.cast(ct.byref(action), ct.c_void_p))
    except (OSError, SeccompError):
        return False
    return True
