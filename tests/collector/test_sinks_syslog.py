"""The syslog sink against a real rsyslogd (nodeguard.lab.rsyslog): octet-counted RFC 5424
over TCP and over TLS with a client certificate, every field parsed back, and a receiver
that is stopped while events arrive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeguard.collector.sinks.cef import to_cef
from nodeguard.collector.sinks.config import SyslogSink
from nodeguard.collector.sinks.runner import SinkRunner, build_runners
from nodeguard.collector.sinks.syslog import SYSLOG_SEVERITY
from nodeguard.collector.store import EventStore
from nodeguard.events import ocsf
from nodeguard.events.model import Violation
from nodeguard.lab import rsyslog as rsyslog_lab
from nodeguard.lab.rsyslog import Rsyslog
from tests.collector.test_sinks_samples import (
    CLUSTER,
    NASTY_CMDLINE,
    NASTY_PATH,
    NODE,
    every_kind,
    insert,
    many,
    open_store,
    parse_cef,
    parse_rfc5424,
    parse_sd,
    running,
    stored,
    wait_delivered,
    wait_for,
)

pytestmark = pytest.mark.skipif(not rsyslog_lab.available(), reason="rsyslogd is not installed")


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rsyslog")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with open_store(tmp_path / "events.db") as s:
        yield s


def syslog_runner(store: EventStore, **fields: Any) -> SinkRunner:
    config = SyslogSink.model_validate({"type": "syslog", "name": "siem", **fields})
    (runner,) = build_runners([config], store, cluster=CLUSTER)
    return runner


def tls_settings(rs: Rsyslog) -> dict[str, Any]:
    return {
        "address": rs.tls_address,
        "transport": "tls",
        "tls": {"ca": str(rs.ca), "cert": str(rs.client.cert), "key": str(rs.client.key)},
    }


def check_record(record: dict[str, Any], v: Violation, *, input_name: str) -> None:
    """What rsyslog parsed and the raw message, field by field."""
    assert record["input"] == input_name
    severity = SYSLOG_SEVERITY[ocsf.to_ocsf(v)["severity_id"]]
    assert record["pri"] == str(10 * 8 + severity)  # authpriv
    assert (record["facility"], record["severity"]) == ("10", str(severity))
    assert record["hostname"] == NODE
    assert (record["app_name"], record["procid"], record["msgid"]) == ("nodeguard", "-", v.kind)
    raw = parse_rfc5424(record["raw"])
    assert raw["sd"] == record["structured_data"]
    assert raw["msg"] == record["msg"] == to_cef(v)
    sd_id, params = parse_sd(record["structured_data"])
    assert sd_id == "nodeguard@32473"
    assert params["uid"] == v.uid and params["policy"] == v.policy.name
    assert (params["node"], params["cluster"], params["kind"]) == (NODE, CLUSTER, v.kind)
    header, ext = parse_cef(record["msg"])
    assert header[4] == f"{v.kind}-{v.verdict}"
    assert ext["externalId"] == v.uid and ext["rt"] == str(v.time_ms)
    labels = {value: ext[key.removesuffix("Label")] for key, value in ext.items() if "Label" in key}
    if v.process.cmd_line:
        assert labels["cmdLine"] == NASTY_CMDLINE  # newlines, '=', '\', '|' survived
    if v.exec is not None:
        assert ext["filePath"] == NASTY_PATH


def by_uid(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {parse_sd(r["structured_data"])[1]["uid"]: r for r in records}


def test_tcp_delivers_every_kind_field_by_field(rsyslog: Rsyslog, store: EventStore) -> None:
    samples = every_kind()
    insert(store, samples)
    runner = syslog_runner(store, address=rsyslog.tcp_address, transport="tcp", batchSize=4)
    with running(runner):
        stats = wait_delivered(runner, store)
        records = rsyslog.wait_for_records(len(samples))
    assert len(records) == len(samples)
    assert [parse_sd(r["structured_data"])[1]["uid"] for r in records] == [v.uid for v in samples]
    for record, v in zip(records, samples, strict=True):
        check_record(record, v, input_name="tcp")
    assert (stats.delivered, stats.batches, stats.failures) == (len(samples), 3, 0)


def test_tls_with_a_client_certificate(rsyslog: Rsyslog, store: EventStore) -> None:
    samples = every_kind()
    insert(store, samples)
    runner = syslog_runner(store, **tls_settings(rsyslog))
    with running(runner):
        stats = wait_delivered(runner, store)
        records = rsyslog.wait_for_records(len(samples))
    received = by_uid(records)
    assert len(records) == len(received) == len(samples)
    for v in samples:
        check_record(received[v.uid], v, input_name="tls")
    assert stats.failures == 0


def test_tls_refuses_a_receiver_it_cannot_verify(rsyslog: Rsyslog, store: EventStore) -> None:
    insert(store, every_kind()[:2])
    runner = syslog_runner(store, address=rsyslog.tls_address, transport="tls")  # system CAs
    with running(runner):
        wait_for(lambda: runner.stats().failures >= 1, "a failed TLS handshake")
        stats = runner.stats()
    assert stats.delivered == 0 and stats.lag == 2
    assert stats.last_error is not None and "TLS handshake" in stats.last_error
    assert "tls.ca" in stats.last_error  # the fix
    assert rsyslog.records() == []


@pytest.mark.parametrize("how", ["stop", "kill"])
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_receiver_down_while_events_arrive_loses_nothing(
    rsyslog: Rsyslog, store: EventStore, transport: str, how: str
) -> None:
    """Stopped (SIGTERM) or crashed (SIGKILL) while the sink is idle: the sink notices
    the closed connection before its next batch, so nothing is lost or doubled. (What a
    receiver crash mid-batch can lose is documented in docs/sinks.md.)"""
    settings = (
        {"address": rsyslog.tcp_address, "transport": "tcp"}
        if transport == "tcp"
        else tls_settings(rsyslog)
    )
    runner = syslog_runner(store, batchSize=10, maxRetryInterval=1, **settings)
    insert(store, many(20))
    with running(runner):
        wait_delivered(runner, store)
        rsyslog.wait_for_records(20)
        if how == "stop":
            rsyslog.stop()  # rsyslogd closes the connection
        else:
            rsyslog.kill()  # the kernel closes it
        insert(store, many(30, start=1000))
        wait_for(lambda: runner.stats().failures >= 2, "failures while rsyslogd is down")
        down = runner.stats()
        assert down.state == "retrying" and down.lag == 30
        assert down.last_error is not None and "cannot connect" in down.last_error
        rsyslog.start()  # same ports
        stats = wait_delivered(runner, store)
        records = rsyslog.wait_for_records(50)
    uids = [parse_sd(r["structured_data"])[1]["uid"] for r in records]
    assert uids == [e.violation.uid for e in stored(store)]  # all, once each, in order
    assert stats.delivered == 50 and stats.lag == 0 and stats.state == "ok"
    assert stats.failures >= 2 and stats.retries >= 2
