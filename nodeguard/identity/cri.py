"""A CRI client: the node's pods and containers, asked of the container runtime the way
the kubelet asks (gRPC ``runtime.v1.RuntimeService`` over the runtime's unix socket).

nodeguard reads pods (``list_pods``, ``pod``) and, for tests and tools that play the
kubelet, also creates and removes them. The wire format comes from nodeguard's own subset
of the CRI API (``nodeguard/proto/runtime/v1/api.proto``).

Every failure is a :class:`CRIError` naming the endpoint, the call and the likely fix.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from nodeguard.errors import NodeguardError
from nodeguard.identity.pods import ContainerInfo, ContainerState, PodInfo, PodState
from nodeguard.proto.runtime.v1 import api_pb2

DEFAULT_ENDPOINT = "unix:///run/containerd/containerd.sock"
DEFAULT_TIMEOUT_S = 5.0
# The CRI version nodeguard speaks (sent in VersionRequest, as the kubelet does).
CRI_API_VERSION = "v1"
SERVICE = "runtime.v1.RuntimeService"
# Same limit as the kubelet: a node with many pods has big list responses.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_POD_STATES: dict[int, PodState] = {
    api_pb2.SANDBOX_READY: "ready",
    api_pb2.SANDBOX_NOTREADY: "notready",
}
_CONTAINER_STATES: dict[int, ContainerState] = {
    api_pb2.CONTAINER_CREATED: "created",
    api_pb2.CONTAINER_RUNNING: "running",
    api_pb2.CONTAINER_EXITED: "exited",
    api_pb2.CONTAINER_UNKNOWN: "unknown",
}

ResponseT = TypeVar("ResponseT", bound=Message)


class CRIError(NodeguardError):
    """The container runtime could not be reached over CRI, or refused a call."""

    def __init__(self, message: str, *, fix: str | None = None, code: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.code = code
        """gRPC status code name (``UNAVAILABLE``, ``NOT_FOUND``, ...), None if not gRPC."""


@dataclass(frozen=True)
class RuntimeVersion:
    """What the runtime says about itself (CRI ``Version``)."""

    runtime_name: str
    runtime_version: str
    runtime_api_version: str


@dataclass(frozen=True)
class PodNetwork:
    """A pod sandbox's network as the runtime (and its CNI plugins) set it up."""

    ip: str
    """Primary pod IP, "" when the pod has no network of its own (hostNetwork)."""
    additional_ips: tuple[str, ...]
    netns_path: str | None
    """Network namespace the runtime created (containerd: from the verbose info), if known."""
    sandbox_pid: int | None
    """Pid of the sandbox's (pause) process, if the runtime reports it."""


@dataclass(frozen=True)
class ContainerStatusInfo:
    """Status of one container (CRI ``ContainerStatus`` with verbose info)."""

    id: str
    name: str
    state: ContainerState
    pid: int | None
    """Host pid of the container's first process (containerd: verbose info), if running."""
    exit_code: int
    started_at_ns: int
    finished_at_ns: int
    image: str
    image_ref: str
    reason: str
    message: str


def normalize_endpoint(endpoint: str) -> str:
    """``unix:///path``, ``unix:/path`` or a bare ``/path`` -> ``unix:///path``."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://") :]
    elif endpoint.startswith("unix:"):
        path = endpoint[len("unix:") :]
    elif "://" in endpoint:
        raise CRIError(
            f"unsupported CRI endpoint {endpoint!r}: only unix sockets are supported",
            fix="give the runtime's socket, e.g. unix:///run/containerd/containerd.sock",
        )
    else:
        path = endpoint
    if not path.startswith("/"):
        raise CRIError(
            f"CRI endpoint {endpoint!r} is not an absolute socket path",
            fix="give the runtime's socket, e.g. unix:///run/containerd/containerd.sock",
        )
    return "unix://" + os.path.normpath(path)


def socket_path(endpoint: str) -> Path:
    """The filesystem path of a unix CRI endpoint."""
    return Path(normalize_endpoint(endpoint)[len("unix://") :])


class CRIClient:
    """Blocking CRI client over one gRPC channel. Thread-safe; close it when done."""

    def __init__(
        self, endpoint: str = DEFAULT_ENDPOINT, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        if timeout_s <= 0:
            raise CRIError(f"CRI timeout must be > 0 seconds, got {timeout_s}")
        self.endpoint = normalize_endpoint(endpoint)
        self.timeout_s = timeout_s
        self._channel: Any = grpc.insecure_channel(
            self.endpoint,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._methods: dict[str, Callable[..., Any]] = {}

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CRIClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading pods (what the agent uses) --------------------------------------------

    def version(self) -> RuntimeVersion:
        resp = self._call(
            "Version", api_pb2.VersionRequest(version=CRI_API_VERSION), api_pb2.VersionResponse
        )
        return RuntimeVersion(resp.runtime_name, resp.runtime_version, resp.runtime_api_version)

    def list_pods(self) -> list[PodInfo]:
        """Every pod sandbox on the node (ready or not) with its containers, oldest first.

        One ListPodSandbox and one ListContainers call, joined on the sandbox id.
        """
        sandboxes = self._call(
            "ListPodSandbox", api_pb2.ListPodSandboxRequest(), api_pb2.ListPodSandboxResponse
        ).items
        containers = self._call(
            "ListContainers", api_pb2.ListContainersRequest(), api_pb2.ListContainersResponse
        ).containers
        by_pod: dict[str, list[api_pb2.Container]] = {}
        for c in containers:
            by_pod.setdefault(c.pod_sandbox_id, []).append(c)
        pods = [_pod_info(s, by_pod.get(s.id, [])) for s in sandboxes]
        pods.sort(key=lambda p: (p.created_at_ns, p.id))
        return pods

    def pod(self, pod_id: str) -> PodInfo | None:
        """One pod by sandbox id, None when the runtime does not know it."""
        flt = api_pb2.PodSandboxFilter(id=pod_id)
        sandboxes = self._call(
            "ListPodSandbox",
            api_pb2.ListPodSandboxRequest(filter=flt),
            api_pb2.ListPodSandboxResponse,
        ).items
        # Runtimes may match the id as a prefix: only an exact match counts.
        exact = [s for s in sandboxes if s.id == pod_id]
        if not exact:
            return None
        containers = self._call(
            "ListContainers",
            api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod_id)),
            api_pb2.ListContainersResponse,
        ).containers
        return _pod_info(exact[0], [c for c in containers if c.pod_sandbox_id == pod_id])

    def pod_network(self, pod_id: str) -> PodNetwork:
        """Pod IPs and network namespace (PodSandboxStatus, verbose)."""
        resp = self._call(
            "PodSandboxStatus",
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
            api_pb2.PodSandboxStatusResponse,
        )
        info = _info_json(resp.info)
        return PodNetwork(
            ip=resp.status.network.ip,
            additional_ips=tuple(p.ip for p in resp.status.network.additional_ips),
            netns_path=_netns_path(info),
            sandbox_pid=_pid(info),
        )

    def container_status(self, container_id: str) -> ContainerStatusInfo:
        """Status of one container, with its host pid when the runtime reports it."""
        resp = self._call(
            "ContainerStatus",
            api_pb2.ContainerStatusRequest(container_id=container_id, verbose=True),
            api_pb2.ContainerStatusResponse,
        )
        s = resp.status
        return ContainerStatusInfo(
            id=s.id,
            name=s.metadata.name,
            state=_CONTAINER_STATES.get(s.state, "unknown"),
            pid=_pid(_info_json(resp.info)),
            exit_code=s.exit_code,
            started_at_ns=s.started_at,
            finished_at_ns=s.finished_at,
            image=s.image.image,
            image_ref=s.image_ref,
            reason=s.reason,
            message=s.message,
        )

    # -- kubelet-side calls (tests and tools that create pods) --------------------------

    def run_pod_sandbox(self, config: api_pb2.PodSandboxConfig, runtime_handler: str = "") -> str:
        """RunPodSandbox; returns the new sandbox id."""
        req = api_pb2.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self._call("RunPodSandbox", req, api_pb2.RunPodSandboxResponse).pod_sandbox_id

    def stop_pod_sandbox(self, pod_id: str) -> None:
        req = api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id)
        self._call("StopPodSandbox", req, api_pb2.StopPodSandboxResponse)

    def remove_pod_sandbox(self, pod_id: str) -> None:
        req = api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        self._call("RemovePodSandbox", req, api_pb2.RemovePodSandboxResponse)

    def create_container(
        self,
        pod_id: str,
        config: api_pb2.ContainerConfig,
        sandbox_config: api_pb2.PodSandboxConfig,
    ) -> str:
        """CreateContainer in a sandbox; returns the new container id."""
        req = api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config
        )
        return self._call("CreateContainer", req, api_pb2.CreateContainerResponse).container_id

    def start_container(self, container_id: str) -> None:
        req = api_pb2.StartContainerRequest(container_id=container_id)
        self._call("StartContainer", req, api_pb2.StartContainerResponse)

    def stop_container(self, container_id: str, timeout_s: int = 0) -> None:
        """Stop signal, then SIGKILL after ``timeout_s`` seconds (0: SIGKILL at once)."""
        req = api_pb2.StopContainerRequest(container_id=container_id, timeout=timeout_s)
        self._call("StopContainer", req, api_pb2.StopContainerResponse)

    def remove_container(self, container_id: str) -> None:
        req = api_pb2.RemoveContainerRequest(container_id=container_id)
        self._call("RemoveContainer", req, api_pb2.RemoveContainerResponse)

    # -- plumbing --------------------------------------------------------------------

    def _method(self, name: str, response_type: type[Message]) -> Callable[..., Any]:
        method = self._methods.get(name)
        if method is None:
            method = self._channel.unary_unary(
                f"/{SERVICE}/{name}",
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            )
            self._methods[name] = method
        return method

    def _call(self, name: str, request: Message, response_type: type[ResponseT]) -> ResponseT:
        method = self._method(name, response_type)
        try:
            response = method(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise self._error(name, err) from err
        if not isinstance(response, response_type):  # pragma: no cover - grpc contract
            raise CRIError(f"CRI {name} at {self.endpoint}: unexpected response {response!r}")
        return response

    def _error(self, name: str, err: Any) -> CRIError:
        code = err.code() if callable(getattr(err, "code", None)) else None
        code_name: str = getattr(code, "name", "UNKNOWN")
        details = err.details() if callable(getattr(err, "details", None)) else str(err)
        where = f"CRI {name} at {self.endpoint}"
        sock = socket_path(self.endpoint)
        if code_name == "UNAVAILABLE":
            return CRIError(
                f"{where}: cannot reach the container runtime: {_socket_problem(sock) or details}",
                fix="is containerd (or CRI-O) running, and is this its socket? "
                "(systemctl status containerd; ls -l " + str(sock) + "); "
                "otherwise set the runtime's CRI socket in the agent config",
                code=code_name,
            )
        if code_name == "UNIMPLEMENTED":
            return CRIError(
                f"{where}: the runtime does not serve CRI {SERVICE} ({details})",
                fix='enable the CRI plugin: remove "cri" from disabled_plugins in '
                "/etc/containerd/config.toml and restart containerd (CRI v1 needs "
                "containerd >= 1.6 or CRI-O >= 1.20)",
                code=code_name,
            )
        if code_name == "DEADLINE_EXCEEDED":
            return CRIError(
                f"{where}: no answer within {self.timeout_s:g} s",
                fix="the runtime is overloaded or hung: check its logs "
                "(journalctl -u containerd), or raise the CRI timeout in the agent config",
                code=code_name,
            )
        if code_name == "PERMISSION_DENIED" or "permission denied" in details.lower():
            return CRIError(
                f"{where}: permission denied ({details})",
                fix="run as root (the runtime socket is only accessible to root)",
                code=code_name,
            )
        return CRIError(f"{where} failed: {code_name}: {details}", code=code_name)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _socket_problem(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist"
    except PermissionError:
        return f"{path}: permission denied"
    except OSError as err:
        return f"{path}: {err.strerror}"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{path} is not a unix socket"
    return None


def _pod_info(s: api_pb2.PodSandbox, containers: list[api_pb2.Container]) -> PodInfo:
    ordered = sorted(containers, key=lambda c: (c.created_at, c.id))
    return PodInfo(
        id=s.id,
        uid=s.metadata.uid,
        namespace=s.metadata.namespace,
        name=s.metadata.name,
        labels=dict(s.labels),
        annotations=dict(s.annotations),
        state=_POD_STATES.get(s.state, "notready"),
        created_at_ns=s.created_at,
        containers=tuple(_container_info(c) for c in ordered),
    )


def _container_info(c: api_pb2.Container) -> ContainerInfo:
    return ContainerInfo(
        id=c.id,
        name=c.metadata.name,
        image=c.image.image,
        image_ref=c.image_ref,
        state=_CONTAINER_STATES.get(c.state, "unknown"),
        pod_id=c.pod_sandbox_id,
    )


def _info_json(info: Any) -> dict[str, Any]:
    """containerd puts one JSON document under the key "info" of the verbose map."""
    raw = info.get("info") if info else None
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _pid(info: dict[str, Any]) -> int | None:
    pid = info.get("pid")
    return pid if isinstance(pid, int) and pid > 0 else None


def _netns_path(info: dict[str, Any]) -> str | None:
    spec = info.get("runtimeSpec")
    if not isinstance(spec, dict):
        return None
    linux = spec.get("linux")
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    for ns in namespaces if isinstance(namespaces, list) else []:
        if isinstance(ns, dict) and ns.get("type") == "network":
            path = ns.get("path")
            return path if isinstance(path, str) and path else None
    return None
