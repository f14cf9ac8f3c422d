"""OCSF projection, field by field, for each class and mode."""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from typing import Any

import pytest

from nodeguard import __version__
from nodeguard.bpf import abi
from nodeguard.events.aggregate import CountTracker
from nodeguard.events.build import ViolationBuilder
from nodeguard.events.clock import MonotonicClock
from nodeguard.events.decode import AF_INET6, decode, encode
from nodeguard.events.model import (
    EgressDetail,
    ExecDetail,
    PolicyRef,
    ProcessInfo,
    Violation,
    WorkloadRef,
)
from nodeguard.events.ocsf import OCSF_VERSION, message, prune, severity, to_json_line, to_ocsf
from tests.unit.test_build import UUID_RE
from tests.unit.test_decode import egress

T = 1_700_000_000_123
POLICY = PolicyRef(name="research-agent", uid="research-agent@v1", version="3f2a", mode="enforce")
PROC = ProcessInfo(
    pid=4242,
    tid=4243,
    name="curl",
    path="/usr/bin/curl",
    cmd_line="curl https://example.com",
    ppid=4000,
)
POD = WorkloadRef(
    namespace="agents",
    pod_name="research-0",
    pod_uid="0f3c8a4e-7f43-4a55-a0a2-1b9b1d5a8a11",
    pod_labels={"app": "research-agent"},
    container_id="containerd://abc123",
    container_name="agent",
    image="ghcr.io/acme/agent:1.2",
    image_id="sha256:0123abcd",
)


def violation(**fields: Any) -> Violation:
    base = Violation(
        uid="01890a5d-ac96-774b-bcce-b302099a8057",
        sequence=12,
        kind="egress",
        time_ms=T,
        first_time_ms=T,
        count=1,
        verdict="blocked",
        cgroup_id=9876,
        process=PROC,
        policy=POLICY,
        egress=EgressDetail(ip="10.20.1.5", port=443, protocol="tcp", family=4, hook="connect4"),
        node="node-a",
    )
    return dataclasses.replace(base, **fields)


def exec_violation(**fields: Any) -> Violation:
    defaults: dict[str, Any] = {
        "kind": "exec",
        "egress": None,
        "exec": ExecDetail(path="/usr/bin/nc", truncated=False),
        "process": dataclasses.replace(PROC, name="nc", path="/usr/bin/nc", cmd_line="nc -l"),
    }
    return violation(**(defaults | fields))


# --------------------------------------------------------------- network ---


def test_egress_blocked_classification() -> None:
    e = to_ocsf(violation(), product_version="9.9.9")
    assert e["class_uid"] == 4001
    assert e["class_name"] == "Network Activity"
    assert e["category_uid"] == 4
    assert e["category_name"] == "Network Activity"
    assert e["activity_id"] == 5
    assert e["activity_name"] == "Refuse"
    assert e["type_uid"] == 400105
    assert e["type_name"] == "Network Activity: Refuse"


def test_egress_blocked_outcome() -> None:
    e = to_ocsf(violation())
    assert (e["action_id"], e["action"]) == (2, "Denied")
    assert (e["disposition_id"], e["disposition"]) == (2, "Blocked")
    assert (e["severity_id"], e["severity"]) == (4, "High")
    assert (e["status_id"], e["status"]) == (2, "Failure")
    assert (e["status_code"], e["status_detail"]) == ("EPERM", "connect() failed with EPERM")
    assert e["is_alert"] is True
    assert e["policy"]["is_applied"] is True


def test_egress_audited_connect_is_open() -> None:
    # The connect went ahead (Open); whether it connected is not seen (status Unknown).
    e = to_ocsf(violation(verdict="audited", policy=dataclasses.replace(POLICY, mode="audit")))
    assert (e["activity_id"], e["activity_name"]) == (1, "Open")
    assert e["type_uid"] == 400101
    assert e["type_name"] == "Network Activity: Open"
    assert (e["action_id"], e["action"]) == (1, "Allowed")
    assert (e["disposition_id"], e["disposition"]) == (17, "Logged")
    assert (e["severity_id"], e["severity"]) == (3, "Medium")
    assert (e["status_id"], e["status"]) == (0, "Unknown")
    assert "status_code" not in e and "status_detail" not in e
    assert e["policy"]["is_applied"] is False
    assert e["unmapped"]["policy_mode"] == "audit"


@pytest.mark.parametrize("hook", ["sendmsg4", "sendmsg6"])
def test_egress_audited_udp_send_is_traffic(hook: str) -> None:
    detail = EgressDetail(ip="10.0.0.9", port=53, protocol="udp", family=4, hook=hook)  # type: ignore[arg-type]
    e = to_ocsf(violation(egress=detail, verdict="audited"))
    assert (e["activity_id"], e["activity_name"], e["type_uid"]) == (6, "Traffic", 400106)
    assert e["type_name"] == "Network Activity: Traffic"
    assert (e["status_id"], e["disposition_id"]) == (0, 17)


def test_egress_blocked_udp_send_is_refused() -> None:
    detail = EgressDetail(ip="10.0.0.9", port=53, protocol="udp", family=4, hook="sendmsg4")
    e = to_ocsf(violation(egress=detail))
    assert (e["activity_id"], e["type_uid"]) == (5, 400105)
    assert e["status_detail"] == "sendmsg() failed with EPERM"


def test_egress_endpoint_and_connection() -> None:
    e = to_ocsf(violation())
    assert e["dst_endpoint"] == {"ip": "10.20.1.5", "port": 443}
    assert e["connection_info"] == {
        "protocol_name": "tcp",
        "protocol_num": 6,
        "direction_id": 2,
        "direction": "Outbound",
        "protocol_ver_id": 4,
        "protocol_ver": "Internet Protocol version 4 (IPv4)",
    }
    assert "process" not in e  # actor.process only for Network Activity


def test_egress_ipv6_udp() -> None:
    detail = EgressDetail(ip="2001:db8::7", port=53, protocol="udp", family=6, hook="sendmsg6")
    e = to_ocsf(violation(egress=detail))
    assert e["dst_endpoint"] == {"ip": "2001:db8::7", "port": 53}
    assert e["connection_info"]["protocol_name"] == "udp"
    assert e["connection_info"]["protocol_num"] == 17
    assert e["connection_info"]["protocol_ver_id"] == 6
    assert e["unmapped"]["hook"] == "sendmsg6"


def test_egress_mapped_address_via_v6_socket_is_ipv4_on_the_wire() -> None:
    detail = EgressDetail(ip="192.0.2.1", port=80, protocol="tcp", family=6, hook="connect6")
    e = to_ocsf(violation(egress=detail))
    assert e["connection_info"]["protocol_ver_id"] == 4


def test_egress_other_protocol_has_no_port() -> None:
    detail = EgressDetail(ip="10.0.0.1", port=0, protocol="ip-proto-1", family=4, hook="connect4")
    e = to_ocsf(violation(egress=detail))
    assert e["dst_endpoint"] == {"ip": "10.0.0.1"}
    assert e["connection_info"]["protocol_num"] == 1
    assert e["connection_info"]["protocol_name"] == "ip-proto-1"


# --------------------------------------------------------------- process ---


def test_exec_blocked() -> None:
    e = to_ocsf(exec_violation())
    assert e["class_uid"] == 1007
    assert e["class_name"] == "Process Activity"
    assert e["category_uid"] == 1
    assert e["category_name"] == "System Activity"
    assert (e["activity_id"], e["activity_name"]) == (1, "Launch")
    assert e["type_uid"] == 100701
    assert e["type_name"] == "Process Activity: Launch"
    assert (e["action_id"], e["disposition_id"], e["severity_id"]) == (2, 2, 4)
    assert e["process"] == {
        "pid": 4242,
        "tid": 4243,
        "name": "nc",
        "cmd_line": "nc -l",  # read from /proc after the exec: the new image's
        "file": {"path": "/usr/bin/nc", "name": "nc", "type_id": 1, "type": "Regular File"},
        "parent_process": {"pid": 4000},
    }
    assert (e["status_id"], e["status"]) == (2, "Failure")
    assert e["status_code"] == "SIGKILL"
    assert e["status_detail"] == "killed with SIGKILL before the new image ran an instruction"
    assert "dst_endpoint" not in e
    assert "connection_info" not in e
    assert e["unmapped"]["path_truncated"] is False


def test_exec_audited() -> None:
    e = to_ocsf(exec_violation(verdict="audited"))
    assert (e["activity_id"], e["type_uid"]) == (1, 100701)
    assert (e["action_id"], e["disposition_id"], e["severity_id"], e["status_id"]) == (1, 17, 3, 1)
    assert e["status"] == "Success"  # the exec tracepoint fires once the new image is in place
    assert "status_code" not in e and "status_detail" not in e
    assert e["policy"]["is_applied"] is False


@pytest.mark.parametrize("verdict", ["blocked", "audited"])
@pytest.mark.parametrize("make", [violation, exec_violation])
def test_type_uid_is_class_times_100_plus_activity(make: Any, verdict: str) -> None:
    e = to_ocsf(make(verdict=verdict))
    assert e["type_uid"] == e["class_uid"] * 100 + e["activity_id"]
    assert e["type_name"] == f"{e['class_name']}: {e['activity_name']}"


# ---------------------------------------------------------------- common ---


def test_time_and_count_single_attempt() -> None:
    e = to_ocsf(violation())
    assert e["time"] == T
    assert e["count"] == 1
    assert "start_time" not in e
    assert "end_time" not in e


def test_time_and_count_aggregate() -> None:
    e = to_ocsf(violation(count=57, first_time_ms=T - 900))
    assert (e["time"], e["start_time"], e["end_time"], e["count"]) == (T, T - 900, T, 57)


def test_policy() -> None:
    e = to_ocsf(violation())
    assert e["policy"] == {
        "name": "research-agent",
        "uid": "research-agent@v1",
        "version": "3f2a",
        "is_applied": True,
    }


def test_unknown_policy_version_left_out() -> None:
    unknown = PolicyRef(name="unknown", uid="unknown:9", version="", mode="enforce")
    assert to_ocsf(violation(policy=unknown))["policy"] == {
        "name": "unknown",
        "uid": "unknown:9",
        "is_applied": True,
    }


def test_actor_process() -> None:
    e = to_ocsf(violation())
    assert e["actor"] == {
        "process": {
            "pid": 4242,
            "tid": 4243,
            "name": "curl",
            "cmd_line": "curl https://example.com",
            "file": {"path": "/usr/bin/curl", "name": "curl", "type_id": 1, "type": "Regular File"},
            "parent_process": {"pid": 4000},
        }
    }


def test_actor_process_minimal() -> None:
    e = to_ocsf(violation(process=ProcessInfo(pid=7, tid=7, name="x")))
    assert e["actor"] == {"process": {"pid": 7, "tid": 7, "name": "x"}}


def test_device() -> None:
    assert to_ocsf(violation())["device"] == {"type_id": 0, "type": "Unknown", "hostname": "node-a"}
    assert to_ocsf(violation(node=None))["device"] == {"type_id": 0, "type": "Unknown"}


def test_metadata() -> None:
    e = to_ocsf(violation(), product_version="1.2.3")
    assert e["metadata"] == {
        "uid": "01890a5d-ac96-774b-bcce-b302099a8057",
        "sequence": 12,
        "version": OCSF_VERSION,
        "event_code": "egress",
        "log_name": "violations",
        "log_provider": "nodeguard",
        "profiles": ["host", "security_control"],
        "product": {"name": "nodeguard", "vendor_name": "nodeguard", "version": "1.2.3"},
    }
    assert OCSF_VERSION.startswith("1.")
    assert to_ocsf(violation())["metadata"]["product"]["version"] == __version__


def test_unmapped() -> None:
    assert to_ocsf(violation())["unmapped"] == {
        "cgroup_id": 9876,
        "kind": "egress",
        "hook": "connect4",
        "policy_mode": "enforce",
    }
    assert to_ocsf(exec_violation())["unmapped"] == {
        "cgroup_id": 9876,
        "kind": "exec",
        "path_truncated": False,
        "policy_mode": "enforce",
    }


def test_no_workload_no_container() -> None:
    e = to_ocsf(violation())
    assert "container" not in e["actor"]["process"]
    assert "k8s" not in e["unmapped"]
    assert "container" not in e["metadata"]["profiles"]


def test_workload_container_and_pod() -> None:
    e = to_ocsf(violation(workload=POD))
    container = {
        "uid": "containerd://abc123",
        "name": "agent",
        "image": {"name": "ghcr.io/acme/agent:1.2", "uid": "sha256:0123abcd"},
        "orchestrator": "kubernetes",
        "pod_uuid": "0f3c8a4e-7f43-4a55-a0a2-1b9b1d5a8a11",
    }
    assert e["actor"]["process"]["container"] == container
    assert e["unmapped"]["k8s"] == {
        "namespace": "agents",
        "pod_name": "research-0",
        "pod_uid": "0f3c8a4e-7f43-4a55-a0a2-1b9b1d5a8a11",
        "pod_labels": {"app": "research-agent"},
    }
    assert "container" in e["metadata"]["profiles"]
    assert e["src_endpoint"] == {
        "name": "research-0",
        "uid": "0f3c8a4e-7f43-4a55-a0a2-1b9b1d5a8a11",
    }
    x = to_ocsf(exec_violation(workload=POD))
    assert "src_endpoint" not in x  # Network Activity only
    assert x["process"]["container"] == container
    assert x["actor"]["process"]["container"] == container


def test_workload_without_container_ids() -> None:
    # A pod known but no container id or name: OCSF needs one of them for a container.
    pod_only = WorkloadRef(namespace="agents", pod_name="p", pod_uid="u")
    e = to_ocsf(violation(workload=pod_only))
    assert "container" not in e["actor"]["process"]
    assert e["unmapped"]["k8s"] == {"namespace": "agents", "pod_name": "p", "pod_uid": "u"}


def test_container_outside_kubernetes() -> None:
    local = WorkloadRef(container_id="abc", image="busybox", image_id="sha256:beef")
    e = to_ocsf(violation(workload=local))
    container = {"uid": "abc", "image": {"name": "busybox", "uid": "sha256:beef"}}
    assert e["actor"]["process"]["container"] == container
    assert "src_endpoint" not in e  # no pod: the source is not known
    assert "k8s" not in e["unmapped"]  # no pod facts


def test_image_without_id_is_not_an_ocsf_image() -> None:
    # OCSF 1.4.0 image.json: uid is required; the bare reference goes to unmapped
    local = WorkloadRef(container_id="abc", image="busybox")
    e = to_ocsf(violation(workload=local))
    assert e["actor"]["process"]["container"] == {"uid": "abc"}
    assert e["unmapped"]["container_image"] == "busybox"
    assert "container_image" not in to_ocsf(violation(workload=POD))["unmapped"]


def test_no_nulls_anywhere() -> None:
    def walk(value: Any) -> None:
        assert value is not None
        if isinstance(value, dict):
            assert value, "empty object"
            for v in value.values():
                walk(v)

    sparse = violation(process=ProcessInfo(pid=0, tid=0, name=""), node=None)
    for v in (sparse, violation(workload=POD), exec_violation(workload=WorkloadRef())):
        walk(to_ocsf(v))


def test_timezone_offset_is_utc() -> None:
    # `time` is epoch milliseconds: the reported time is 0 minutes off UTC
    assert to_ocsf(violation())["timezone_offset"] == 0
    assert to_ocsf(exec_violation())["timezone_offset"] == 0


def test_observables_egress() -> None:
    e = to_ocsf(violation())
    assert e["observables"] == [
        {"name": "device.hostname", "type_id": 1, "type": "Hostname", "value": "node-a"},
        {"name": "actor.process.name", "type_id": 9, "type": "Process Name", "value": "curl"},
        {"name": "dst_endpoint.ip", "type_id": 2, "type": "IP Address", "value": "10.20.1.5"},
        {"name": "dst_endpoint.port", "type_id": 11, "type": "Port", "value": "443"},
    ]


def test_observables_exec() -> None:
    e = to_ocsf(exec_violation(node=None))
    assert e["observables"] == [
        {"name": "actor.process.name", "type_id": 9, "type": "Process Name", "value": "nc"},
        {"name": "process.name", "type_id": 9, "type": "Process Name", "value": "nc"},
        {"name": "process.file.name", "type_id": 7, "type": "File Name", "value": "nc"},
    ]


def test_observables_point_at_values_in_the_event() -> None:
    for v in (violation(workload=POD), exec_violation()):
        e = to_ocsf(v)
        for o in e["observables"]:
            value: Any = e
            for part in o["name"].split("."):
                value = value[part]
            assert str(value) == o["value"]


def test_observables_left_out_when_nothing_is_known() -> None:
    detail = EgressDetail(ip="10.0.0.1", port=0, protocol="ip-proto-1", family=4, hook="connect4")
    e = to_ocsf(violation(egress=detail, node=None, process=ProcessInfo(pid=1, tid=1, name="")))
    assert e["observables"] == [
        {"name": "dst_endpoint.ip", "type_id": 2, "type": "IP Address", "value": "10.0.0.1"}
    ]


@pytest.mark.parametrize(
    ("path", "name", "ext"),
    [
        ("/usr/bin/python3", "python3", None),
        ("/opt/agent/bin/run.sh", "run.sh", "sh"),
        ("/home/a/.profile", ".profile", None),
        ("/tmp/x.tar.gz", "x.tar.gz", "gz"),
    ],
)
def test_file_name_and_ext(path: str, name: str, ext: str | None) -> None:
    f = to_ocsf(exec_violation(exec=ExecDetail(path=path, truncated=False)))["process"]["file"]
    assert (f["path"], f["name"], f.get("ext")) == (path, name, ext)


@pytest.mark.parametrize("verdict", ["blocked", "audited"])
def test_severity_is_the_events(verdict: str) -> None:
    for v in (violation(verdict=verdict), exec_violation(verdict=verdict)):
        e = to_ocsf(v)
        assert severity(v) == (e["severity_id"], e["severity"])


def test_prune() -> None:
    assert prune({"a": None, "b": "", "c": {}, "d": {"e": None}, "f": 0, "g": [1]}) == {
        "f": 0,
        "g": [1],
    }
    assert prune({"a": False, "b": [{"c": None, "d": 1}], "e": 0.5}) == {
        "a": False,
        "b": [{"d": 1}],
        "e": 0.5,
    }
    assert prune(OrderedDict(a=OrderedDict(b=None), c="x")) == {"c": "x"}


# --------------------------------------------------------------- message ---


def test_message_egress() -> None:
    assert message(violation()) == (
        "blocked tcp connect to 10.20.1.5:443 by curl (pid 4242) under policy research-agent"
    )
    udp6 = EgressDetail(ip="2001:db8::7", port=53, protocol="udp", family=6, hook="sendmsg6")
    assert message(violation(egress=udp6, verdict="audited", count=3, workload=POD)) == (
        "audited udp send to [2001:db8::7]:53 by curl (pid 4242) under policy research-agent"
        " in pod agents/research-0 (3 attempts)"
    )


def test_message_exec() -> None:
    assert message(exec_violation()) == (
        "blocked exec of /usr/bin/nc by nc (pid 4242) under policy research-agent"
    )


def test_message_is_in_event() -> None:
    assert to_ocsf(violation())["message"] == message(violation())


# ------------------------------------------------------------------ json ---


def test_json_line() -> None:
    v = violation(workload=POD, count=2, first_time_ms=T - 5)
    line = to_json_line(v, product_version="1.0.0")
    assert "\n" not in line
    assert ", " not in line and '": ' not in line  # compact separators
    assert json.loads(line) == to_ocsf(v, product_version="1.0.0")
    keys = list(json.loads(line))
    assert keys == sorted(keys)


def test_json_line_keeps_unicode() -> None:
    v = exec_violation(exec=ExecDetail(path="/tmp/\ufffdévil", truncated=True))
    line = to_json_line(v)
    assert "/tmp/\ufffdévil" in line
    assert json.loads(line)["unmapped"]["path_truncated"] is True


def test_violation_without_detail_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no egress or exec detail"):
        to_ocsf(violation(egress=None))


# ------------------------------------------------------------ end to end ---


def test_record_bytes_to_ocsf() -> None:
    raw = dataclasses.replace(egress("203.0.113.9"), family=AF_INET6, hook=int(abi.Hook.CONNECT6))
    data = encode(dataclasses.replace(raw, hdr=dataclasses.replace(raw.hdr, count_total=1)))
    decoded = decode(data)
    assert decoded is not None
    builder = ViolationBuilder(
        policies={7: POLICY},
        clock=MonotonicClock(offset_ns=T * 1_000_000 - 5_000_000_000),
        tracker=CountTracker(),
        node="node-a",
        enrich=False,
        workload_of=lambda _cgid: POD,
    )
    v = builder.from_record(decoded)
    assert v is not None
    e = json.loads(to_json_line(v))
    assert e["type_uid"] == 400105
    assert e["time"] == T
    assert e["dst_endpoint"] == {"ip": "203.0.113.9", "port": 443}
    assert e["connection_info"]["protocol_ver_id"] == 4
    assert e["unmapped"]["hook"] == "connect6"
    assert e["actor"]["process"]["pid"] == 4242
    assert e["actor"]["process"]["container"]["uid"] == "containerd://abc123"
    assert e["metadata"]["sequence"] == 1
    assert UUID_RE.match(e["metadata"]["uid"])
