"""``nodeguard hook``: the OCI ``createRuntime`` hook that closes the start-up gap.

containerd (through runc) runs the hook after a container's cgroup and namespaces exist
and before its process runs the image's first instruction. The hook reads the OCI state
(``{ociVersion, id, status, pid, bundle, annotations}``) on stdin and the bundle's
``config.json``, and asks the local agent (``POST /v1/admit``) to put the pod under its
policy now. Exit 0 lets the container start; any other exit makes runc fail the create,
and the one line on stderr ends up in the CRI error the kubelet reports.

Decision (docs/runtime-hook.md):

- no CRI annotations (not a Kubernetes container): allow;
- the agent answered: allow if it said ``allowed``, refuse otherwise;
- the agent cannot be reached, or anything unexpected happens (garbage on stdin, an
  error answer, a bug): the fail-closed rule. Refuse when the pod's namespace is named
  in the fail-closed list; when the list holds ``*``, refuse in every namespace except
  the exempt ones (default ``kube-system`` and ``nodeguard``, so the agent's own pod can
  always start); when the namespace cannot be told (unreadable input), refuse if the
  list is not empty. Otherwise allow and log.

The fail-closed list is the union of ``--fail-closed-namespaces`` and the namespaces file
(``--fail-closed-file``, default /var/lib/nodeguard/fail-closed-namespaces) that the
agent keeps up to date with the namespaces its policies select, so by default a
namespace some policy selects stays closed while the agent is down.

This module is on the container start path: it imports only the standard library at
first, and the API client only for containers of Kubernetes pods.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nodeguard.agent.api import AdmitRequest

# containerd CRI annotations on every container's OCI spec (pkg/cri/annotations).
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
CONTAINER_NAME = "io.kubernetes.cri.container-name"

DEFAULT_SOCKET = "/run/nodeguard/agent.sock"  # == nodeguard.agent.api.DEFAULT_SOCKET
SOCKET_ENV = "NODEGUARD_API_SOCKET"
DEFAULT_FAIL_CLOSED_FILE = "/var/lib/nodeguard/fail-closed-namespaces"
DEFAULT_EXEMPT = frozenset({"kube-system", "nodeguard"})
DEFAULT_TIMEOUT_MS = 5000
ALL = "*"

EXIT_ALLOW = 0
EXIT_REFUSE = 1
MAX_STATE_BYTES = 1 << 20
MAX_CONFIG_BYTES = 16 << 20
SYSLOG_SOCKET = "/dev/log"


class HookInputError(Exception):
    """The OCI state or bundle cannot be understood. ``namespace`` if it could be told."""

    def __init__(self, message: str, namespace: str | None = None) -> None:
        super().__init__(message)
        self.namespace = namespace


@dataclass(frozen=True, slots=True)
class HookConfig:
    socket_path: Path
    fail_closed_namespaces: frozenset[str] = frozenset()
    exempt_namespaces: frozenset[str] = DEFAULT_EXEMPT
    fail_closed_file: Path | None = Path(DEFAULT_FAIL_CLOSED_FILE)
    timeout_s: float = DEFAULT_TIMEOUT_MS / 1000


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What the hook learned about the container from the OCI state and bundle."""

    container_id: str
    container_type: str
    container_name: str
    sandbox_id: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    cgroups_path: str
    bundle: str
    pid: int
    seccomp: dict[str, Any] | None = None  # seccomp_summary() of the spec's linux.seccomp

    def describe(self) -> str:
        kind = "pod sandbox" if self.container_type == "sandbox" else "container"
        name = f" {self.container_name!r}" if self.container_name else ""
        return (
            f"{kind}{name} ({self.container_id[:12]}) of pod {self.pod_namespace}/{self.pod_name}"
        )

    def admit_request(self) -> AdmitRequest:
        from nodeguard.agent.api import AdmitRequest  # noqa: PLC0415

        return AdmitRequest(
            pod_uid=self.pod_uid,
            pod_namespace=self.pod_namespace,
            pod_name=self.pod_name,
            sandbox_id=self.sandbox_id,
            container_id=self.container_id,
            container_type="sandbox" if self.container_type == "sandbox" else "container",
            cgroups_path=self.cgroups_path,
            bundle=self.bundle,
            container_name=self.container_name,
            pid=self.pid,
            seccomp=self.seccomp,
        )


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """``exit_code`` for runc; ``message`` the one stderr line (empty: say nothing);
    ``log`` a structured record worth keeping (fail-open decisions, refusals)."""

    exit_code: int
    message: str = ""
    log: dict[str, Any] | None = None


# ------------------------------------------------------------------ namespaces --


def parse_namespace_list(text: str) -> frozenset[str]:
    """``"a,b"`` -> {a, b}; ``"*"`` -> {"*"}; blanks ignored. ValueError on a bad name."""
    names = frozenset(part.strip() for part in text.replace("\n", ",").split(",") if part.strip())
    for name in names:
        if name != ALL and not _is_namespace_name(name):
            raise ValueError(f"{name!r} is not a Kubernetes namespace name")
    return names


def _is_namespace_name(name: str) -> bool:
    if not 0 < len(name) <= 63 or name[0] == "-" or name[-1] == "-":
        return False
    return all(c.isascii() and (c.islower() or c.isdigit() or c == "-") for c in name)


def read_fail_closed_file(path: Path | None) -> frozenset[str]:
    """The namespaces file the agent keeps: one name a line, ``#`` comments, ``*``.
    Missing or unreadable: empty (only the command-line list applies)."""
    if path is None:
        return frozenset()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return frozenset()
    names = set()
    for line in text.splitlines():
        name = line.split("#", 1)[0].strip()
        if name and (name == ALL or _is_namespace_name(name)):
            names.add(name)
    return frozenset(names)


def write_fail_closed_file(path: Path, namespaces: Iterable[str]) -> None:
    """For the agent: atomically replace the namespaces file with ``namespaces`` (write
    ``*`` when a policy selects every namespace). The hook reads it when the agent is
    down, so write it whenever the loaded policies change."""
    names = sorted(set(namespaces))
    body = (
        "# written by the nodeguard agent: namespaces its policies select.\n"
        "# nodeguard hook refuses containers here while the agent is unreachable.\n"
        + "".join(f"{n}\n" for n in names)
    )
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def fail_closed(config: HookConfig, namespace: str | None) -> bool:
    """Does the fail-closed rule refuse a container of ``namespace`` (None: unknown)?"""
    names = config.fail_closed_namespaces | read_fail_closed_file(config.fail_closed_file)
    if namespace is None or namespace == "":
        return bool(names)
    if namespace in names:
        return True
    if namespace in config.exempt_namespaces:
        return False
    return ALL in names


# --------------------------------------------------------------------- parsing --

# seccomp actions the admission check looks at (nodeguard.seccomp.profile.KILL_ACTIONS).
_SECCOMP_ACTIONS = frozenset(
    {"SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_NOTIFY"}
)
MAX_SECCOMP_RULES = 256


def seccomp_summary(seccomp: Any) -> dict[str, Any] | None:
    """The part of a container's ``linux.seccomp`` the agent's admission check reads
    (:func:`nodeguard.seccomp.profile.missing`): default action, architectures, listener
    and the kill and notify rules (a whole RuntimeDefault profile would not fit a request).
    None when the spec has no seccomp filter."""
    if not isinstance(seccomp, dict):
        return None
    rules: list[dict[str, Any]] = []
    for rule in seccomp.get("syscalls") or []:
        if not isinstance(rule, dict) or rule.get("action") not in _SECCOMP_ACTIONS:
            continue
        names = [n for n in (rule.get("names") or []) if isinstance(n, str)]
        args = [
            [a.get("index", 0), a.get("value", 0), a.get("valueTwo", 0), a.get("op", "")]
            for a in (rule.get("args") or [])
            if isinstance(a, dict)
        ]
        rules.append({"names": names, "action": rule["action"], "args": args})
        if len(rules) >= MAX_SECCOMP_RULES:
            break
    listener = seccomp.get("listenerPath")
    return {
        "default_action": str(seccomp.get("defaultAction", "")),
        "architectures": [a for a in seccomp.get("architectures") or [] if isinstance(a, str)],
        "listener_path": listener if isinstance(listener, str) else "",
        "rules": rules,
    }


def _annotations(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def parse_container(state_text: bytes | str) -> ContainerInfo | None:
    """OCI state (stdin) + ``<bundle>/config.json`` -> ContainerInfo; None when the
    container has no CRI annotations (it is not part of a Kubernetes pod)."""
    try:
        state = json.loads(state_text)
    except (ValueError, UnicodeDecodeError) as err:
        raise HookInputError(f"stdin is not an OCI state JSON document: {err}") from None
    if not isinstance(state, dict):
        raise HookInputError("stdin is not an OCI state JSON object")
    annotations = _annotations(state.get("annotations"))
    container_id, bundle = state.get("id"), state.get("bundle")
    config: dict[str, Any] = {}
    if isinstance(bundle, str) and bundle:
        # Best effort: cgroupsPath comes from here; the annotations are in the state too.
        with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
            with open(os.path.join(bundle, "config.json"), "rb") as f:
                loaded = json.loads(f.read(MAX_CONFIG_BYTES))
            if isinstance(loaded, dict):
                config = loaded
    # The state's annotations are the spec's; the spec's fill in anything missing.
    annotations = {**_annotations(config.get("annotations")), **annotations}
    if CONTAINER_TYPE not in annotations:
        # runc puts the spec's annotations into the state, so a CRI container is known
        # from stdin alone even when config.json cannot be read.
        return None
    namespace = annotations.get(SANDBOX_NAMESPACE, "")
    if not isinstance(container_id, str) or not container_id:
        raise HookInputError("the OCI state has no container id", namespace)
    if not isinstance(bundle, str) or not bundle:
        raise HookInputError("the OCI state has no bundle path", namespace)
    container_type = annotations[CONTAINER_TYPE]
    if container_type not in ("sandbox", "container"):
        raise HookInputError(f"unknown {CONTAINER_TYPE} {container_type!r}", namespace)
    linux = config.get("linux")
    cgroups_path = linux.get("cgroupsPath", "") if isinstance(linux, dict) else ""
    seccomp = seccomp_summary(linux.get("seccomp")) if isinstance(linux, dict) else None
    pid = state.get("pid", 0)
    return ContainerInfo(
        container_id=container_id,
        container_type=container_type,
        container_name=annotations.get(CONTAINER_NAME, ""),
        sandbox_id=annotations.get(SANDBOX_ID, container_id if container_type == "sandbox" else ""),
        pod_namespace=namespace,
        pod_name=annotations.get(SANDBOX_NAME, ""),
        pod_uid=annotations.get(SANDBOX_UID, ""),
        cgroups_path=cgroups_path if isinstance(cgroups_path, str) else "",
        bundle=bundle,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else 0,
        seccomp=seccomp,
    )


# -------------------------------------------------------------------- decision --


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _agent_not_answering(
    config: HookConfig, namespace: str | None, what: str, why: str, fix: str | None
) -> HookOutcome:
    """The fail-closed rule, for an agent that cannot answer (or an unexpected error)."""
    record: dict[str, Any] = {"namespace": namespace, "target": what, "reason": _one_line(why)}
    if fail_closed(config, namespace):
        rule = (
            f"namespace {namespace!r} is fail-closed while the nodeguard agent cannot answer"
            if namespace
            else "its namespace cannot be told, and fail-closed namespaces are configured"
        )
        message = f"nodeguard hook: refused {what}: {_one_line(why)}; {rule}"
        if fix:
            message += f" (fix: {_one_line(fix)})"
        return HookOutcome(EXIT_REFUSE, message, {"event": "hook_refused_fail_closed", **record})
    message = f"nodeguard hook: allowed {what} unguarded: {_one_line(why)} (namespace is fail-open)"
    return HookOutcome(EXIT_ALLOW, message, {"event": "hook_allowed_fail_open", **record})


def decide(config: HookConfig, state_text: bytes | str) -> HookOutcome:
    """The whole decision for one container; never raises."""
    namespace: str | None = None
    what = "container"
    try:
        try:
            info = parse_container(state_text)
        except HookInputError as err:
            return _agent_not_answering(
                config,
                err.namespace,
                what,
                f"cannot read the container's OCI state: {err}",
                "nodeguard hook must be configured as an OCI createRuntime hook "
                "(docs/runtime-hook.md)",
            )
        if info is None:
            return HookOutcome(EXIT_ALLOW)
        namespace, what = info.pod_namespace, info.describe()
        from nodeguard.agent.api import (  # noqa: PLC0415 - only for Kubernetes containers
            AgentAPIClient,
            AgentAPIError,
            AgentUnavailable,
        )

        client = AgentAPIClient(config.socket_path, timeout_s=config.timeout_s)
        try:
            answer = client.admit(info.admit_request())
        except (AgentUnavailable, AgentAPIError) as err:
            return _agent_not_answering(config, namespace, what, err.message, err.fix)
        if answer.allowed:
            return HookOutcome(EXIT_ALLOW)
        return HookOutcome(
            EXIT_REFUSE,
            f"nodeguard hook: refused {what}: {_one_line(answer.reason)}",
            {
                "event": "hook_refused_by_agent",
                "namespace": namespace,
                "target": what,
                "policy": answer.policy,
                "reason": answer.reason,
            },
        )
    except Exception as err:  # a bug must not become a traceback in a CRI error
        return _agent_not_answering(
            config,
            namespace,
            what,
            f"unexpected error in nodeguard hook: {type(err).__name__}: {err}",
            None,
        )


def _syslog(record: dict[str, Any], refused: bool) -> None:
    """Best effort, never blocking: one line to the local syslog socket (journald)."""
    priority = (3 << 3) | (3 if refused else 4)  # daemon.err / daemon.warning
    line = f"<{priority}>nodeguard-hook[{os.getpid()}]: {json.dumps(record, sort_keys=True)}"
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.sendto(line.encode("utf-8", "replace"), SYSLOG_SOCKET)


def run_hook(config: HookConfig, stdin: IO[bytes], stderr: IO[str]) -> int:
    """Read the OCI state from ``stdin``, decide, report, and return the exit code."""
    try:
        if stdin.isatty():
            stderr.write(
                "nodeguard hook: expects the OCI state JSON on stdin; it is run by the "
                "container runtime as a createRuntime hook (see docs/runtime-hook.md)\n"
            )
            return 2
        state_text = stdin.read(MAX_STATE_BYTES + 1)
        if len(state_text) > MAX_STATE_BYTES:
            state_text = b"<over 1 MiB>"
    except Exception as err:
        state_text = f"<stdin unreadable: {err}>".encode()
    try:
        outcome = decide(config, state_text)
    except Exception as err:  # the fail-closed rule itself failed: use the plain list
        closed = bool(config.fail_closed_namespaces)
        outcome = HookOutcome(
            EXIT_REFUSE if closed else EXIT_ALLOW,
            f"nodeguard hook: {'refused' if closed else 'allowed'} container after an internal "
            f"error ({type(err).__name__}: {_one_line(str(err))})",
        )
    if outcome.log is not None:
        record = {"ts": round(time.time(), 3), "level": "warning", **outcome.log}
        _syslog(record, outcome.exit_code != EXIT_ALLOW)
    if outcome.message:
        with contextlib.suppress(Exception):
            stderr.write(outcome.message + "\n")
            stderr.flush()
    return outcome.exit_code


def default_socket() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def main_stdio(config: HookConfig) -> int:
    return run_hook(config, sys.stdin.buffer, sys.stderr)
