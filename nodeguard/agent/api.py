"""The node agent's local API: HTTP/1.1 + JSON over a UNIX socket (standard library only).

Routes (one request per connection; every error is a JSON object ``{"error", "status"}``):

- ``GET /healthz``: ``{"ok": true}`` while the server thread runs.
- ``GET /v1/status``: the :class:`~nodeguard.agent.status.StatusSnapshot` JSON.
- ``POST /v1/admit``: an :class:`AdmitRequest` in, an :class:`AdmitResponse` out. The OCI
  runtime hook (``nodeguard hook``) asks the agent to make sure a pod is enforced before
  its container's first instruction.

Request bodies over 64 KiB, bodies without ``Content-Length`` and malformed JSON get a
400; an exception in a callback gets a 500; neither stops the server.

The socket file is created mode 0660 (bound under a temporary name, chmod-ed, then
renamed into place, so it is never reachable with looser permissions); its parent
directory is created 0755. A lock file next to it (``<socket>.lock``, ``flock``) makes a
second agent on the same socket fail with a clear error instead of stealing the socket; a
socket file nobody listens on (an agent killed with SIGKILL) is replaced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import json
import os
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

from nodeguard.agent.status import StatusSnapshot
from nodeguard.errors import NodeguardError

DEFAULT_SOCKET = Path("/run/nodeguard/agent.sock")
SOCKET_ENV = "NODEGUARD_API_SOCKET"
MAX_BODY = 64 * 1024
SOCKET_MODE = 0o660
DIR_MODE = 0o755
REQUEST_TIMEOUT_S = 5.0
DISCARD_LIMIT = 1024 * 1024  # how much of a refused oversized body is read and dropped

FIX_START_AGENT = (
    "start it with `nodeguard agent --config FILE` or check the DaemonSet: "
    "kubectl -n nodeguard get pods -o wide"
)

ContainerType = Literal["sandbox", "container"]


def default_socket_path() -> Path:
    """``$NODEGUARD_API_SOCKET`` if set, else /run/nodeguard/agent.sock."""
    value = os.environ.get(SOCKET_ENV)
    return Path(value) if value else DEFAULT_SOCKET


# ---------------------------------------------------------------------- errors --


class AgentUnavailable(NodeguardError):
    """The local agent cannot be reached: no socket, nobody listening, no answer in time."""


class AgentAPIError(NodeguardError):
    """The agent answered, but with an error (or with something that is not its API)."""

    def __init__(self, message: str, *, status: int | None = None, fix: str | None = None):
        super().__init__(message, fix=fix)
        self.status = status


class AgentAlreadyRunning(NodeguardError):
    """Another agent already serves the API socket."""


class APIServerError(NodeguardError):
    """The API socket cannot be created (permissions, path in use by something else)."""


# ---------------------------------------------------------------------- admit --


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    """What the runtime hook knows about a container about to start.

    ``cgroups_path`` is the OCI ``linux.cgroupsPath`` (cgroupfs driver:
    ``/kubepods/besteffort/pod<uid>/<container id>``; systemd driver:
    ``kubepods-besteffort-pod<uid_>.slice:cri-containerd:<id>``). ``pid`` is the
    container's init process (already in its cgroup, not yet running the image), 0 when
    unknown; ``/proc/<pid>/cgroup`` is the most direct way to its cgroup.
    """

    pod_uid: str
    pod_namespace: str
    pod_name: str
    sandbox_id: str
    container_id: str
    container_type: ContainerType
    cgroups_path: str
    bundle: str
    container_name: str = ""
    pid: int = 0
    # The hook's summary of the spec's linux.seccomp (nodeguard.agent.hook.seccomp_summary);
    # None: the container has no seccomp filter.
    seccomp: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pod_uid": self.pod_uid,
            "pod_namespace": self.pod_namespace,
            "pod_name": self.pod_name,
            "sandbox_id": self.sandbox_id,
            "container_id": self.container_id,
            "container_type": self.container_type,
            "cgroups_path": self.cgroups_path,
            "bundle": self.bundle,
            "container_name": self.container_name,
            "pid": self.pid,
            "seccomp": self.seccomp,
        }

    @classmethod
    def from_dict(cls, data: Any) -> AdmitRequest:
        """Validate a decoded JSON body; ValueError names the bad field."""
        if not isinstance(data, dict):
            raise ValueError("the admit request must be a JSON object")
        strings = {}
        for key in (
            "pod_uid",
            "pod_namespace",
            "pod_name",
            "sandbox_id",
            "container_id",
            "cgroups_path",
            "bundle",
        ):
            value = data.get(key)
            if not isinstance(value, str):
                raise ValueError(f"{key}: expected a string, got {value!r:.60}")
            strings[key] = value
        container_type = data.get("container_type")
        if container_type not in ("sandbox", "container"):
            raise ValueError(
                f"container_type: expected 'sandbox' or 'container', got {container_type!r:.60}"
            )
        container_name = data.get("container_name", "")
        if not isinstance(container_name, str):
            raise ValueError(f"container_name: expected a string, got {container_name!r:.60}")
        pid = data.get("pid", 0)
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
            raise ValueError(f"pid: expected a non-negative integer, got {pid!r:.60}")
        seccomp = data.get("seccomp")
        if seccomp is not None and not isinstance(seccomp, dict):
            raise ValueError(f"seccomp: expected an object or null, got {seccomp!r:.60}")
        return cls(
            container_type=cast("ContainerType", container_type),
            container_name=container_name,
            pid=pid,
            seccomp=seccomp,
            **strings,
        )


@dataclass(frozen=True, slots=True)
class AdmitResponse:
    """The agent's answer. ``allowed``: the container may start. ``enforced``: its pod is
    under ``policy`` in the kernel now. ``reason`` is one phrase for logs and CRI errors."""

    allowed: bool
    enforced: bool
    policy: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "enforced": self.enforced,
            "policy": self.policy,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Any) -> AdmitResponse:
        if not isinstance(data, dict):
            raise ValueError("the admit response must be a JSON object")
        allowed, enforced = data.get("allowed"), data.get("enforced")
        policy, reason = data.get("policy"), data.get("reason")
        if not isinstance(allowed, bool) or not isinstance(enforced, bool):
            raise ValueError("allowed and enforced must be true or false")
        if policy is not None and not isinstance(policy, str):
            raise ValueError("policy must be a string or null")
        if not isinstance(reason, str):
            raise ValueError("reason must be a string")
        return cls(allowed, enforced, policy, reason)


# ---------------------------------------------------------------------- server --


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False
    # Many containers may start at once; a full UNIX listen backlog makes connect() fail
    # with EAGAIN instead of waiting.
    request_queue_size = 512
    api: AgentAPIServer


class _Handler(BaseHTTPRequestHandler):
    server: _UnixHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "nodeguard-agent"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S  # socket timeout for every read (slow or stuck clients)
    _routes: ClassVar[dict[str, str]] = {
        "/healthz": "GET",
        "/v1/status": "GET",
        "/v1/admit": "POST",
    }
    _pending_discard = 0

    # -- plumbing

    def log_message(self, format: str, *args: Any) -> None:
        # The base class would call address_string(), which fails for UNIX sockets.
        _safe_log("debug", "api_request", detail=format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised inside http.server (bad request line, ...) as JSON too."""
        if self.request_version == "HTTP/0.9":
            # A request line too broken to parse: answer as HTTP/1.1 anyway (with the
            # status line), nobody speaks 0.9 to this socket.
            self.request_version = "HTTP/1.1"
        self._send_json(code, {"error": message or explain or "request refused", "status": code})

    def _send_json(self, status: int, payload: dict[str, Any] | str) -> None:
        body = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.close_connection = True
        try:
            self.send_response_only(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            pass  # the client went away; nothing to tell it

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _BadRequest(400, "chunked request bodies are not supported: send Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise _BadRequest(400, "a Content-Length header is required")
        try:
            length = int(length_text)
        except ValueError:
            raise _BadRequest(400, f"bad Content-Length {length_text!r:.40}") from None
        if length < 0:
            raise _BadRequest(400, f"bad Content-Length {length}")
        if length > MAX_BODY:
            self._pending_discard = length
            raise _BadRequest(
                400, f"request body of {length} bytes is over the {MAX_BODY // 1024} KiB limit"
            )
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadRequest(400, f"request body ended after {len(body)} of {length} bytes")
        return body

    def _discard_rest(self) -> None:
        """Read (a bounded amount of) an oversized body we refused, so that a client still
        sending it can finish and read our answer instead of failing with EPIPE."""
        remaining = min(self._pending_discard, DISCARD_LIMIT)
        if not remaining:
            return
        with contextlib.suppress(OSError):
            self.connection.settimeout(0.5)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)

    # -- routing

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            expected = self._routes.get(path)
            if expected is None:
                raise _BadRequest(404, f"no such endpoint {path!r:.80}; try GET /v1/status")
            if expected != method:
                raise _BadRequest(405, f"{path} takes {expected}, not {method}")
            if path == "/healthz":
                self._send_json(200, {"ok": True})
            elif path == "/v1/status":
                self._status()
            else:
                self._admit()
        except _BadRequest as err:
            self._send_json(err.status, {"error": err.message, "status": err.status})
            self._discard_rest()
        except Exception as err:
            self._send_json(500, {"error": f"internal error: {err}", "status": 500})
            _safe_log("exception", "api_handler_failed", path=path, method=method)

    def _status(self) -> None:
        snapshot = self.server.api.snapshot()
        self._send_json(200, snapshot.to_json(indent=None))

    def _admit(self) -> None:
        body = self._read_body()
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise _BadRequest(400, f"request body is not valid JSON: {err}") from None
        try:
            request = AdmitRequest.from_dict(data)
        except ValueError as err:
            raise _BadRequest(400, f"bad admit request: {err}") from None
        response = self.server.api.admit(request)
        self._send_json(200, response.to_dict())

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


def _log() -> Any:
    from nodeguard import log  # noqa: PLC0415 - structlog only where the server runs

    return log.get("nodeguard.agent.api")


def _safe_log(level: str, event: str, **data: Any) -> None:
    """Log from a request thread: a broken log stream must not break the answer."""
    with contextlib.suppress(Exception):
        getattr(_log(), level)(event, **data)


def _peer_pid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid) or None


def _probe_listener(path: Path) -> int | Literal[False] | None:
    """Is someone listening on ``path``? False: no (stale); else the listener's pid (or
    None when it cannot be told). Other errors propagate."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return False
        except FileNotFoundError:
            return False
        return _peer_pid(probe)


class AgentAPIServer:
    """The local API, served from a background thread.

    ``snapshot`` and ``admit`` are called on the request threads (several may run at
    once); they must be thread-safe and should not block for long.
    """

    def __init__(
        self,
        socket_path: Path,
        snapshot: Callable[[], StatusSnapshot],
        admit: Callable[[AdmitRequest], AdmitResponse],
    ) -> None:
        self.socket_path = Path(socket_path)
        self.snapshot = snapshot
        self.admit = admit
        self._server: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._inode: tuple[int, int] | None = None

    @property
    def lock_path(self) -> Path:
        return self.socket_path.with_name(self.socket_path.name + ".lock")

    def start(self) -> None:
        if self._server is not None:
            return
        path = self.socket_path
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                os.chmod(path.parent, DIR_MODE)  # whatever the umask
        except OSError as err:
            raise APIServerError(
                f"cannot create the API socket directory {path.parent}: {err.strerror}",
                fix="run the agent as root, or set api_socket to a writable path",
            ) from err
        self._take_lock()
        try:
            self._check_existing()
            self._server = self._bind()
        except BaseException:
            self._release_lock()
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="nodeguard-api",
            daemon=True,
        )
        self._thread.start()
        _log().info("api_listening", socket=str(path))

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        if self._inode is not None:
            with contextlib.suppress(OSError):
                st = self.socket_path.lstat()
                if (st.st_dev, st.st_ino) == self._inode:
                    self.socket_path.unlink()
            self._inode = None
        self._release_lock()

    def __enter__(self) -> AgentAPIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start-up steps

    def _already_running(self, pid: int | None) -> AgentAlreadyRunning:
        who = f" (pid {pid})" if pid else ""
        return AgentAlreadyRunning(
            f"another nodeguard agent{who} is already serving {self.socket_path}",
            fix="run one agent per node: stop the other one, or give this one another "
            "api_socket in its config",
        )

    def _take_lock(self) -> None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise APIServerError(
                f"cannot open the API lock file {self.lock_path}: {err.strerror}",
                fix="run the agent as root, or set api_socket to a writable path",
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                pid = None
                if self.socket_path.exists():
                    with contextlib.suppress(OSError):
                        pid = _probe_listener(self.socket_path) or None
                raise self._already_running(pid) from None
            raise
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock; the file stays (harmless)
            self._lock_fd = None

    def _check_existing(self) -> None:
        path = self.socket_path
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise APIServerError(
                f"{path} exists and is not a socket; refusing to replace it",
                fix="remove it if it is left over, or set api_socket to another path",
            )
        try:
            listener = _probe_listener(path)
        except OSError as err:
            raise APIServerError(
                f"cannot check whether {path} is in use: {err.strerror}",
                fix="run the agent as root",
            ) from err
        if listener is not False:
            raise self._already_running(listener)
        _log().info("api_stale_socket_replaced", socket=str(path))

    def _bind(self) -> _UnixHTTPServer:
        path = self.socket_path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        server = _UnixHTTPServer(str(tmp), _Handler, bind_and_activate=False)
        server.api = self
        try:
            server.server_bind()
            os.chmod(tmp, SOCKET_MODE)
            server.server_activate()
            os.replace(tmp, path)  # atomic: also replaces a stale socket
        except OSError as err:
            server.server_close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise APIServerError(
                f"cannot create the API socket {path}: {err.strerror}",
                fix="run the agent as root, or set api_socket to a writable path",
            ) from err
        st = path.lstat()
        self._inode = (st.st_dev, st.st_ino)
        return server


# ---------------------------------------------------------------------- client --


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        deadline = time.monotonic() + (self.timeout or 5.0)
        delay = 0.001
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._path)
            except BlockingIOError:
                # EAGAIN: the server's listen backlog is full (a burst of container
                # starts); UNIX sockets do not queue the connect, so retry until the timeout.
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise TimeoutError("the agent's listen backlog stayed full") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            except BaseException:
                sock.close()
                raise
            self.sock = sock
            return


class AgentAPIClient:
    """Talks to the local agent. Every failure to reach it is :class:`AgentUnavailable`;
    an error answer is :class:`AgentAPIError`."""

    def __init__(self, socket_path: Path | str | None = None, timeout_s: float = 5.0) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.timeout_s = timeout_s

    def status(self) -> StatusSnapshot:
        body = self._request("GET", "/v1/status")
        return StatusSnapshot.from_json(body)

    def admit(self, req: AdmitRequest) -> AdmitResponse:
        body = self._request("POST", "/v1/admit", json.dumps(req.to_dict()).encode())
        try:
            return AdmitResponse.from_dict(json.loads(body))
        except ValueError as err:
            raise AgentAPIError(
                f"the agent at {self.socket_path} sent a bad admit answer: {err}"
            ) from err

    def healthz(self) -> bool:
        self._request("GET", "/healthz")
        return True

    def _unavailable(self, err: BaseException) -> AgentUnavailable:
        path = self.socket_path
        if isinstance(err, FileNotFoundError):
            return AgentUnavailable(
                f"the nodeguard agent is not running on this node (no socket at {path})",
                fix=FIX_START_AGENT,
            )
        if isinstance(err, ConnectionRefusedError):
            return AgentUnavailable(
                f"the nodeguard agent is not running on this node (nothing listens on {path}; "
                "it is left over from an agent that stopped)",
                fix=FIX_START_AGENT,
            )
        if isinstance(err, PermissionError):
            return AgentUnavailable(
                f"permission denied connecting to the nodeguard agent at {path}",
                fix="run as root (sudo nodeguard status), or as a member of the socket's group",
            )
        if isinstance(err, TimeoutError):
            return AgentUnavailable(
                f"the nodeguard agent at {path} did not answer within {self.timeout_s:g} s",
                fix="check the agent's logs: kubectl -n nodeguard logs <agent pod on this node>",
            )
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        return AgentUnavailable(
            f"lost the connection to the nodeguard agent at {path}: {reason}",
            fix="check the agent's logs: kubectl -n nodeguard logs <agent pod on this node>",
        )

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        conn = _UnixHTTPConnection(str(self.socket_path), self.timeout_s)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as err:
            raise self._unavailable(err) from err
        finally:
            conn.close()
        if status != 200:
            try:
                message = str(json.loads(data)["error"])
            except (ValueError, KeyError, TypeError):
                message = data[:200].decode(errors="replace")
            raise AgentAPIError(
                f"the nodeguard agent at {self.socket_path} answered {method} {path} with "
                f"{status}: {message}",
                status=status,
            )
        return data
