"""Answer the seccomp filter's socket notifications: EPERM to the caller, a record to
the violation stream.

The filter sends every socket()/socketpair() of a denied family here (see
:mod:`nodeguard.seccomp.filter`). The caller is blocked in the kernel until we answer,
so a looping agent is throttled by this loop rather than flooding it. Records take the
same shape the kernel writes (``struct ng_socket_event``, hook SECCOMP_NOTIFY) and the
same aggregation rule (one record per kind per window, with cumulative counts), so the
rest of the pipeline cannot tell them apart; :meth:`SocketNotifier.aggregates` gives the
residual counts for the final flush, like the kernel's aggregate table does.

If the supervisor is gone, the kernel fails these calls with ENOSYS: still refused.
"""

from __future__ import annotations

import ctypes as ct
import errno
import fcntl
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nodeguard import log
from nodeguard.bpf import abi
from nodeguard.policy.compiled import CompiledSockets
from nodeguard.seccomp.filter import ARCHES, I386

# linux/seccomp.h ioctls: _IOWR('!', 0, struct seccomp_notif), _IOWR('!', 1, resp)
NOTIF_SIZE = 80
RESP_SIZE = 24
IOCTL_NOTIF_RECV = 0xC0000000 | (NOTIF_SIZE << 16) | (ord("!") << 8) | 0
IOCTL_NOTIF_SEND = 0xC0000000 | (RESP_SIZE << 16) | (ord("!") << 8) | 1
_SOCKET_NRS = {(a.audit_arch, a.socket) for a in (*ARCHES.values(), I386)} | {
    (a.audit_arch, a.socketpair) for a in (*ARCHES.values(), I386)
}

_log = log.get("nodeguard.seccomp.notify")


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    tid: int
    nr: int
    arch: int
    args: tuple[int, ...]


def parse_notification(buf: bytes) -> Notification:
    nid, pid, _flags, nr, arch, _ip = struct.unpack_from("<QIIiIQ", buf, 0)
    args = struct.unpack_from("<6Q", buf, 32)
    return Notification(nid, pid, nr, arch, args)


def _tgid_comm(tid: int) -> tuple[int, bytes]:
    tgid = tid
    try:
        for line in Path(f"/proc/{tid}/status").read_text().splitlines():
            if line.startswith("Tgid:"):
                tgid = int(line.split()[1])
                break
        comm = Path(f"/proc/{tid}/comm").read_bytes().rstrip(b"\n")[: abi.COMM_LEN - 1]
    except (OSError, ValueError):
        comm = b""
    return tgid, comm


@dataclass(slots=True)
class _Agg:
    count: int
    first_ns: int
    last_ns: int
    last_emit_ns: int


class SocketNotifier:
    """Serve one listener fd on a thread until :meth:`stop`. ``emit(record_bytes)`` runs on
    that thread; ``cgroup_of(tid)`` gives the caller's cgroup id."""

    def __init__(
        self,
        listener_fd: int,
        sockets: CompiledSockets,
        policy_id: int,
        *,
        cgroup_of: Callable[[int], int],
        emit: Callable[[bytes], None],
        window_ns: int = 1_000_000_000,
    ) -> None:
        self._fd = listener_fd
        self._sockets = sockets
        self._policy_id = policy_id
        self._cgroup_of = cgroup_of
        self._emit = emit
        self._window_ns = window_ns
        self._agg: dict[tuple[int, int, int, int], _Agg] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.answered = 0
        self.allowed = 0  # notifications for a kind the policy does not deny (never expected)
        self._thread = threading.Thread(target=self._serve, name="seccomp-notify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self._fd)

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            ready = poller.poll(100)
            if not ready:
                continue
            if ready[0][1] & select.POLLHUP and not ready[0][1] & select.POLLIN:
                return  # every process using the filter is gone
            buf = bytearray(NOTIF_SIZE)
            try:
                fcntl.ioctl(self._fd, IOCTL_NOTIF_RECV, buf, True)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.EINTR):
                    continue  # the caller died before we read it
                _log.warning("seccomp_notify_recv_failed", error=str(err))
                return
            self._handle(parse_notification(bytes(buf)))

    def _handle(self, n: Notification) -> None:
        family, sock_type, protocol = (int(a & 0xFFFFFFFF) for a in n.args[:3])
        denied = (n.arch, n.nr) in _SOCKET_NRS and self._sockets.denied(family, sock_type, protocol)
        # Always answer EPERM: the filter only notifies kinds the policy denies.
        resp = struct.pack("<QqiI", n.id, 0, -errno.EPERM, 0)
        try:
            fcntl.ioctl(self._fd, IOCTL_NOTIF_SEND, resp)
        except OSError as err:
            if err.errno != errno.ENOENT:
                _log.warning("seccomp_notify_send_failed", error=str(err))
        self.answered += 1
        if not denied:
            self.allowed += 1
            return
        self._record(n.tid, family, sock_type & 0xF, protocol)

    def _record(self, tid: int, family: int, sock_type: int, protocol: int) -> None:
        now = time.monotonic_ns()
        cgid = self._cgroup_of(tid)
        key = (cgid, family, sock_type, protocol)
        with self._lock:
            agg = self._agg.get(key)
            if agg is None:
                agg = self._agg[key] = _Agg(1, now, now, now)
            else:
                agg.count += 1
                agg.last_ns = now
                if now - agg.last_emit_ns < self._window_ns:
                    return
                agg.last_emit_ns = now
            total, first = agg.count, agg.first_ns
        tgid, comm = _tgid_comm(tid)
        e = abi.SocketEvent()
        h = e.hdr
        h.op = abi.Op.SOCKET
        h.size = ct.sizeof(e)
        h.policy_id = self._policy_id
        h.ts_ns = now
        h.cgroup_id = cgid
        h.pid = tgid
        h.tid = tid
        h.verdict = abi.Verdict.BLOCKED
        h.count_total = total
        h.first_ns = first
        h.comm = comm
        e.family, e.type, e.protocol = family, sock_type, protocol
        e.hook = abi.SockHook.SECCOMP_NOTIFY
        self._emit(bytes(e))

    def aggregates(self) -> list[tuple[abi.AggKey, abi.AggValue]]:
        """Cumulative counts per kind, shaped like the kernel's aggregate table."""
        out: list[tuple[abi.AggKey, abi.AggValue]] = []
        with self._lock:
            for (cgid, family, sock_type, protocol), agg in self._agg.items():
                key = abi.AggKey()
                key.cgroup_id = cgid
                key.policy_id = self._policy_id
                key.op = abi.Op.SOCKET
                ct.memmove(key.addr, struct.pack("<III", family, sock_type, protocol), 12)
                value = abi.AggValue(agg.count, agg.first_ns, agg.last_ns, agg.last_emit_ns)
                out.append((key, value))
        return out
