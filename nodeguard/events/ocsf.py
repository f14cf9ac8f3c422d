"""Projection of a :class:`Violation` onto OCSF (schema version :data:`OCSF_VERSION`).

- egress -> Network Activity (4001): Refuse (5) when blocked, Traffic (6) when audited;
  ``dst_endpoint``, ``connection_info`` (outbound).
- exec   -> Process Activity (1007): Launch (1); ``process.file.path`` is the image.

Common to both: the ``security_control`` profile (``action``, ``disposition``, ``policy``,
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
    ProcessInfo,
    Violation,
    WorkloadRef,
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

# activity ids
NETWORK_REFUSE = (5, "Refuse")
NETWORK_TRAFFIC = (6, "Traffic")
PROCESS_LAUNCH = (1, "Launch")

# (id, caption) per verdict
_SEVERITY = {"blocked": (4, "High"), "audited": (3, "Medium")}
_ACTION = {"blocked": (2, "Denied"), "audited": (1, "Allowed")}
_DISPOSITION = {"blocked": (2, "Blocked"), "audited": (17, "Logged")}
_STATUS = {"blocked": (2, "Failure"), "audited": (1, "Success")}

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
    raise ValueError(f"violation {v.uid} of kind {v.kind!r} has no egress or exec detail")


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


def class_fields(v: Violation) -> dict[str, Any]:
    """The attributes only one of the classes has."""
    if v.egress is not None:
        return egress_fields(v.egress)
    if v.exec is not None:
        return {"process": launched_process(v.exec, v.process, v.workload)}
    return {}


def message(v: Violation) -> str:
    """One line for humans, e.g. ``blocked tcp connect to 1.2.3.4:443 by curl (pid 7)
    under policy p in pod ns/name (3 attempts)``."""
    who = f"{v.process.name or 'unknown process'} (pid {v.process.pid})"
    if v.egress is not None:
        verb = "connect" if v.egress.hook.startswith("connect") else "send"
        what = f"{v.egress.protocol} {verb} to {endpoint_text(v.egress)}"
    elif v.exec is not None:
        what = f"exec of {v.exec.path}"
    else:
        what = v.kind
    text = f"{v.verdict} {what} by {who} under policy {v.policy.name}"
    w = v.workload
    if w is not None and w.pod_name:
        text += f" in pod {w.namespace}/{w.pod_name}" if w.namespace else f" in pod {w.pod_name}"
    if v.count > 1:
        text += f" ({v.count} attempts)"
    return text


def to_ocsf(v: Violation, *, product_version: str = __version__) -> dict[str, Any]:
    """The OCSF event for one violation (a JSON-ready dict)."""
    event_class, activity_id, activity_name = classify(v)
    severity, action = _SEVERITY[v.verdict], _ACTION[v.verdict]
    disposition, status = _DISPOSITION[v.verdict], _STATUS[v.verdict]
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
            "hook": v.egress.hook if v.egress is not None else None,
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
