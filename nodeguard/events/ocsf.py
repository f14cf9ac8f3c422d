"""Projection of a :class:`Violation` onto OCSF (schema version :data:`OCSF_VERSION`).

- egress -> Network Activity (4001): Refuse (5) when blocked, Traffic (6) when audited;
  ``dst_endpoint``, ``connection_info`` (outbound).
- exec   -> Process Activity (1007): Launch (1); ``process.file.path`` is the image.
- syscall, socket, limit -> Detection Finding (2004): Create (1); ``finding_info`` names
  the finding (uid = the record's uid, title, types ``nodeguard/<kind>``, the policy as a
  Rule ``analytic``), one ``evidences`` entry holds the actor, the container and the
  detail in ``data``. ``status_id`` is the finding's workflow status (1 New), severity
  depends on the kind (see :func:`finding_severity`).

Common to all: the ``security_control`` profile (``action``, ``disposition``, ``policy``,
``is_alert``), the ``host`` profile (``device``, ``actor``) and, with a known workload,
the ``container`` profile (``actor.process.container``; OCSF 1.4 has no event-level
container). Pod facts OCSF cannot hold go to ``unmapped.k8s``; nodeguard's own facts to
``unmapped``. Absent values are left out, never written as null.
"""

from __future__ import annotations

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

# activity ids
NETWORK_REFUSE = (5, "Refuse")
NETWORK_TRAFFIC = (6, "Traffic")
PROCESS_LAUNCH = (1, "Launch")
FINDING_CREATE = (1, "Create")

# (id, caption) per verdict
_SEVERITY = {"blocked": (4, "High"), "audited": (3, "Medium")}
_ACTION = {"blocked": (2, "Denied"), "audited": (1, "Allowed")}
_DISPOSITION = {"blocked": (2, "Blocked"), "audited": (17, "Logged")}
_STATUS = {"blocked": (2, "Failure"), "audited": (1, "Success")}

# Detection Finding: status_id is the finding's workflow status (OCSF 1.4 finding.json),
# not the outcome of the activity; every record is a new finding.
FINDING_STATUS_NEW = (1, "New")
# confidence_id: the kernel saw the attempt itself, the rule is exact
CONFIDENCE_HIGH = (3, "High")
ANALYTIC_RULE = (1, "Rule")
_SEVERITY_NAMES = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}

DIRECTION_OUTBOUND = (2, "Outbound")
_IP_VERSION = {4: "Internet Protocol version 4 (IPv4)", 6: "Internet Protocol version 6 (IPv6)"}
FILE_TYPE_REGULAR = (1, "Regular File")
DEVICE_TYPE_UNKNOWN = (0, "Unknown")
ORCHESTRATOR = "kubernetes"


def type_uid(event_class: EventClass, activity_id: int) -> int:
    return event_class.uid * 100 + activity_id


def prune(value: Any) -> Any:
    """Drop None, empty strings and empty dicts, recursively (OCSF omits unknowns)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            pv = prune(v)
            if pv is None or pv in ("", {}):
                continue
            out[k] = pv
        return out
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


# ------------------------------------------------------------------- objects ---


def file_object(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    return {
        "path": path,
        "name": posixpath.basename(path) or path,
        "type_id": FILE_TYPE_REGULAR[0],
        "type": FILE_TYPE_REGULAR[1],
    }


def container_object(w: WorkloadRef | None) -> dict[str, Any] | None:
    if w is None or not (w.container_id or w.container_name):
        return None  # OCSF: a container needs at least a uid or a name
    in_pod = bool(w.pod_uid or w.pod_name)
    return {
        "uid": w.container_id,
        "name": w.container_name,
        "image": {"name": w.image, "uid": w.image_id},
        "orchestrator": ORCHESTRATOR if in_pod else None,
        "pod_uuid": w.pod_uid,
    }


def actor_process(p: ProcessInfo, w: WorkloadRef | None) -> dict[str, Any]:
    return {
        "pid": p.pid or None,
        "tid": p.tid or None,
        "name": p.name,
        "cmd_line": p.cmd_line,
        "file": file_object(p.path),
        "parent_process": {"pid": p.ppid} if p.ppid is not None else None,
        "container": container_object(w),
    }


def launched_process(e: ExecDetail, p: ProcessInfo, w: WorkloadRef | None) -> dict[str, Any]:
    """The process an exec made: same pid, the new image."""
    return {
        "pid": p.pid or None,
        "tid": p.tid or None,
        "name": posixpath.basename(e.path) or e.path,
        "file": file_object(e.path),
        "parent_process": {"pid": p.ppid} if p.ppid is not None else None,
        "container": container_object(w),
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


def endpoint_text(e: EgressDetail) -> str:
    host = f"[{e.ip}]" if ":" in e.ip else e.ip
    return f"{host}:{e.port}"


def ip_version_of(ip: str) -> int | None:
    try:
        return ipaddress.ip_address(ip).version
    except ValueError:
        return None


def has_ports(protocol: str) -> bool:
    return protocol in ("tcp", "udp")


# ------------------------------------------------------------------- classes ---


def classify(v: Violation) -> tuple[EventClass, int, str]:
    """(class, activity_id, activity_name) of a violation."""
    if v.egress is not None:
        activity = NETWORK_REFUSE if v.verdict == "blocked" else NETWORK_TRAFFIC
        return NETWORK_ACTIVITY, *activity
    if v.exec is not None:
        return PROCESS_ACTIVITY, *PROCESS_LAUNCH
    if v.syscall is not None or v.socket is not None or v.limit is not None:
        return DETECTION_FINDING, *FINDING_CREATE
    raise ValueError(
        f"violation {v.uid} of kind {v.kind!r} has no egress or exec detail "
        "(nor a syscall, socket or limit one)"
    )


def egress_fields(e: EgressDetail) -> dict[str, Any]:
    version = ip_version_of(e.ip)
    return {
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


def finding_fields(v: Violation) -> dict[str, Any]:
    """``finding_info``, ``evidences`` and ``confidence`` of a Detection Finding."""
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
                "actor": {"process": actor_process(v.process, v.workload)},
                "container": container_object(v.workload),
                "data": finding_data(v),
            }
        ],
        "confidence_id": CONFIDENCE_HIGH[0],
        "confidence": CONFIDENCE_HIGH[1],
    }


def class_fields(v: Violation) -> dict[str, Any]:
    """The attributes only one of the classes has."""
    if v.egress is not None:
        return egress_fields(v.egress)
    if v.exec is not None:
        return {"process": launched_process(v.exec, v.process, v.workload)}
    if v.syscall is not None or v.socket is not None or v.limit is not None:
        return finding_fields(v)
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


def to_ocsf(v: Violation, *, product_version: str = __version__) -> dict[str, Any]:
    """The OCSF event for one violation (a JSON-ready dict)."""
    event_class, activity_id, activity_name = classify(v)
    finding = event_class is DETECTION_FINDING
    severity = finding_severity(v) if finding else _SEVERITY[v.verdict]
    action, disposition = _ACTION[v.verdict], _DISPOSITION[v.verdict]
    status = FINDING_STATUS_NEW if finding else _STATUS[v.verdict]
    profiles = ["host", "security_control"]
    if container_object(v.workload) is not None:
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
        "start_time": v.first_time_ms if aggregated else None,
        "end_time": v.time_ms if aggregated else None,
        "count": v.count,
        "message": message(v),
        "severity_id": severity[0],
        "severity": severity[1],
        "action_id": action[0],
        "action": action[1],
        "disposition_id": disposition[0],
        "disposition": disposition[1],
        "status_id": status[0],
        "status": status[1],
        "is_alert": True,
        "policy": {"name": v.policy.name, "uid": v.policy.uid, "version": v.policy.version},
        "actor": {"process": actor_process(v.process, v.workload)},
        "device": {
            "type_id": DEVICE_TYPE_UNKNOWN[0],
            "type": DEVICE_TYPE_UNKNOWN[1],
            "hostname": v.node,
        },
        "metadata": {
            "uid": v.uid,
            "sequence": v.sequence,
            "version": OCSF_VERSION,
            "log_name": LOG_NAME,
            "profiles": profiles,
            "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": product_version},
        },
        "unmapped": {
            "cgroup_id": v.cgroup_id,
            "kind": v.kind,
            "hook": hook_of(v),
            "path_truncated": v.exec.truncated if v.exec is not None else None,
            "policy_mode": v.policy.mode,
            "k8s": k8s_unmapped(v.workload),
        },
        **class_fields(v),
    }
    result: dict[str, Any] = prune(event)
    return result


def to_json_line(v: Violation, *, product_version: str = __version__) -> str:
    """The OCSF event as one compact JSON line (sorted keys, no trailing newline)."""
    return json.dumps(
        to_ocsf(v, product_version=product_version),
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )
