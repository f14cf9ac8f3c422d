"""What the sinks write, without any I/O: CEF, RFC 5424 messages and framing, HEC
envelopes, NATS subjects. Parsed back with the independent parsers of
test_sinks_samples, field by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeguard import __version__
from nodeguard.collector.records import StoredEvent
from nodeguard.collector.sinks.cef import CEF_SEVERITY, escape_header, to_cef
from nodeguard.collector.sinks.config import NatsSink, SplunkHecSink, SyslogSink
from nodeguard.collector.sinks.hec import HecSender
from nodeguard.collector.sinks.nats import NatsPublisher, subject_for, subject_token
from nodeguard.collector.sinks.syslog import (
    SYSLOG_SEVERITY,
    SyslogSender,
    format_message,
    frame,
    timestamp,
)
from nodeguard.events import ocsf
from nodeguard.events.model import PolicyRef, Violation
from tests.collector.test_sinks_samples import (
    CLUSTER,
    NASTY_CMDLINE,
    NASTY_PATH,
    NODE,
    every_kind,
    parse_cef,
    parse_rfc5424,
    parse_sd,
    violation,
)


def labelled(ext: dict[str, str]) -> dict[str, str]:
    """csN/flexStringN/cnN values by their labels."""
    out = {}
    for key, value in ext.items():
        if key.endswith("Label"):
            out[value] = ext[key.removesuffix("Label")]
    return out


def event_of(v: Violation, rowid: int = 1) -> StoredEvent:
    return StoredEvent(rowid=rowid, node=NODE, epoch=1, seq=rowid, received_ms=0, violation=v)


# ------------------------------------------------------------------------- CEF --


@pytest.mark.parametrize("v", every_kind(), ids=lambda v: f"{v.kind}-{v.verdict}")
def test_cef_round_trips_field_by_field(v: Violation) -> None:
    payload = to_cef(v)
    assert "\n" not in payload and "\r" not in payload
    header, ext = parse_cef(payload)
    projected = ocsf.to_ocsf(v)
    assert header[:4] == ["CEF:0", "nodeguard", "nodeguard", __version__]
    assert header[4] == f"{v.kind}-{v.verdict}"
    assert header[6] == str(CEF_SEVERITY[projected["severity_id"]])
    assert ext["rt"] == str(v.time_ms) and ext["end"] == str(v.time_ms)
    assert ext["start"] == str(v.first_time_ms)
    assert ext["cnt"] == str(v.count)
    assert ext["externalId"] == v.uid
    assert ext["dvchost"] == NODE
    assert ext["cat"] == f"nodeguard/{v.kind}"
    assert ext["msg"] == projected["message"]
    custom = labelled(ext)
    assert custom["policy"] == v.policy.name
    assert custom["uid"] == v.uid
    assert custom["cgroupId"] == str(v.cgroup_id)
    if v.process.cmd_line:
        assert custom["cmdLine"] == NASTY_CMDLINE
        assert ext["sproc"] == v.process.name and ext["spid"] == str(v.process.pid)
    else:
        assert "cmdLine" not in custom and "spid" not in ext
    if v.workload is not None:
        assert custom["namespace"] == v.workload.namespace
        assert custom["pod"] == v.workload.pod_name
        assert custom["container"] == v.workload.container_name
        assert custom["image"] == v.workload.image
    else:
        assert not {"namespace", "pod", "container", "image"} & custom.keys()
    if v.verdict == "audited":
        assert ext["act"] == "audited"


def test_cef_egress_fields() -> None:
    v4, v6, other = every_kind()[:3]
    ext4 = parse_cef(to_cef(v4))[1]
    assert (ext4["dst"], ext4["dpt"], ext4["proto"], ext4["act"]) == (
        "203.0.113.7",
        "443",
        "TCP",
        "blocked",
    )
    assert ext4["deviceDirection"] == "1"
    ext6 = parse_cef(to_cef(v6))[1]
    assert "dst" not in ext6
    assert ext6["c6a4"] == "2001:db8::5" and ext6["c6a4Label"] == "Destination IPv6 Address"
    assert (ext6["dpt"], ext6["proto"]) == ("53", "UDP")
    ext_other = parse_cef(to_cef(other))[1]
    assert "dpt" not in ext_other and ext_other["proto"] == "ip-proto-47"
    assert ext_other["cnt"] == "5"


def test_cef_exec_fields_keep_a_hostile_path() -> None:
    v = violation("exec")
    header, ext = parse_cef(to_cef(v))
    assert header[5] == "Denied exec"
    assert ext["filePath"] == NASTY_PATH
    assert ext["fname"] == NASTY_PATH.rsplit("/", 1)[1]
    assert ext["act"] == "killed"


def test_cef_findings_name_their_subject() -> None:
    by_kind = {v.kind: v for v in every_kind() if v.verdict == "blocked"}
    header, ext = parse_cef(to_cef(by_kind["syscall"]))
    assert header[5] == "Denied syscall ptrace" and ext["act"] == "killed"
    assert labelled(ext)["detail"] == "ptrace (x86_64, number 101, seccomp-kill)"
    header, ext = parse_cef(to_cef(by_kind["socket"]))
    assert header[5] == "Denied socket packet:raw" and ext["act"] == "blocked"
    header, ext = parse_cef(to_cef(by_kind["limit"]))
    assert header[5] == "Process budget maxProcesses broken"
    assert labelled(ext)["detail"] == "maxProcesses 50"


def test_cef_escapes_values_and_header() -> None:
    assert escape_header("a|b\\c\nd") == "a\\|b\\\\c d"
    payload = to_cef(violation("egress"))
    assert "--opt\\=a\\=b" in payload  # '=' escaped
    assert "line1\\nline2\\r\\nend" in payload  # line breaks as \n \r
    assert "C:\\\\temp" in payload  # backslash doubled
    assert "pipe|pipe" in payload  # '|' needs no escape in the extension


# ---------------------------------------------------------------------- syslog --


@pytest.mark.parametrize("v", every_kind(), ids=lambda v: f"{v.kind}-{v.verdict}")
def test_rfc5424_message_field_by_field(v: Violation) -> None:
    text = format_message(
        v,
        facility=10,
        app_name="nodeguard",
        hostname=None,
        sd_id="nodeguard@32473",
        cluster=CLUSTER,
    )
    msg = parse_rfc5424(text)
    severity = SYSLOG_SEVERITY[ocsf.to_ocsf(v)["severity_id"]]
    assert msg["pri"] == str(10 * 8 + severity)
    assert msg["version"] == "1"
    assert msg["timestamp"] == timestamp(v.time_ms)
    assert msg["hostname"] == NODE
    assert (msg["app_name"], msg["procid"], msg["msgid"]) == ("nodeguard", "-", v.kind)
    sd_id, params = parse_sd(msg["sd"])
    assert sd_id == "nodeguard@32473"
    assert params["uid"] == v.uid
    assert params["node"] == NODE
    assert params["cluster"] == CLUSTER
    assert params["policy"] == v.policy.name
    assert (params["kind"], params["verdict"]) == (v.kind, v.verdict)
    if v.workload is not None:
        assert (params["namespace"], params["pod"]) == (v.workload.namespace, v.workload.pod_name)
    assert msg["msg"] == to_cef(v)


def test_rfc5424_timestamp_is_utc_with_milliseconds() -> None:
    assert timestamp(1_714_564_800_123) == "2024-05-01T12:00:00.123Z"
    assert timestamp(5) == "1970-01-01T00:00:00.005Z"


def test_rfc5424_severity_follows_ocsf() -> None:
    assert SYSLOG_SEVERITY[4] == 3  # High -> err
    assert SYSLOG_SEVERITY[3] == 4  # Medium -> warning
    assert SYSLOG_SEVERITY[2] == 5  # Low -> notice


def test_rfc5424_hostname_override_and_sanitising() -> None:
    v = violation("egress", node="node with spaces")
    msg = parse_rfc5424(
        format_message(v, facility=20, app_name="ng", hostname=None, sd_id="x@1", cluster="c")
    )
    assert msg["hostname"] == "node_with_spaces"
    assert msg["pri"] == str(20 * 8 + 3)
    msg = parse_rfc5424(
        format_message(v, facility=20, app_name="ng", hostname="siem-src", sd_id="x@1", cluster="c")
    )
    assert msg["hostname"] == "siem-src"


def test_rfc5424_structured_data_escapes_quote_backslash_bracket() -> None:
    v = violation("exec", policy=PolicyRef(name='p"\\]x', uid="u", version="1", mode="enforce"))
    msg = parse_rfc5424(
        format_message(v, facility=10, app_name="ng", hostname=None, sd_id="x@1", cluster="c")
    )
    assert 'policy="p\\"\\\\\\]x"' in msg["sd"]
    assert parse_sd(msg["sd"])[1]["policy"] == 'p"\\]x'


def test_octet_counting_counts_utf8_octets() -> None:
    assert frame("é漢") == b"5 " + "é漢".encode()
    assert frame("") == b"0 "


def test_syslog_sender_renders_an_octet_counted_frame(tmp_path: Path) -> None:
    config = SyslogSink.model_validate(
        {"type": "syslog", "name": "s", "address": "127.0.0.1:6514", "transport": "tcp"}
    )
    v = violation("egress")
    data = SyslogSender(config, cluster=CLUSTER).render(event_of(v))
    length, _, message = data.partition(b" ")
    assert int(length) == len(message)
    parsed = parse_rfc5424(message.decode())
    assert parsed["pri"] == str(10 * 8 + 3)  # authpriv.err by default


# ------------------------------------------------------------------------- HEC --


def test_hec_event_envelope() -> None:
    config = SplunkHecSink.model_validate(
        {
            "type": "splunk_hec",
            "name": "hec",
            "url": "https://127.0.0.1:8088/services/collector/event",
            "token": "t",
            "index": "security",
        }
    )
    v = violation("socket")
    raw = HecSender(config).render(event_of(v)).decode()
    assert raw.startswith('{"time":1714564800.123,')
    envelope = json.loads(raw)
    assert envelope["time"] == pytest.approx(1714564800.123)
    assert envelope["host"] == NODE
    assert (envelope["source"], envelope["sourcetype"]) == ("nodeguard", "nodeguard:ocsf")
    assert envelope["index"] == "security"
    assert envelope["event"] == json.loads(ocsf.to_json_line(v))


def test_hec_envelope_without_index() -> None:
    config = SplunkHecSink.model_validate(
        {
            "type": "splunk_hec",
            "name": "hec",
            "url": "http://127.0.0.1/services/collector/event",
            "token": "t",
            "source": 'src "q"',
            "sourcetype": "st",
        }
    )
    envelope = json.loads(HecSender(config).render(event_of(violation("exec"))))
    assert "index" not in envelope
    assert envelope["source"] == 'src "q"' and envelope["sourcetype"] == "st"


# ------------------------------------------------------------------------ NATS --


def test_subject_tokens_are_escaped_reversibly() -> None:
    assert subject_token("agents") == "agents"
    assert subject_token(None) == "_" and subject_token("") == "_"
    assert subject_token("a.b c*d>e%f\tg") == "a%2Eb%20c%2Ad%3Ee%25f%09g"
    assert subject_for("acme.sec", "prod-1", None, "egress") == "acme.sec.prod-1._.egress"


def test_nats_message_of_an_event() -> None:
    config = NatsSink.model_validate(
        {"type": "nats", "name": "n", "servers": ["nats://127.0.0.1:4222"]}
    )
    v = violation("syscall")
    message = NatsPublisher(config, cluster=CLUSTER).render(event_of(v))
    assert message.subject == f"nodeguard.{CLUSTER}.agents.syscall"
    assert message.msg_id == v.uid
    assert json.loads(message.payload) == json.loads(ocsf.to_json_line(v))
    no_workload = every_kind()[2]
    assert NatsPublisher(config, cluster=CLUSTER).render(event_of(no_workload)).subject == (
        f"nodeguard.{CLUSTER}._.egress"
    )
