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

:class:`NotifyServer` serves any number of listener fds from one poll thread, each with
its own policy (the node agent: one fd per container, handed over by runc);
:class:`SocketNotifier` is one listener served on its own thread (``nodeguard run``). A
listener whose filter has no process left (POLLHUP) is closed and forgotten.
"""

from __future__ import annotations

import contextlib
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
from nodeguard.events.build import socket_key_addr
from nodeguard.events.decode import SOCKET_SIZE, RawHeader, RawSocket, encode
from nodeguard.policy.compiled import CompiledSockets
from nodeguard.policy.sockets import effective_family
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


def _tgid_comm(tid: int) -> tuple[int, str]:
    tgid = tid
    try:
        for line in Path(f"/proc/{tid}/status").read_text().splitlines():
            if line.startswith("Tgid:"):
                tgid = int(line.split()[1])
                break
        comm = Path(f"/proc/{tid}/comm").read_text(errors="replace").rstrip("\n")
    except (OSError, ValueError):
        comm = ""
    return tgid, comm


@dataclass(slots=True)
class _Agg:
    count: int
    first_ns: int
    last_ns: int
    last_emit_ns: int


# What a listener reports under: (policy id, the policy's denied socket kinds or None).
PolicyOf = Callable[[], tuple[int, CompiledSockets | None]]


@dataclass(slots=True)
class Listener:
    """One seccomp listener fd and whom its notifications belong to. ``policy_of`` is
    asked at every notification (a pod's policy may change while its container runs);
    ``cgroup_of(tid)`` gives the caller's cgroup id."""

    fd: int
    policy_of: PolicyOf
    cgroup_of: Callable[[int], int]
    label: str = ""
    answered: int = 0
    allowed: int = 0


class NotifyServer:
    """Answer the notifications of many listener fds on one thread until :meth:`stop`.

    ``emit(record_bytes)`` runs on that thread. Every notification is answered EPERM (the
    filters only notify kinds a policy denies); one record per kind per ``window_ns`` with
    cumulative counts, like the kernel's aggregation.
    """

    def __init__(
        self,
        *,
        emit: Callable[[bytes], None],
        window_ns: int = 1_000_000_000,
        name: str = "seccomp-notify",
    ) -> None:
        self._emit = emit
        self._window_ns = window_ns
        self._agg: dict[tuple[int, int, int, int, int], _Agg] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listeners: dict[int, Listener] = {}
        self._pending: list[Listener] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.answered = 0
        self.allowed = 0  # notifications for a kind the policy does not deny (never expected)
        self.closed = 0  # listeners closed after their last process exited
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    # -- public

    def start(self) -> None:
        self._thread.start()

    def add(self, listener: Listener) -> None:
        """Serve ``listener`` (the server owns its fd from now on and closes it)."""
        with self._lock:
            self._pending.append(listener)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def listeners(self) -> list[Listener]:
        with self._lock:
            return [*self._listeners.values(), *self._pending]

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            for listener in [*self._listeners.values(), *self._pending]:
                with contextlib.suppress(OSError):
                    os.close(listener.fd)
            self._listeners.clear()
            self._pending.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def aggregates(self) -> list[tuple[abi.AggKey, abi.AggValue]]:
        """Cumulative counts per kind, shaped like the kernel's aggregate table."""
        out: list[tuple[abi.AggKey, abi.AggValue]] = []
        with self._lock:
            for (policy_id, cgid, family, sock_type, protocol), agg in self._agg.items():
                key = abi.AggKey()
                key.cgroup_id = cgid
                key.policy_id = policy_id
                key.op = abi.Op.SOCKET
                ct.memmove(key.addr, socket_key_addr(family, sock_type, protocol), 16)
                value = abi.AggValue(agg.count, agg.first_ns, agg.last_ns, agg.last_emit_ns)
                out.append((key, value))
        return out

    def forget_cgroups(self, cgids: set[int]) -> None:
        """Drop the counts of cgroups that are gone (after their last flush)."""
        with self._lock:
            for key in [k for k in self._agg if k[1] in cgids]:
                del self._agg[key]

    # -- the thread

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            with self._lock:
                pending, self._pending = self._pending, []
                for listener in pending:
                    self._listeners[listener.fd] = listener
            for listener in pending:
                poller.register(listener.fd, select.POLLIN)
            try:
                ready = poller.poll(500)
            except InterruptedError:
                continue
            for fd, events in ready:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                served = self._listeners.get(fd)
                if served is None:
                    continue
                if events & select.POLLIN:
                    self._receive(served)
                elif events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    # every process using the filter is gone
                    poller.unregister(fd)
                    self._close(served)

    def _close(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.pop(listener.fd, None)
        with contextlib.suppress(OSError):
            os.close(listener.fd)
        self.closed += 1
        _log.debug("seccomp_listener_closed", listener=listener.label)

    def _receive(self, listener: Listener) -> None:
        buf = bytearray(NOTIF_SIZE)
        try:
            fcntl.ioctl(listener.fd, IOCTL_NOTIF_RECV, buf, True)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.EINTR):  # ENOENT: the caller died
                _log.warning("seccomp_notify_recv_failed", error=str(err), listener=listener.label)
            return
        self._handle(listener, parse_notification(bytes(buf)))

    def _handle(self, listener: Listener, n: Notification) -> None:
        family, sock_type, protocol = (int(a & 0xFFFFFFFF) for a in n.args[:3])
        family = effective_family(family, sock_type)
        policy_id, sockets = listener.policy_of()
        denied = (
            (n.arch, n.nr) in _SOCKET_NRS
            and sockets is not None
            and sockets.denied(family, sock_type, protocol)
        )
        # Always answer EPERM: the filter only notifies kinds the policy denies.
        resp = struct.pack("<QqiI", n.id, 0, -errno.EPERM, 0)
        try:
            fcntl.ioctl(listener.fd, IOCTL_NOTIF_SEND, resp)
        except OSError as err:
            if err.errno != errno.ENOENT:
                _log.warning("seccomp_notify_send_failed", error=str(err))
        listener.answered += 1
        self.answered += 1
        if not denied:
            listener.allowed += 1
            self.allowed += 1
            return
        self._record(listener, policy_id, n.tid, family, sock_type & 0xF, protocol)

    def _record(  # noqa: PLR0917 - internal, one call site
        self,
        listener: Listener,
        policy_id: int,
        tid: int,
        family: int,
        sock_type: int,
        protocol: int,
    ) -> None:
        now = time.monotonic_ns()
        cgid = listener.cgroup_of(tid)
        key = (policy_id, cgid, family, sock_type, protocol)
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
        hdr = RawHeader(
            op=abi.Op.SOCKET,
            size=SOCKET_SIZE,
            policy_id=policy_id,
            ts_ns=now,
            cgroup_id=cgid,
            pid=tgid,
            tid=tid,
            verdict=abi.Verdict.BLOCKED,
            count_total=total,
            first_ns=first,
            comm=comm,
        )
        self._emit(encode(RawSocket(hdr, family, sock_type, protocol, abi.SockHook.SECCOMP_NOTIFY)))


class SocketNotifier:
    """Serve one listener fd on a thread of its own until :meth:`stop` (``nodeguard run``).
    ``emit(record_bytes)`` runs on that thread; ``cgroup_of(tid)`` gives the caller's
    cgroup id."""

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
        self._server = NotifyServer(emit=emit, window_ns=window_ns)
        self._listener = Listener(listener_fd, lambda: (policy_id, sockets), cgroup_of)
        self._server.add(self._listener)

    @property
    def answered(self) -> int:
        return self._server.answered

    @property
    def allowed(self) -> int:
        return self._server.allowed

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def aggregates(self) -> list[tuple[abi.AggKey, abi.AggValue]]:
        return self._server.aggregates()
