"""The ``sinks:`` section of the collector configuration: defaults, and every problem
reported as ``file:line: path: message`` with a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeguard.collector.config import CollectorConfigError, parse_collector_config_text
from nodeguard.collector.sinks.config import (
    JsonlSink,
    NatsSink,
    SplunkHecSink,
    SyslogSink,
)

BASE = "listen: 127.0.0.1:0\ninsecure: true\ncluster: lab\nsinks:\n"


def parse(sinks: str) -> list[object]:
    return list(parse_collector_config_text(BASE + sinks, "c.yaml").sinks)


def problems(sinks: str) -> str:
    with pytest.raises(CollectorConfigError) as info:
        parse(sinks)
    return str(info.value)


def test_every_type_with_its_defaults(tmp_path: Path) -> None:
    jsonl, syslog, hec, nats = parse(
        f"""\
  - {{type: jsonl, name: file, path: {tmp_path}/events.jsonl}}
  - {{type: syslog, name: siem, address: "siem.example:6514"}}
  - {{type: splunk_hec, name: hec, token: s3cret,
      url: "https://splunk:8088/services/collector/event"}}
  - {{type: nats, name: bus, servers: ["nats://nats:4222", "tls://nats2:4222"]}}
"""
    )
    assert isinstance(jsonl, JsonlSink)
    assert (jsonl.batch_size, jsonl.max_retry_interval) == (500, 30.0)
    assert (jsonl.path, jsonl.max_bytes, jsonl.keep) == (
        tmp_path / "events.jsonl",
        100 * 1024 * 1024,
        5,
    )
    assert isinstance(syslog, SyslogSink)
    assert (syslog.address.host, syslog.address.port) == ("siem.example", 6514)
    assert (syslog.transport, syslog.facility, syslog.app_name) == ("tls", "authpriv", "nodeguard")
    assert syslog.hostname is None and syslog.structured_data_id == "nodeguard@32473"
    assert isinstance(hec, SplunkHecSink)
    assert (hec.source, hec.sourcetype, hec.index) == ("nodeguard", "nodeguard:ocsf", None)
    assert hec.token is not None and hec.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(hec)  # secrets stay out of logs
    assert isinstance(nats, NatsSink)
    assert (nats.stream, nats.subject_prefix, nats.create_stream) == (
        "NODEGUARD",
        "nodeguard",
        True,
    )


def test_full_syslog_and_tls_settings(tmp_path: Path) -> None:
    for name in ("ca.crt", "c.crt", "c.key"):
        (tmp_path / name).write_text("x")
    (syslog,) = parse(
        f"""\
  - type: syslog
    name: siem
    address: "[::1]:6514"
    transport: tls
    tls: {{ca: {tmp_path}/ca.crt, cert: {tmp_path}/c.crt, key: {tmp_path}/c.key, serverName: siem}}
    appName: ng
    facility: local4
    hostname: collector-1
    structuredDataId: ng@99999.1
    batchSize: 50
    maxRetryInterval: 2.5
"""
    )
    assert isinstance(syslog, SyslogSink) and syslog.tls is not None
    assert syslog.address.host == "::1"
    assert syslog.tls.server_name == "siem" and syslog.tls.cert == tmp_path / "c.crt"
    assert (syslog.facility, syslog.hostname, syslog.structured_data_id) == (
        "local4",
        "collector-1",
        "ng@99999.1",
    )
    assert (syslog.batch_size, syslog.max_retry_interval) == (50, 2.5)


def test_common_field_problems() -> None:
    text = problems(
        "  - {type: jsonl, name: -bad, path: rel/x.jsonl, batchSize: 0, maxRetryInterval: 0.1}\n"
    )
    assert "c.yaml:5: sinks[0].name: '-bad' is not a valid sink name" in text
    assert "c.yaml:5: sinks[0].batchSize: 0 is out of range: use 1-100000 events" in text
    assert "sinks[0].maxRetryInterval: 0.1 is out of range" in text
    assert "sinks[0].path: 'rel/x.jsonl' is not an absolute path" in text


def test_unknown_type_and_unknown_key() -> None:
    assert "unknown sink type 'kafka'" in problems("  - {type: kafka, name: k}\n")
    text = problems("  - type: syslog\n    name: s\n    address: 127.0.0.1:514\n    apName: x\n")
    assert "c.yaml:8: sinks[0].apName: unknown key 'apName' (did you mean 'appName'?)" in text


def test_duplicate_names() -> None:
    text = problems(
        "  - {type: jsonl, name: a, path: /tmp/a.jsonl}\n"
        "  - {type: jsonl, name: a, path: /tmp/b.jsonl}\n"
    )
    assert "sink name 'a' is used twice" in text


def test_syslog_problems(tmp_path: Path) -> None:
    text = problems("  - {type: syslog, name: s, address: '127.0.0.1:514', facility: local9}\n")
    assert "'local9' is not a syslog facility; use one of kern" in text
    text = problems(
        "  - {type: syslog, name: s, address: '127.0.0.1:514', transport: tcp, tls: {}}\n"
    )
    assert "sinks[0].tls: tls is set but transport is tcp" in text
    text = problems(
        f"  - {{type: syslog, name: s, address: 'x:1', tls: {{cert: {tmp_path}/none.crt}}}}\n"
    )
    assert "does not exist or is not a file" in text
    (tmp_path / "c.crt").write_text("x")
    text = problems(
        f"  - {{type: syslog, name: s, address: 'x:1', tls: {{cert: {tmp_path}/c.crt}}}}\n"
    )
    assert "sinks[0].tls.key: a client certificate needs both 'cert' and 'key'" in text
    text = problems("  - {type: syslog, name: s, address: 'x:1', structuredDataId: nodeguard}\n")
    assert "is not a private SD-ID" in text
    assert "has no port" in problems("  - {type: syslog, name: s, address: x}\n")


def test_hec_problems(tmp_path: Path) -> None:
    url = "https://s:8088/services/collector/event"
    assert "set exactly one of 'token' and 'tokenFile'" in problems(
        f"  - {{type: splunk_hec, name: h, url: '{url}'}}\n"
    )
    (tmp_path / "token").write_text("t\n")
    assert "set exactly one of 'token' and 'tokenFile'" in problems(
        f"  - {{type: splunk_hec, name: h, url: '{url}', token: t, tokenFile: {tmp_path}/token}}\n"
    )
    text = problems(f"  - {{type: splunk_hec, name: h, url: '{url}', token: t, index: Sec}}\n")
    assert "sinks[0].index: 'Sec' is not a Splunk index name" in text
    text = problems("  - {type: splunk_hec, name: h, url: 'https://s:8088/x', token: t}\n")
    assert "does not end in /services/collector/event" in text
    text = problems(
        "  - {type: splunk_hec, name: h, url: 'ftp://s/services/collector/event', token: t}\n"
    )
    assert "is not an http:// or https:// URL" in text
    text = problems(
        "  - {type: splunk_hec, name: h, url: 'http://s/services/collector/event', token: t, "
        "tls: {insecureSkipVerify: true}}\n"
    )
    assert "tls is set but url is http://" in text
    (hec,) = parse(
        f"  - {{type: splunk_hec, name: h, url: '{url}', tokenFile: {tmp_path}/token}}\n"
    )
    assert isinstance(hec, SplunkHecSink) and hec.token_file == tmp_path / "token"


def test_nats_problems(tmp_path: Path) -> None:
    text = problems("  - {type: nats, name: n, servers: ['http://x:1']}\n")
    assert "sinks[0].servers[0]: 'http://x:1' is not a nats:// or tls:// URL" in text
    text = problems(
        "  - {type: nats, name: n, servers: ['nats://x:1'], stream: 'a.b', subjectPrefix: 'a..b'}\n"
    )
    assert "sinks[0].stream: 'a.b' is not a JetStream stream name" in text
    assert "sinks[0].subjectPrefix: 'a..b' is not a NATS subject prefix" in text
    assert "list at least one server" in problems("  - {type: nats, name: n, servers: []}\n")
    (tmp_path / "user.creds").write_text("x")
    text = problems(
        f"  - {{type: nats, name: n, servers: ['nats://x:1'], token: t, "
        f"credentials: {tmp_path}/user.creds}}\n"
    )
    assert "credentials and token are both set" in text
