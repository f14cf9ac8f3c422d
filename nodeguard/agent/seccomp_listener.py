"""The agent's seccomp listener socket: where runc hands over the notification fd of
every container whose seccomp profile has ``SCMP_ACT_NOTIFY`` rules (``listenerPath``).

runc (1.1+) connects to ``listenerPath`` while it starts such a container and sends one
message: a JSON ``ContainerProcessState`` (``{ociVersion, fds: ["seccompFd"], pid,
metadata, state: {ociVersion, id, status, pid, bundle, annotations}}``) with the fds,
in the same order as ``fds``, as SCM_RIGHTS. The agent keeps the ``seccompFd`` and
serves it (:class:`nodeguard.seccomp.notify.NotifyServer`); other fds are closed.

If nobody listens, runc cannot start the container: a profile that needs the listener
fails closed while the agent is down.

The socket is created mode 0600 (root only: runc runs as root), bound under a temporary
name and renamed into place, like the API socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeguard import log
from nodeguard.errors import NodeguardError

SECCOMP_FD_NAME = "seccompFd"
MAX_MESSAGE = 64 * 1024
MAX_FDS = 8
SOCKET_MODE = 0o600
RECV_TIMEOUT_S = 5.0

_log = log.get("nodeguard.agent.seccomp_listener")


class ListenerError(NodeguardError):
    """The seccomp listener socket cannot be created."""


@dataclass(frozen=True, slots=True)
class ProcessState:
    """What runc says about the container whose seccomp fd it sends."""

    container_id: str
    pid: int  # the container's init process (host pid namespace)
    annotations: dict[str, str] = field(default_factory=dict)
    metadata: str = ""  # the profile's listenerMetadata
    fd_index: int = 0  # index of the seccomp fd among the received fds


def parse_process_state(data: bytes) -> ProcessState:
    """runc's ContainerProcessState JSON -> ProcessState; ValueError names the problem."""
    try:
        doc: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"not a JSON ContainerProcessState: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError("the ContainerProcessState is not a JSON object")
    fds = doc.get("fds")
    if not isinstance(fds, list) or SECCOMP_FD_NAME not in fds:
        raise ValueError(f"fds {fds!r:.80} does not name a {SECCOMP_FD_NAME!r}")
    state = doc.get("state")
    if not isinstance(state, dict):
        state = {}
    container_id = state.get("id")
    if not isinstance(container_id, str):
        container_id = ""
    pid = state.get("pid") or doc.get("pid") or 0
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        pid = 0
    raw_annotations = state.get("annotations")
    annotations = (
        {k: v for k, v in raw_annotations.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(raw_annotations, dict)
        else {}
    )
    metadata = doc.get("metadata")
    return ProcessState(
        container_id=container_id,
        pid=pid,
        annotations=annotations,
        metadata=metadata if isinstance(metadata, str) else "",
        fd_index=fds.index(SECCOMP_FD_NAME),
    )


class SeccompListenerServer:
    """Accept runc's connections on ``path`` and hand ``(fd, state)`` to ``on_fd`` (which
    owns the fd from then on; it is closed if ``on_fd`` raises)."""

    def __init__(self, path: Path, on_fd: Callable[[int, ProcessState], None]) -> None:
        self.path = Path(path)
        self.on_fd = on_fd
        self.received = 0
        self.rejected = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        path = self.path
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.bind(str(tmp))
                os.chmod(tmp, SOCKET_MODE)
                sock.listen(128)
                os.replace(tmp, path)
            except OSError:
                sock.close()
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        except OSError as err:
            raise ListenerError(
                f"cannot create the seccomp listener socket {path}: {err.strerror or err}",
                fix="run the agent as root and make seccompListenerPath's directory writable "
                "(the DaemonSet mounts /run/nodeguard from the host)",
            ) from err
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="seccomp-listener", daemon=True)
        self._thread.start()
        _log.info("seccomp_listener_started", path=str(path))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as err:
                if self._stop.is_set():
                    return
                _log.warning("seccomp_listener_accept_failed", error=str(err))
                continue
            with conn:
                self._receive(conn)

    def _receive(self, conn: socket.socket) -> None:
        conn.settimeout(RECV_TIMEOUT_S)
        fds: list[int] = []
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, MAX_FDS)
            state = parse_process_state(data)
            if state.fd_index >= len(fds):
                raise ValueError(f"{len(fds)} fds received, the seccomp fd is #{state.fd_index}")
        except (OSError, ValueError) as err:
            self.rejected += 1
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _log.warning("seccomp_listener_bad_message", error=str(err))
            return
        seccomp_fd = fds[state.fd_index]
        for i, fd in enumerate(fds):
            if i != state.fd_index:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.received += 1
        try:
            self.on_fd(seccomp_fd, state)
        except Exception as err:
            with contextlib.suppress(OSError):
                os.close(seccomp_fd)
            _log.exception("seccomp_listener_handler_failed", error=str(err))
