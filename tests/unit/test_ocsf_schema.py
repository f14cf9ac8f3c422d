"""The OCSF projection checked against the OCSF 1.4.0 schema, transcribed below.

Every kind of violation (egress over TCP/IPv4 connect and UDP/IPv6 send, exec, syscall,
socket, limit), blocked and audited, with and without a pod, single and aggregated, is
projected and checked: every required attribute of its class and of every object in it
is present, every attribute it writes exists in the schema (nothing made up), the
``at_least_one`` constraints hold, enum ids are values of their enums and their captions
match, ``type_uid == class_uid * 100 + activity_id``, scalars have their dictionary types,
the recommended attributes nodeguard promises are there, and the event survives a JSON
round trip unchanged.

The lists are transcribed by hand from the ocsf/ocsf-schema repository at tag 1.4.0 (the
version in ``metadata.version``), with each class's and object's ``extends`` chain and
``$include``d profiles resolved; each block names the files it comes from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest

from nodeguard.events.model import (
    EgressDetail,
    LimitDetail,
    SocketDetail,
    SyscallDetail,
    Verdict,
    Violation,
    WorkloadRef,
)
from nodeguard.events.ocsf import OCSF_VERSION, to_json_line, to_ocsf
from tests.unit.test_ocsf import POD, POLICY, T, exec_violation, violation

SCHEMA_VERSION = "1.4.0"


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# ---------------------------------------------------------------- classes ---
# Required: events/base_event.json (activity_id category_uid class_uid metadata
# severity_id time type_uid), events/system/system.json (actor device, for 1007),
# events/system/process_activity.json (process), events/findings/finding.json
# (finding_info). The cloud and osint profiles' required attributes (cloud, osint) only
# apply to events that claim those profiles, which nodeguard never does.
REQUIRED = {
    4001: words("activity_id category_uid class_uid metadata severity_id time type_uid"),
    1007: words(
        "activity_id actor category_uid class_uid device metadata process severity_id time type_uid"
    ),
    2004: words(
        "activity_id category_uid class_uid finding_info metadata severity_id time type_uid"
    ),
}

# events/network/network.json: "constraints": {"at_least_one": [dst_endpoint, src_endpoint]}
AT_LEAST_ONE_EVENT = {4001: words("dst_endpoint src_endpoint")}

# Every attribute of the class: base_event.json + its profiles (cloud, datetime, host,
# osint, security_control), the category file (network.json + network_proxy and
# load_balancer profiles; system.json; finding.json + incident profile) and the class
# file (network_activity.json, process_activity.json, detection_finding.json).
_BASE = (
    "action action_id activity_id activity_name api attacks authorizations category_name "
    "category_uid class_name class_uid cloud confidence confidence_id confidence_score count "
    "device disposition disposition_id duration end_time enrichments firewall_rule is_alert "
    "malware message metadata observables osint policy raw_data risk_details risk_level "
    "risk_level_id risk_score severity severity_id start_time status status_code "
    "status_detail status_id time timezone_offset type_name type_uid unmapped actor"
)
ALLOWED = {
    4001: words(
        _BASE + " app_name connection_info dst_endpoint ja4_fingerprint_list load_balancer proxy"
        " proxy_connection_info proxy_endpoint proxy_http_request proxy_http_response proxy_tls"
        " proxy_traffic src_endpoint tls traffic url"
    ),
    1007: words(
        _BASE + " actual_permissions exit_code injection_type injection_type_id module process"
        " requested_permissions"
    ),
    2004: words(
        _BASE + " assignee assignee_group comment evidences finding_info impact impact_id"
        " impact_score is_suspected_breach priority priority_id remediation resources src_url"
        " ticket vendor_attributes verdict verdict_id vulnerabilities"
    ),
}

# Recommended attributes nodeguard fills in every event of the class (the others are
# listed, with the reason they stay empty, in docs/events.md). 2004: device comes with
# the host profile; status_id is the finding's workflow status.
PROMISED = {
    4001: words(
        "message observables status status_id timezone_offset device action_id disposition_id"
        " is_alert connection_info dst_endpoint"
    ),
    1007: words(
        "message observables status status_id timezone_offset action_id disposition_id is_alert"
    ),
    2004: words(
        "message observables status_id timezone_offset device action_id disposition_id"
        " is_alert confidence_id evidences"
    ),
}

# categories.json: uid per category; class_uid = category_uid * 1000 + the class's uid
# in its file ("uid": 1 network_activity, 7 process_activity, 4 detection_finding)
CATEGORY = {4001: (4, "Network Activity"), 1007: (1, "System Activity"), 2004: (2, "Findings")}
CLASS_NAME = {4001: "Network Activity", 1007: "Process Activity", 2004: "Detection Finding"}

# ---------------------------------------------------------------- objects ---
# objects/<name>.json with extends (_entity, endpoint, process_entity) and included
# profiles (container, data_classification, cloud) resolved.
OBJECT_REQUIRED = {
    "metadata": words("product version"),
    "product": frozenset(),
    "device": words("type_id"),
    "actor": frozenset(),
    "process": frozenset(),
    "file": words("name type_id"),
    "container": frozenset(),
    "image": words("uid"),
    "network_endpoint": frozenset(),
    "network_connection_info": words("direction_id"),
    "policy": frozenset(),
    "finding_info": words("uid"),
    "analytic": words("type_id"),
    "evidences": frozenset(),
    "observable": words("type_id"),
}
OBJECT_AT_LEAST_ONE = {
    "product": words("name uid"),  # _entity.json
    "device": words("ip uid name hostname instance_uid interface_uid interface_name"),
    "actor": words("process user invoked_by session app_name app_uid"),
    "process": words("pid uid"),
    "file": words("name uid"),
    "container": words("uid name"),
    "image": words("name uid"),
    "network_endpoint": words(
        "ip uid name hostname svc_name instance_uid interface_uid interface_name domain"
    ),
    "policy": words("name uid"),
    "analytic": words("name uid"),
    "evidences": words(
        "actor api connection_info data database databucket device dst_endpoint email file"
        " process query src_endpoint url user job script"
    ),
}
OBJECT_ALLOWED = {
    "metadata": words(
        "correlation_uid data_classification data_classifications debug event_code extension"
        " extensions labels log_level log_name log_provider log_version logged_time loggers"
        " modified_time original_time processed_time product profiles sequence tags"
        " tenant_uid uid version"
    ),
    "product": words(
        "cpe_name data_classification data_classifications feature lang name path uid"
        " url_string vendor_name version"
    ),
    "device": words(
        "agent_list autoscale_uid boot_time container created_time desc domain"
        " first_seen_time groups hostname hw_info hypervisor image imei imei_list"
        " instance_uid interface_name interface_uid ip is_compliant is_managed is_personal"
        " is_trusted last_seen_time location mac model modified_time name namespace_pid"
        " network_interfaces org os os_machine_uuid owner region risk_level risk_level_id"
        " risk_score subnet subnet_uid type type_id uid uid_alt vendor_name vlan_uid vpc_uid"
        " zone"
    ),
    "actor": words("app_name app_uid authorizations idp invoked_by process session user"),
    "process": words(
        "ancestry cmd_line container created_time environment_variables file integrity"
        " integrity_id lineage loaded_modules name namespace_pid parent_process path pid"
        " sandbox session terminated_time tid uid user working_directory xattributes"
    ),
    "file": words(
        "accessed_time accessor attributes company_name confidentiality confidentiality_id"
        " created_time creator data_classification data_classifications desc drive_type"
        " drive_type_id encryption_details ext hashes internal_name is_deleted is_encrypted"
        " is_public is_system mime_type modified_time modifier name owner parent_folder path"
        " product security_descriptor signature size storage_class tags type type_id uid url"
        " version xattributes"
    ),
    "container": words(
        "hash image labels name network_driver orchestrator pod_uuid runtime size tag tags uid"
    ),
    "image": words("labels name path tag tags uid"),
    "network_endpoint": words(
        "agent_list autonomous_system container domain hostname hw_info instance_uid"
        " interface_name interface_uid intermediate_ips ip location mac name namespace_pid os"
        " owner port proxy_endpoint subnet_uid svc_name type type_id uid vlan_uid vpc_uid zone"
    ),
    "network_connection_info": words(
        "boundary boundary_id community_uid direction direction_id flag_history protocol_name"
        " protocol_num protocol_ver protocol_ver_id session tcp_flags uid"
    ),
    "policy": words("desc group is_applied name uid version"),
    "finding_info": words(
        "analytic attacks created_time data_sources desc first_seen_time kill_chain"
        " last_seen_time modified_time product product_uid related_analytics related_events"
        " related_events_count src_url tags title types uid uid_alt"
    ),
    "analytic": words("category desc name related_analytics type type_id uid version"),
    "evidences": words(
        "actor api connection_info container data database databucket device dst_endpoint"
        " email file http_request http_response ja4_fingerprint_list job process query script"
        " src_endpoint tls url user"
    ),
    "observable": words("name reputation type type_id value"),
}

# which object each object-typed attribute holds (dictionary.json types, per parent);
# "event" is the top level. evidences.data and unmapped are free-form JSON objects.
CHILDREN: dict[str, dict[str, str]] = {
    "event": {
        "metadata": "metadata",
        "device": "device",
        "actor": "actor",
        "process": "process",
        "src_endpoint": "network_endpoint",
        "dst_endpoint": "network_endpoint",
        "connection_info": "network_connection_info",
        "policy": "policy",
        "finding_info": "finding_info",
        "evidences": "evidences",
        "observables": "observable",
    },
    "metadata": {"product": "product"},
    "actor": {"process": "process"},
    "process": {"file": "file", "parent_process": "process", "container": "container"},
    "network_endpoint": {"container": "container"},
    "container": {"image": "image"},
    "finding_info": {"analytic": "analytic"},
    "evidences": {"actor": "actor", "container": "container"},
}
FREE_FORM = {("event", "unmapped"), ("evidences", "data")}
# attributes that are arrays (dictionary.json "is_array": true)
ARRAYS = {
    ("event", "observables"),
    ("event", "evidences"),
    ("metadata", "profiles"),
    ("finding_info", "types"),
}

# --------------------------------------------------------------------- enums ---
# dictionary.json, overridden per class/object where the file has its own "enum"
SEVERITY = {
    0: "Unknown",
    1: "Informational",
    2: "Low",
    3: "Medium",
    4: "High",
    5: "Critical",
    6: "Fatal",
    99: "Other",
}
ACTION = {0: "Unknown", 1: "Allowed", 2: "Denied", 99: "Other"}
DISPOSITION = {
    0: "Unknown",
    1: "Allowed",
    2: "Blocked",
    3: "Quarantined",
    4: "Isolated",
    5: "Deleted",
    6: "Dropped",
    7: "Custom Action",
    8: "Approved",
    9: "Restored",
    10: "Exonerated",
    11: "Corrected",
    12: "Partially Corrected",
    13: "Uncorrected",
    14: "Delayed",
    15: "Detected",
    16: "No Action",
    17: "Logged",
    18: "Tagged",
    19: "Alert",
    20: "Count",
    21: "Reset",
    22: "Captcha",
    23: "Challenge",
    24: "Access Revoked",
    25: "Rejected",
    26: "Unauthorized",
    27: "Error",
    99: "Other",
}
STATUS = {0: "Unknown", 1: "Success", 2: "Failure", 99: "Other"}
# events/findings/finding.json: the finding's workflow status
FINDING_STATUS = {
    0: "Unknown",
    1: "New",
    2: "In Progress",
    3: "Suppressed",
    4: "Resolved",
    5: "Archived",
    99: "Other",
}
CONFIDENCE = {0: "Unknown", 1: "Low", 2: "Medium", 3: "High", 99: "Other"}
# network_activity.json, process_activity.json, finding.json (+ 0 Unknown, 99 Other)
ACTIVITY = {
    4001: {
        0: "Unknown",
        1: "Open",
        2: "Close",
        3: "Reset",
        4: "Fail",
        5: "Refuse",
        6: "Traffic",
        7: "Listen",
        99: "Other",
    },
    1007: {
        0: "Unknown",
        1: "Launch",
        2: "Terminate",
        3: "Open",
        4: "Inject",
        5: "Set User ID",
        99: "Other",
    },
    2004: {0: "Unknown", 1: "Create", 2: "Update", 3: "Close", 99: "Other"},
}
# objects/endpoint.json (device extends endpoint)
DEVICE_TYPE = {
    0: "Unknown",
    1: "Server",
    2: "Desktop",
    3: "Laptop",
    4: "Tablet",
    5: "Mobile",
    6: "Virtual",
    7: "IOT",
    8: "Browser",
    9: "Firewall",
    10: "Switch",
    11: "Hub",
    12: "Router",
    13: "IDS",
    14: "IPS",
    15: "Load Balancer",
    99: "Other",
}
FILE_TYPE = {
    0: "Unknown",
    1: "Regular File",
    2: "Folder",
    3: "Character Device",
    4: "Block Device",
    5: "Local Socket",
    6: "Named Pipe",
    7: "Symbolic Link",
    99: "Other",
}
DIRECTION = {0: "Unknown", 1: "Inbound", 2: "Outbound", 3: "Lateral", 99: "Other"}
PROTOCOL_VER = {
    0: "Unknown",
    4: "Internet Protocol version 4 (IPv4)",
    6: "Internet Protocol version 6 (IPv6)",
    99: "Other",
}
ANALYTIC_TYPE = {
    0: "Unknown",
    1: "Rule",
    2: "Behavioral",
    3: "Statistical",
    4: "Learning (ML/DL)",
    5: "Fingerprinting",
    6: "Tagging",
    7: "Keyword Match",
    8: "Regular Expressions",
    9: "Exact Data Match",
    10: "Partial Data Match",
    11: "Indexed Data Match",
    99: "Other",
}
# observable type_id: the "observable" number of the attribute's type in dictionary.json
# (hostname_t 1, ip_t 2, file_name_t 7, process_name_t 9, port_t 11; cmd_line 13, pid 15)
OBSERVABLE_TYPE = {
    1: "Hostname",
    2: "IP Address",
    7: "File Name",
    9: "Process Name",
    11: "Port",
    13: "Command Line",
    15: "Process ID",
}
# (object, id attribute) -> (enum, caption attribute)
ENUMS: dict[tuple[str, str], tuple[dict[int, str], str]] = {
    ("event", "severity_id"): (SEVERITY, "severity"),
    ("event", "action_id"): (ACTION, "action"),
    ("event", "disposition_id"): (DISPOSITION, "disposition"),
    ("event", "confidence_id"): (CONFIDENCE, "confidence"),
    ("device", "type_id"): (DEVICE_TYPE, "type"),
    ("file", "type_id"): (FILE_TYPE, "type"),
    ("network_connection_info", "direction_id"): (DIRECTION, "direction"),
    ("network_connection_info", "protocol_ver_id"): (PROTOCOL_VER, "protocol_ver"),
    ("analytic", "type_id"): (ANALYTIC_TYPE, "type"),
    ("observable", "type_id"): (OBSERVABLE_TYPE, "type"),
}

# ------------------------------------------------------------ scalar types ---
# dictionary.json "type" of the scalars nodeguard writes (integer_t, long_t,
# timestamp_t, port_t -> int; boolean_t -> bool; the rest string_t-like -> str)
INTS = words(
    "activity_id category_uid class_uid severity_id time type_uid count start_time end_time"
    " timezone_offset action_id disposition_id status_id confidence_id type_id sequence pid"
    " tid port direction_id protocol_num protocol_ver_id"
)
BOOLS = words("is_alert is_applied")
STRINGS = words(
    "activity_name category_name class_name type_name message severity action disposition"
    " status status_code status_detail confidence uid name version vendor_name log_name"
    " log_provider event_code hostname type cmd_line path ext ip protocol_name direction"
    " protocol_ver title desc orchestrator pod_uuid value"
)


# --------------------------------------------------------------- violations ---

PTRACE = SyscallDetail(name="ptrace", number=101, arch="x86_64", mechanism="seccomp-kill")
PACKET = SocketDetail("packet", 17, "raw", 3, 0, None, "seccomp-notify")
FORKS = LimitDetail("forksPerSecond", 20, 40, 37)
UDP6 = EgressDetail(ip="2001:db8::7", port=53, protocol="udp", family=6, hook="sendmsg6")


def finding(**fields: Any) -> Violation:
    return violation(**({"egress": None} | fields))


KINDS: dict[str, Violation] = {
    "egress-tcp4-connect": violation(),
    "egress-udp6-send": violation(egress=UDP6),
    "exec": exec_violation(),
    "syscall": finding(kind="syscall", syscall=PTRACE),
    "socket": finding(kind="socket", socket=PACKET),
    "limit": finding(kind="limit", limit=FORKS),
}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "pod": {"workload": POD},
    "aggregated-pod": {"workload": POD, "count": 57, "first_time_ms": T - 900},
    "container-no-image-id": {"workload": WorkloadRef(container_id="abc", image="busybox")},
}
AUDIT_POLICY = dataclasses.replace(POLICY, mode="audit")


def cases() -> list[Any]:
    out = []
    for kind, v in KINDS.items():
        for verdict in ("blocked", "audited"):
            for variant, fields in VARIANTS.items():
                policy = AUDIT_POLICY if verdict == "audited" else POLICY
                made = dataclasses.replace(v, verdict=verdict, policy=policy, **fields)
                out.append(pytest.param(made, id=f"{kind}-{verdict}-{variant}"))
    return out


CASES = cases()


# ------------------------------------------------------------------ checks ---


def check_object(kind: str, value: Any, where: str) -> None:
    """Required, allowed, at_least_one, enums and scalar types of one object, then its
    children, recursively."""
    assert isinstance(value, dict), f"{where}: an object, got {value!r}"
    if kind != "event":
        missing = OBJECT_REQUIRED[kind] - value.keys()
        assert not missing, f"{where} ({kind}): required {sorted(missing)} missing"
        unknown = value.keys() - OBJECT_ALLOWED[kind]
        assert not unknown, f"{where} ({kind}): {sorted(unknown)} not in OCSF {SCHEMA_VERSION}"
        one_of = OBJECT_AT_LEAST_ONE.get(kind)
        if one_of is not None:
            assert value.keys() & one_of, f"{where} ({kind}): none of {sorted(one_of)}"
    for (obj, attr), (enum, caption) in ENUMS.items():
        if obj == kind and attr in value:
            assert value[attr] in enum, f"{where}.{attr} = {value[attr]} not in its enum"
            if caption in value:
                assert value[caption] == enum[value[attr]], f"{where}.{caption}"
    for attr, item in value.items():
        path = f"{where}.{attr}"
        if (kind, attr) in FREE_FORM:
            assert isinstance(item, dict), path
            continue
        child = CHILDREN.get(kind, {}).get(attr)
        if (kind, attr) in ARRAYS:
            assert isinstance(item, list) and item, f"{path}: a non-empty array"
            for i, element in enumerate(item):
                if child is None:
                    assert isinstance(element, str), f"{path}[{i}]"
                else:
                    check_object(child, element, f"{path}[{i}]")
            continue
        if child is not None:
            check_object(child, item, path)
            continue
        assert not isinstance(item, (dict, list)), f"{path}: an object the test does not know"
        check_scalar(attr, item, path)


def check_scalar(attr: str, value: Any, where: str) -> None:
    if attr in BOOLS:
        assert type(value) is bool, f"{where}: boolean_t, got {value!r}"
    elif attr in INTS:
        assert type(value) is int, f"{where}: an integer, got {value!r}"
    elif attr in STRINGS:
        assert type(value) is str and value, f"{where}: a non-empty string, got {value!r}"
    else:
        raise AssertionError(f"{where}: the test has no type for {attr!r}")


def check_event(e: dict[str, Any]) -> None:
    class_uid = e["class_uid"]
    missing = REQUIRED[class_uid] - e.keys()
    assert not missing, f"required {sorted(missing)} missing"
    unknown = e.keys() - ALLOWED[class_uid]
    assert not unknown, f"{sorted(unknown)} are not attributes of class {class_uid}"
    not_promised = PROMISED[class_uid] - e.keys()
    assert not not_promised, f"recommended {sorted(not_promised)} missing"
    if class_uid in AT_LEAST_ONE_EVENT:
        assert e.keys() & AT_LEAST_ONE_EVENT[class_uid]
    # classification
    assert (e["category_uid"], e["category_name"]) == CATEGORY[class_uid]
    assert class_uid // 1000 == e["category_uid"]
    assert e["class_name"] == CLASS_NAME[class_uid]
    activity = ACTIVITY[class_uid]
    assert e["activity_id"] in activity
    assert e["activity_name"] == activity[e["activity_id"]]
    assert e["type_uid"] == class_uid * 100 + e["activity_id"]
    assert e["type_name"] == f"{CLASS_NAME[class_uid]}: {e['activity_name']}"
    status = FINDING_STATUS if class_uid == 2004 else STATUS
    assert e["status_id"] in status
    if "status" in e:
        assert e["status"] == status[e["status_id"]]
    assert -1080 <= e["timezone_offset"] <= 1080
    # profiles: only those whose attributes are used; never cloud or osint
    profiles = set(e["metadata"]["profiles"])
    assert {"host", "security_control"} <= profiles <= {"host", "security_control", "container"}
    assert "cloud" not in e and "osint" not in e
    assert e["metadata"]["version"] == SCHEMA_VERSION
    check_object("event", e, "$")


def check_observables(e: dict[str, Any]) -> None:
    """Each observable names an attribute of this event that holds its value."""
    for o in e["observables"]:
        value: Any = e
        for part in o["name"].split("."):
            value = value[part]
        assert str(value) == o["value"], o


def check_ips(e: dict[str, Any]) -> None:
    if "dst_endpoint" in e:
        ip = ipaddress.ip_address(e["dst_endpoint"]["ip"])
        assert ip.version == e["connection_info"]["protocol_ver_id"]


# ------------------------------------------------------------------- tests ---


def test_target_version() -> None:
    assert OCSF_VERSION == SCHEMA_VERSION


@pytest.mark.parametrize("v", CASES)
def test_event_meets_the_schema(v: Violation) -> None:
    e = to_ocsf(v)
    check_event(e)
    check_observables(e)
    check_ips(e)


@pytest.mark.parametrize("v", CASES)
def test_json_round_trip(v: Violation) -> None:
    e = to_ocsf(v)
    line = to_json_line(v)
    assert json.loads(line) == e
    assert json.loads(json.dumps(e)) == e  # only JSON types: no tuples, sets, bytes
    assert json.dumps(json.loads(line), separators=(",", ":"), sort_keys=True) == json.dumps(
        e, separators=(",", ":"), sort_keys=True
    )


@pytest.mark.parametrize("verdict", ["blocked", "audited"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_type_uid_is_consistent(kind: str, verdict: Verdict) -> None:
    e = to_ocsf(dataclasses.replace(KINDS[kind], verdict=verdict))
    assert e["type_uid"] == e["class_uid"] * 100 + e["activity_id"]


# The decisions docs/events.md documents, one row per (kind, verdict):
# (class_uid, activity_id, action_id, disposition_id, status_id)
DECISIONS: dict[tuple[str, Verdict], tuple[int, int, int, int, int]] = {
    ("egress-tcp4-connect", "blocked"): (4001, 5, 2, 2, 2),  # Refuse, Denied, Blocked, Failure
    ("egress-tcp4-connect", "audited"): (4001, 1, 1, 17, 0),  # Open, Allowed, Logged, Unknown
    ("egress-udp6-send", "blocked"): (4001, 5, 2, 2, 2),
    ("egress-udp6-send", "audited"): (4001, 6, 1, 17, 0),  # Traffic
    ("exec", "blocked"): (1007, 1, 2, 2, 2),  # Launch, killed before its first instruction
    ("exec", "audited"): (1007, 1, 1, 17, 1),  # Launch, Success: the new image ran
    ("syscall", "blocked"): (2004, 1, 2, 2, 1),  # Create, ..., New (workflow status)
    ("syscall", "audited"): (2004, 1, 1, 17, 1),
    ("socket", "blocked"): (2004, 1, 2, 2, 1),
    ("socket", "audited"): (2004, 1, 1, 17, 1),
    ("limit", "blocked"): (2004, 1, 2, 2, 1),
    ("limit", "audited"): (2004, 1, 1, 17, 1),
}


@pytest.mark.parametrize(("kind", "verdict"), sorted(DECISIONS))
def test_activity_and_disposition_decisions(kind: str, verdict: Verdict) -> None:
    e = to_ocsf(dataclasses.replace(KINDS[kind], verdict=verdict))
    got = (e["class_uid"], e["activity_id"], e["action_id"], e["disposition_id"], e["status_id"])
    assert got == DECISIONS[(kind, verdict)]
    assert e["policy"]["is_applied"] is (verdict == "blocked")


def test_cases_cover_every_kind_and_verdict() -> None:
    seen = {(v.kind, v.verdict) for v in (p.values[0] for p in CASES)}
    kinds = ("egress", "exec", "syscall", "socket", "limit")
    assert seen == {(k, verdict) for k in kinds for verdict in ("blocked", "audited")}


def doc_examples() -> list[dict[str, Any]]:
    text = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", text, re.S)]


def test_doc_examples_meet_the_schema() -> None:
    examples = doc_examples()
    assert {e["class_uid"] for e in examples} == {4001, 1007, 2004}
    for e in examples:
        check_event(e)
        check_observables(e)
