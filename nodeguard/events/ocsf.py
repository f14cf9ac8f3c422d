"""Projection of a :class:`Violation` onto OCSF (schema version :data:`OCSF_VERSION`).

- egress -> Network Activity (4001): Refuse (5) when blocked; when audited Open (1) for a
  connect (the connection went ahead) and Traffic (6) for an unconnected UDP send;
  ``src_endpoint`` (the pod, when known), ``dst_endpoint``, ``connection_info`` (outbound).
- exec   -> Process Activity (1007): Launch (1); ``process`` is the launched image
  (``process.file.path`` as given to execve), ``actor.process`` the caller (same pid).
- syscall, socket, limit -> Detection Finding (2004): Create (1); ``finding_info`` names
  the finding (uid = the record's uid, title, types ``nodeguard/<kind>``, the policy as a
  Rule ``analytic``), one ``evidences`` entry holds the actor, the container and the
  detail in ``data``. ``status_id`` is the finding's workflow status (1 New), severity
  depends on the kind (see :func:`finding_severity`).

Common to all: the ``security_control`` profile (``action``, ``disposition``, ``policy``
with ``is_applied``, ``is_alert``), the ``host`` profile (``device``, ``actor``) and, with
a known container, the ``container`` profile (``actor.process.container``; OCSF 1.4 has
no event-level container). ``observables`` list the pivots (hostname, process names, the
destination, the launched file). Pod facts OCSF cannot hold go to ``unmapped.k8s``;
nodeguard's own facts to ``unmapped``. Absent values are left out, never written as null,
and nothing is guessed: no ``cloud``, no device type, no connection boundary. The full
mapping table, with every required and recommended attribute, is docs/events.md.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from nodeguard import PRODUCT, __version__
from nodeguard.events.build import protocol_number
from nodeguard.events.model import (
    EgressDetail,
    ExecDetail,
    Kind,
    LimitDetail,
    ProcessInfo,
    SocketDetail,
    SyscallDetail,
    Violation,
    WorkloadRef,
)
from nodeguard.policy.sockets import (
    AF_INET,
    AF_INET6,
    AF_NETLINK,
    AF_PACKET,
    SOCK_RAW,
    effective_family,
    kind_name,
)

OCSF_VERSION = "1.4.0"
LOG_NAME = "violations"


@dataclass(frozen=True, slots=True)
class EventClass:
    uid: int
    name: str
    category_uid: int
    category_name: str


NETWORK_ACTIVITY = EventClass(4001, "Network Activity", 4, "Network Activity")
PROCESS_ACTIVITY = EventClass(1007, "Process Activity", 1, "System Activity")
DETECTION_FINDING = EventClass(2004, "Detection Finding", 2, "Findings")

# activity ids (OCSF 1.4.0 network_activity.json, process_activity.json, finding.json)
NETWORK_OPEN = (1, "Open")
NETWORK_REFUSE = (5, "Refuse")
NETWORK_TRAFFIC = (6, "Traffic")
PROCESS_LAUNCH = (1, "Launch")
FINDING_CREATE = (1, "Create")

# (id, caption) per verdict
_SEVERITY = {"blocked": (4, "High"), "audited": (3, "Medium")}
_ACTION = {"blocked": (2, "Denied"), "audited": (1, "Allowed")}
_DISPOSITION = {"blocked": (2, "Blocked"), "audited": (17, "Logged")}

# status_id of the activity (base event): a blocked connect or exec failed; an audited
# exec ran (the tracepoint fires after the new image is in place); an audited connect
# went ahead but nodeguard does not see whether it connected.
STATUS_UNKNOWN = (0, "Unknown")
STATUS_SUCCESS = (1, "Success")
STATUS_FAILURE = (2, "Failure")
# Detection Finding: status_id is the finding's workflow status (OCSF 1.4 finding.json),
# not the outcome of the activity; every record is a new finding.
FINDING_STATUS_NEW = (1, "New")
# status_code / status_detail of a blocked activity: what the process got
_EGRESS_REFUSED = {
    "connect4": "connect() failed with EPERM",
    "connect6": "connect() failed with EPERM",
    "sendmsg4": "sendmsg() failed with EPERM",
    "sendmsg6": "sendmsg() failed with EPERM",
}
EXEC_KILLED = ("SIGKILL", "killed with SIGKILL before the new image ran an instruction")
# confidence_id: the kernel saw the attempt itself, the rule is exact
CONFIDENCE_HIGH = (3, "High")
ANALYTIC_RULE = (1, "Rule")
_SEVERITY_NAMES = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}

DIRECTION_OUTBOUND = (2, "Outbound")
_IP_VERSION = {4: "Internet Protocol version 4 (IPv4)", 6: "Internet Protocol version 6 (IPv6)"}
FILE_TYPE_REGULAR = (1, "Regular File")
DEVICE_TYPE_UNKNOWN = (0, "Unknown")
ORCHESTRATOR = "kubernetes"
# times are epoch milliseconds (UTC): the reported time is 0 minutes off UTC
TIMEZONE_OFFSET = 0

# observable type_id (OCSF 1.4.0: the `observable` number of the attribute's type)
OBSERVABLE_HOSTNAME = (1, "Hostname")
OBSERVABLE_IP = (2, "IP Address")
OBSERVABLE_FILE_NAME = (7, "File Name")
OBSERVABLE_PROCESS_NAME = (9, "Process Name")
OBSERVABLE_PORT = (11, "Port")


def type_uid(event_class: EventClass, activity_id: int) -> int:
    return event_class.uid * 100 + activity_id


def prune(value: Any) -> Any:
    """Drop None, empty strings and empty dicts, recursively (OCSF omits unknowns).
    Lists keep their length; their dict items are pruned."""
    if isinstance(value, dict):
        return _prune_dict(value)
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def _prune_dict(d: dict[str, Any]) -> dict[str, Any]:
    # the hot path of every projection: one pass, exact type checks for the common leaves
    out: dict[str, Any] = {}
    for k, v in d.items():
        if v is None:
            continue
        t = type(v)
        if t is str:
            if v:
                out[k] = v
        elif t is int or t is bool:
            out[k] = v
        elif isinstance(v, dict):
            pv = _prune_dict(v)
            if pv:
                out[k] = pv
        elif isinstance(v, list):
            out[k] = [prune(x) for x in v]
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------- objects ---


def file_object(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    name = posixpath.basename(path) or path
    dot = name.rfind(".")
    return {
        "path": path,
        "name": name,
        "ext": name[dot + 1 :] if dot > 0 else None,  # no ext for "python3", ".profile"
        "type_id": FILE_TYPE_REGULAR[0],
        "type": FILE_TYPE_REGULAR[1],
    }


def image_object(w: WorkloadRef) -> dict[str, Any] | None:
    """OCSF requires ``image.uid``: without the resolved image id there is no image object
    (the reference goes to ``unmapped.container_image``)."""
    if not w.image_id:
        return None
    return {"name": w.image, "uid": w.image_id}


def container_object(w: WorkloadRef | None) -> dict[str, Any] | None:
    if w is None or not (w.container_id or w.container_name):
        return None  # OCSF: a container needs at least a uid or a name
    in_pod = bool(w.pod_uid or w.pod_name)
    return {
        "uid": w.container_id,
        "name": w.container_name,
        "image": image_object(w),
        "orchestrator": ORCHESTRATOR if in_pod else None,
        "pod_uuid": w.pod_uid,
    }


def actor_process(
    p: ProcessInfo, w: WorkloadRef | None, container: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``container``: the :func:`container_object` of ``w`` when the caller has it."""
    return {
        "pid": p.pid or None,
        "tid": p.tid or None,
        "name": p.name,
        "cmd_line": p.cmd_line,
        "file": file_object(p.path),
        "parent_process": {"pid": p.ppid} if p.ppid is not None else None,
        "container": container if container is not None else container_object(w),
    }


def launched_process(
    e: ExecDetail, p: ProcessInfo, w: WorkloadRef | None, container: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The process an exec made: same pid, the new image. The command line is read from
    /proc after the exec, so it is the new image's (when the process was still there)."""
    return {
        "pid": p.pid or None,
        "tid": p.tid or None,
        "name": posixpath.basename(e.path) or e.path,
        "cmd_line": p.cmd_line,
        "file": file_object(e.path),
        "parent_process": {"pid": p.ppid} if p.ppid is not None else None,
        "container": container if container is not None else container_object(w),
    }


def k8s_unmapped(w: WorkloadRef | None) -> dict[str, Any] | None:
    if w is None:
        return None
    return {
        "namespace": w.namespace,
        "pod_name": w.pod_name,
        "pod_uid": w.pod_uid,
        "pod_labels": dict(w.pod_labels),
    }


def src_endpoint(w: WorkloadRef | None) -> dict[str, Any] | None:
    """The pod that tried to connect (name and uid), when the workload is a known pod.
    Nothing else is truthful: the source address is not known at the connect hook, and
    outside a pod the process may be in any network namespace."""
    if w is None or not (w.pod_name or w.pod_uid):
        return None
    return {"name": w.pod_name, "uid": w.pod_uid}


def endpoint_text(e: EgressDetail) -> str:
    host = f"[{e.ip}]" if ":" in e.ip else e.ip
    return f"{host}:{e.port}"


@functools.lru_cache(maxsize=4096)
def ip_version_of(ip: str) -> int | None:
    try:
        return ipaddress.ip_address(ip).version
    except ValueError:
        return None


def has_ports(protocol: str) -> bool:
    return protocol in ("tcp", "udp")


def observable(name: str, kind: tuple[int, str], value: object) -> dict[str, Any]:
    return {"name": name, "type_id": kind[0], "type": kind[1], "value": str(value)}


def observables(v: Violation) -> list[dict[str, Any]] | None:
    """The event's pivots, each pointing at an attribute this event carries."""
    out = []
    if v.node:
        out.append(observable("device.hostname", OBSERVABLE_HOSTNAME, v.node))
    if v.process.name:
        out.append(observable("actor.process.name", OBSERVABLE_PROCESS_NAME, v.process.name))
    if v.egress is not None:
        out.append(observable("dst_endpoint.ip", OBSERVABLE_IP, v.egress.ip))
        if has_ports(v.egress.protocol):
            out.append(observable("dst_endpoint.port", OBSERVABLE_PORT, v.egress.port))
    elif v.exec is not None and v.exec.path:
        name = posixpath.basename(v.exec.path) or v.exec.path
        out.append(observable("process.name", OBSERVABLE_PROCESS_NAME, name))
        out.append(observable("process.file.name", OBSERVABLE_FILE_NAME, name))
    return out or None


# ------------------------------------------------------------------- classes ---


CLASS_OF_KIND: dict[Kind, EventClass] = {
    "egress": NETWORK_ACTIVITY,
    "exec": PROCESS_ACTIVITY,
    "syscall": DETECTION_FINDING,
    "socket": DETECTION_FINDING,
    "limit": DETECTION_FINDING,
}
"""The OCSF class each kind of violation is projected onto (what :func:`classify` picks)."""


def classify(v: Violation) -> tuple[EventClass, int, str]:
    """(class, activity_id, activity_name) of a violation. An audited egress went ahead:
    a connect opened a connection (Open), an unconnected UDP send is traffic (Traffic)."""
    if v.egress is not None:
        if v.verdict == "blocked":
            return NETWORK_ACTIVITY, *NETWORK_REFUSE
        if v.egress.hook.startswith("sendmsg"):
            return NETWORK_ACTIVITY, *NETWORK_TRAFFIC
        return NETWORK_ACTIVITY, *NETWORK_OPEN
    if v.exec is not None:
        return PROCESS_ACTIVITY, *PROCESS_LAUNCH
    if v.syscall is not None or v.socket is not None or v.limit is not None:
        return DETECTION_FINDING, *FINDING_CREATE
    raise ValueError(
        f"violation {v.uid} of kind {v.kind!r} has no egress or exec detail "
        "(nor a syscall, socket or limit one)"
    )


def status_fields(v: Violation) -> dict[str, Any]:
    """``status_id``/``status`` and, for a blocked connect or exec, what the process got
    (``status_code``, ``status_detail``)."""
    if v.egress is not None:
        if v.verdict == "blocked":
            return {
                "status_id": STATUS_FAILURE[0],
                "status": STATUS_FAILURE[1],
                "status_code": "EPERM",
                "status_detail": _EGRESS_REFUSED.get(v.egress.hook),
            }
        return {"status_id": STATUS_UNKNOWN[0], "status": STATUS_UNKNOWN[1]}
    if v.exec is not None:
        if v.verdict == "blocked":
            return {
                "status_id": STATUS_FAILURE[0],
                "status": STATUS_FAILURE[1],
                "status_code": EXEC_KILLED[0],
                "status_detail": EXEC_KILLED[1],
            }
        return {"status_id": STATUS_SUCCESS[0], "status": STATUS_SUCCESS[1]}
    return {"status_id": FINDING_STATUS_NEW[0], "status": FINDING_STATUS_NEW[1]}


def egress_fields(e: EgressDetail, w: WorkloadRef | None = None) -> dict[str, Any]:
    version = ip_version_of(e.ip)
    return {
        "src_endpoint": src_endpoint(w),
        "dst_endpoint": {"ip": e.ip, "port": e.port if has_ports(e.protocol) else None},
        "connection_info": {
            "protocol_name": e.protocol,
            "protocol_num": protocol_number(e.protocol),
            "direction_id": DIRECTION_OUTBOUND[0],
            "direction": DIRECTION_OUTBOUND[1],
            "protocol_ver_id": version,
            "protocol_ver": _IP_VERSION.get(version or 0),
        },
    }


# ---------------------------------------------------------- detection finding ---


def socket_text(s: SocketDetail) -> str:
    """The kind as a policy spells it (``packet:raw``, ``inet6:raw``, ``netlink:audit``),
    with a non-default protocol of other families, e.g. ``inet:raw protocol 1`` (a packet
    socket's protocol is an ethertype in network order: left to the evidence data)."""
    text = kind_name(s.family_number, s.type_number, s.protocol)
    if s.family_number not in (AF_NETLINK, AF_PACKET) and s.protocol:
        return f"{text} protocol {s.protocol}"
    return text


def limit_text(li: LimitDetail) -> str:
    """``maxProcesses 50``, ``forksPerSecond 20/s (burst 40)``; ``?`` for unknown numbers."""
    budget = "?" if li.budget is None else str(li.budget)
    if li.limit == "maxProcesses":
        return f"maxProcesses {budget}"
    text = f"{li.limit} {budget}/s"
    return f"{text} (burst {li.burst})" if li.burst is not None else text


def is_dangerous_socket(s: SocketDetail) -> bool:
    """Packet sockets and raw IP sockets: sniffing and spoofing on the node's network."""
    family = effective_family(s.family_number, s.type_number)
    return family == AF_PACKET or (family in (AF_INET, AF_INET6) and s.type_number == SOCK_RAW)


def finding_severity(v: Violation) -> tuple[int, str]:
    """(severity_id, severity) of a Detection Finding: High for a denied syscall (the
    deny lists hold escape and tampering primitives: ptrace, mount, bpf, modules...) and
    for packet / raw IP sockets; Medium for other socket kinds and for broken process
    budgets (resource abuse, not escape). Audited attempts are one step lower, as egress
    and exec are (an audit-mode policy is being tried out, nothing was stopped)."""
    if v.syscall is not None:
        base = 4
    elif v.socket is not None:
        base = 4 if is_dangerous_socket(v.socket) else 3
    else:
        base = 3
    severity = base - 1 if v.verdict == "audited" else base
    return severity, _SEVERITY_NAMES[severity]


def severity(v: Violation) -> tuple[int, str]:
    """(severity_id, severity) of the event :func:`to_ocsf` makes of ``v``: 4 High when
    blocked and 3 Medium when audited for egress and exec, :func:`finding_severity` for
    the others."""
    if v.egress is None and v.exec is None:
        return finding_severity(v)
    return _SEVERITY[v.verdict]


def finding_verb(v: Violation) -> str:
    """``killed`` (a denied syscall or broken budget in enforce: the process got
    SIGKILL/SIGSYS), ``blocked`` (a socket: EPERM), ``audited``."""
    if v.verdict == "audited":
        return "audited"
    return "blocked" if v.socket is not None else "killed"


def finding_title(v: Violation) -> str:
    """e.g. ``Denied syscall ptrace``, ``Denied socket packet:raw``, ``Process budget
    forksPerSecond broken``."""
    if v.syscall is not None:
        return f"Denied syscall {v.syscall.name}"
    if v.socket is not None:
        return f"Denied socket {socket_text(v.socket)}"
    if v.limit is not None:
        return f"Process budget {v.limit.limit} broken"
    return v.kind


def finding_desc(v: Violation) -> str:
    """What happened and what the kernel did about it, in a sentence or two."""
    who = f"{v.process.name or 'unknown process'} (pid {v.process.pid})"
    policy = f"policy {v.policy.name}"
    if v.syscall is not None:
        sc = v.syscall
        text = f"{who} called {sc.name} (number {sc.number}, {sc.arch}), which {policy} denies"
        if sc.mechanism == "seccomp-kill":
            return f"{text}; the seccomp filter killed it before the call ran."
        return f"{text}; the call went ahead (audit), seen at syscall entry."
    if v.socket is not None:
        so = v.socket
        text = f"{who} asked for a {socket_text(so)} socket, a kind {policy} denies"
        if v.verdict == "audited":
            return f"{text}; it was created (audit)."
        return f"{text}; socket() failed with EPERM ({so.hook})."
    if v.limit is not None:
        li = v.limit
        observed = (
            ""
            if li.observed_processes is None
            else f" with {li.observed_processes} processes in the pod"
        )
        text = f"{who} broke the {limit_text(li)} budget of {policy}{observed}"
        if v.verdict == "audited":
            return f"{text}; nothing was stopped (audit)."
        return f"{text}; the process was killed."
    return message(v)


def finding_data(v: Violation) -> dict[str, Any]:
    """The evidence's ``data``: the violation's detail, keyed by kind."""
    if v.syscall is not None:
        return {"syscall": syscall_data(v.syscall)}
    if v.socket is not None:
        return {"socket": socket_data(v.socket)}
    if v.limit is not None:
        return {"limit": limit_data(v.limit)}
    return {}


def syscall_data(sc: SyscallDetail) -> dict[str, Any]:
    return {"name": sc.name, "number": sc.number, "arch": sc.arch, "mechanism": sc.mechanism}


def socket_data(so: SocketDetail) -> dict[str, Any]:
    return {
        "family": so.family,
        "family_num": so.family_number,
        "type": so.type,
        "type_num": so.type_number,
        "protocol": so.protocol,
        "protocol_name": so.protocol_name,
        "hook": so.hook,
    }


def limit_data(li: LimitDetail) -> dict[str, Any]:
    return {
        "name": li.limit,
        "budget": li.budget,
        "burst": li.burst,
        "observed": li.observed_processes,
    }


def finding_fields(
    v: Violation, actor: dict[str, Any] | None = None, container: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``finding_info``, ``evidences`` and ``confidence`` of a Detection Finding.
    ``actor`` and ``container``: the event's, when the caller has them."""
    if actor is None:
        actor = {"process": actor_process(v.process, v.workload)}
    return {
        "finding_info": {
            "uid": v.uid,
            "title": finding_title(v),
            "desc": finding_desc(v),
            "types": [f"nodeguard/{v.kind}"],
            "analytic": {
                "name": v.policy.name,
                "uid": v.policy.uid,
                "version": v.policy.version,
                "type_id": ANALYTIC_RULE[0],
                "type": ANALYTIC_RULE[1],
            },
        },
        "evidences": [
            {
                "actor": actor,
                "container": container if container is not None else container_object(v.workload),
                "data": finding_data(v),
            }
        ],
        "confidence_id": CONFIDENCE_HIGH[0],
        "confidence": CONFIDENCE_HIGH[1],
    }


def class_fields(
    v: Violation, actor: dict[str, Any] | None = None, container: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The attributes only one of the classes has."""
    if v.egress is not None:
        return egress_fields(v.egress, v.workload)
    if v.exec is not None:
        return {"process": launched_process(v.exec, v.process, v.workload, container)}
    if v.syscall is not None or v.socket is not None or v.limit is not None:
        return finding_fields(v, actor, container)
    return {}


def message(v: Violation) -> str:
    """One line for humans, e.g. ``blocked tcp connect to 1.2.3.4:443 by curl (pid 7)
    under policy p in pod ns/name (3 attempts)``, ``killed syscall ptrace (x86_64) by
    python3 (pid 9) under policy p``."""
    who = f"{v.process.name or 'unknown process'} (pid {v.process.pid})"
    verb: str = v.verdict
    if v.egress is not None:
        hook_verb = "connect" if v.egress.hook.startswith("connect") else "send"
        what = f"{v.egress.protocol} {hook_verb} to {endpoint_text(v.egress)}"
    elif v.exec is not None:
        what = f"exec of {v.exec.path}"
    elif v.syscall is not None:
        verb, what = finding_verb(v), f"syscall {v.syscall.name} ({v.syscall.arch})"
    elif v.socket is not None:
        verb, what = finding_verb(v), f"socket {socket_text(v.socket)}"
    elif v.limit is not None:
        verb, what = finding_verb(v), f"{limit_text(v.limit)} budget broken"
        if v.limit.observed_processes is not None:
            what += f" ({v.limit.observed_processes} processes)"
    else:
        what = v.kind
    text = f"{verb} {what} by {who} under policy {v.policy.name}"
    w = v.workload
    if w is not None and w.pod_name:
        text += f" in pod {w.namespace}/{w.pod_name}" if w.namespace else f" in pod {w.pod_name}"
    if v.count > 1:
        text += f" ({v.count} attempts)"
    return text


def hook_of(v: Violation) -> str | None:
    """The kernel hook (``unmapped.hook``): egress and socket records name one."""
    if v.egress is not None:
        return v.egress.hook
    if v.socket is not None:
        return v.socket.hook
    return None


def unmapped(v: Violation) -> dict[str, Any]:
    """nodeguard's own facts and the pod facts OCSF has no attribute for."""
    w = v.workload
    return {
        "cgroup_id": v.cgroup_id,
        "kind": v.kind,
        "hook": hook_of(v),
        "path_truncated": v.exec.truncated if v.exec is not None else None,
        "policy_mode": v.policy.mode,
        "k8s": k8s_unmapped(w),
        # an image reference without the resolved id cannot be an OCSF image (uid required)
        "container_image": w.image if w is not None and not w.image_id else None,
    }


def to_ocsf(v: Violation, *, product_version: str = __version__) -> dict[str, Any]:
    """The OCSF event for one violation (a JSON-ready dict)."""
    event_class, activity_id, activity_name = classify(v)
    severity_id, severity_name = severity(v)
    blocked = v.verdict == "blocked"
    action, disposition = _ACTION[v.verdict], _DISPOSITION[v.verdict]
    container = container_object(v.workload)
    actor = {"process": actor_process(v.process, v.workload, container)}
    profiles = ["host", "security_control"]
    if container is not None:
        profiles.append("container")
    aggregated = v.count > 1 or v.first_time_ms != v.time_ms
    event: dict[str, Any] = {
        "class_uid": event_class.uid,
        "class_name": event_class.name,
        "category_uid": event_class.category_uid,
        "category_name": event_class.category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": type_uid(event_class, activity_id),
        "type_name": f"{event_class.name}: {activity_name}",
        "time": v.time_ms,
        "timezone_offset": TIMEZONE_OFFSET,
        "start_time": v.first_time_ms if aggregated else None,
        "end_time": v.time_ms if aggregated else None,
        "count": v.count,
        "message": message(v),
        "severity_id": severity_id,
        "severity": severity_name,
        "action_id": action[0],
        "action": action[1],
        "disposition_id": disposition[0],
        "disposition": disposition[1],
        **status_fields(v),
        "is_alert": True,
        "policy": {
            "name": v.policy.name,
            "uid": v.policy.uid,
            "version": v.policy.version,
            "is_applied": blocked,  # audit: the policy's verdict was not enforced
        },
        "actor": actor,
        "device": {
            "type_id": DEVICE_TYPE_UNKNOWN[0],
            "type": DEVICE_TYPE_UNKNOWN[1],
            "hostname": v.node,
        },
        "observables": observables(v),
        "metadata": {
            "uid": v.uid,
            "sequence": v.sequence,
            "version": OCSF_VERSION,
            "event_code": v.kind,
            "log_name": LOG_NAME,
            "log_provider": PRODUCT,
            "profiles": profiles,
            "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": product_version},
        },
        "unmapped": unmapped(v),
        **class_fields(v, actor, container),
    }
    return _prune_dict(event)


_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def to_json_line(v: Violation, *, product_version: str = __version__) -> str:
    """The OCSF event as one compact JSON line (sorted keys, no trailing newline)."""
    return _ENCODER.encode(to_ocsf(v, product_version=product_version))
