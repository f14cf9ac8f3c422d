"""What nodeguard knows about a pod and its containers, as the container runtime reports it.

Plain frozen values, filled from CRI (:mod:`nodeguard.identity.cri`) and independent of
protobuf, so the agent, the policy selector and event enrichment can use them (and tests
can build them) without a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PodState = Literal["ready", "notready"]
ContainerState = Literal["created", "running", "exited", "unknown"]

# Labels the kubelet adds to every sandbox's CRI labels; they are not the Pod's labels.
KUBELET_POD_LABELS = frozenset(
    {"io.kubernetes.pod.name", "io.kubernetes.pod.namespace", "io.kubernetes.pod.uid"}
)


@dataclass(frozen=True)
class ContainerInfo:
    """One container of a pod (CRI ``Container``)."""

    id: str
    """Runtime container id (64 hex digits for containerd); also its cgroup's name."""
    name: str
    """Container name from the pod spec (CRI metadata.name)."""
    image: str
    """Image as the container was created with (a name such as ``docker.io/x/y:tag``,
    or an image id when the kubelet passes one)."""
    image_ref: str
    """Image the runtime resolved and runs (digest or image id)."""
    state: ContainerState
    pod_id: str
    """Sandbox id of the pod the container belongs to."""


@dataclass(frozen=True)
class PodInfo:
    """One pod sandbox (CRI ``PodSandbox``) with its containers."""

    id: str
    """Runtime sandbox id (not the Kubernetes uid)."""
    uid: str
    """Kubernetes pod uid (metadata.uid); names the pod's cgroup."""
    namespace: str
    name: str
    labels: dict[str, str] = field(hash=False)
    """Labels as CRI reports them: the Pod's labels plus the kubelet's io.kubernetes.pod.*."""
    annotations: dict[str, str] = field(hash=False)
    state: PodState
    created_at_ns: int
    """Sandbox creation time, nanoseconds since the epoch."""
    containers: tuple[ContainerInfo, ...] = ()
    """The pod's containers (not the sandbox itself), oldest first."""

    @property
    def pod_labels(self) -> dict[str, str]:
        """The Kubernetes Pod's own labels (what a label selector matches against)."""
        return {k: v for k, v in self.labels.items() if k not in KUBELET_POD_LABELS}

    @property
    def ref(self) -> str:
        """``namespace/name``, how people name a pod."""
        return f"{self.namespace}/{self.name}"

    def container(self, name: str) -> ContainerInfo | None:
        """The newest container with this name (a restarted container keeps its name)."""
        found = [c for c in self.containers if c.name == name]
        return found[-1] if found else None
