"""Agent metrics (private registry, names and labels) and the metrics/health endpoint."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from nodeguard import __version__
from nodeguard.agent.metrics import (
    AgentMetrics,
    MetricsServer,
    MetricsServerError,
    parse_address,
)


def samples(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_names_and_labels() -> None:
    m = AgentMetrics(node="node-a")
    m.violation("egress", "blocked", "research-agent", "agents", 3)
    m.violation("exec", "audited", "browser-agent", "web")
    m.lost("userspace", 2)
    m.records_total(15)
    m.aggregated_total(41)
    m.pods_guarded.set(3)
    m.policies_loaded.set(2)
    m.policy_load_errors.inc()
    m.reconcile_seconds.observe(0.004)
    m.admit_seconds.observe(0.02)
    got = samples(m)
    labels = (
        ("kind", "egress"),
        ("namespace", "agents"),
        ("policy", "research-agent"),
        ("verdict", "blocked"),
    )
    assert got[("nodeguard_violations_total", labels)] == 3
    assert got[("nodeguard_events_lost_total", (("where", "userspace"),))] == 2
    assert got[("nodeguard_events_lost_total", (("where", "kernel"),))] == 0
    assert got[("nodeguard_records_total", ())] == 15
    assert got[("nodeguard_aggregated_total", ())] == 41
    assert got[("nodeguard_pods_guarded", ())] == 3
    assert got[("nodeguard_policies_loaded", ())] == 2
    assert got[("nodeguard_policy_load_errors_total", ())] == 1
    assert got[("nodeguard_reconcile_seconds_count", ())] == 1
    assert got[("nodeguard_reconcile_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("nodeguard_admit_seconds_sum", ())] == pytest.approx(0.02)
    assert got[("nodeguard_agent_up", ())] == 1
    assert got[("nodeguard_agent_info", (("node", "node-a"), ("version", __version__)))] == 1
    text = m.render().decode()
    assert "# TYPE nodeguard_violations_total counter" in text
    assert "# TYPE nodeguard_reconcile_seconds histogram" in text


@dataclass(frozen=True)
class Link:
    state: str = "connected"
    spool_records: int = 0
    spool_bytes: int = 0
    acked: int = 0
    rejected: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


def test_delivery_metrics() -> None:
    m = AgentMetrics()
    got = samples(m)
    assert got[("nodeguard_collector_up", ())] == 0
    assert got[("nodeguard_spool_dropped_total", (("priority", "telemetry"),))] == 0
    assert got[("nodeguard_events_lost_total", (("where", "spool"),))] == 0
    m.delivery(
        Link(
            spool_records=40,
            spool_bytes=20_000,
            acked=1000,
            rejected=2,
            dropped={"telemetry": 5, "audit": 1, "violation": 3},
        )
    )
    m.delivery(
        Link(
            state="disconnected",
            spool_records=70,
            spool_bytes=35_000,
            acked=1500,
            rejected=2,
            dropped={"telemetry": 6, "audit": 1, "violation": 4},
        )
    )
    got = samples(m)
    assert got[("nodeguard_spool_records", ())] == 70
    assert got[("nodeguard_spool_bytes", ())] == 35_000
    assert got[("nodeguard_collector_up", ())] == 0
    assert got[("nodeguard_publish_acked_total", ())] == 1500
    assert got[("nodeguard_publish_rejected_total", ())] == 2
    assert got[("nodeguard_spool_dropped_total", (("priority", "telemetry"),))] == 6
    assert got[("nodeguard_spool_dropped_total", (("priority", "audit"),))] == 1
    assert got[("nodeguard_spool_dropped_total", (("priority", "violation"),))] == 4
    # violation records lost in the spool (audit + violation; telemetry is not an event)
    assert got[("nodeguard_events_lost_total", (("where", "spool"),))] == 5
    m.delivery(Link(acked=1600, dropped={"telemetry": 6, "audit": 1, "violation": 4}))
    assert samples(m)[("nodeguard_collector_up", ())] == 1
    m.delivery(None)
    assert samples(m)[("nodeguard_collector_up", ())] == 0


def test_private_registry() -> None:
    first, second = AgentMetrics(), AgentMetrics()  # no "duplicated timeseries" error
    first.records_total(5)
    assert samples(second)[("nodeguard_records_total", ())] == 0
    assert REGISTRY.get_sample_value("nodeguard_records_total") is None
    own = CollectorRegistry()
    assert AgentMetrics(registry=own).registry is own


def test_cumulative_totals() -> None:
    m = AgentMetrics()
    m.lost_total("kernel", 5)
    m.lost_total("kernel", 8)
    m.lost_total("kernel", 8)
    assert samples(m)[("nodeguard_events_lost_total", (("where", "kernel"),))] == 8
    m.lost_total("kernel", 3)  # the source was reset (e.g. maps recreated): +3
    assert samples(m)[("nodeguard_events_lost_total", (("where", "kernel"),))] == 11
    m.records_total(10)
    m.aggregated_total(4)
    m.records_total(12)
    got = samples(m)
    assert got[("nodeguard_records_total", ())] == 12
    assert got[("nodeguard_aggregated_total", ())] == 4


# --------------------------------------------------------------------- server --


class Flags:
    def __init__(self) -> None:
        self.ready: bool | tuple[bool, str] = (False, "first reconcile not done")
        self.alive = True


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def served(flags: Flags) -> Iterator[tuple[AgentMetrics, MetricsServer]]:
    metrics = AgentMetrics(node="node-a")
    server = MetricsServer(
        "127.0.0.1:0", metrics.registry, ready=lambda: flags.ready, alive=lambda: flags.alive
    )
    server.start()
    yield metrics, server
    server.stop()


def get(server: MetricsServer, path: str) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_metrics_endpoint(served: tuple[AgentMetrics, MetricsServer]) -> None:
    metrics, server = served
    assert server.port > 0
    metrics.violation("egress", "blocked", "p", "ns", 2)
    status, ctype, body = get(server, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    assert (
        'nodeguard_violations_total{kind="egress",namespace="ns",policy="p",verdict="blocked"} 2.0'
        in body
    )


def test_health_and_readiness(flags: Flags, served: tuple[AgentMetrics, MetricsServer]) -> None:
    _, server = served
    assert get(server, "/healthz")[0] == 200
    status, _, body = get(server, "/readyz")
    assert (status, body.strip()) == (503, "first reconcile not done")
    flags.ready = True
    assert get(server, "/readyz")[:1] == (200,)
    flags.ready = False
    assert get(server, "/readyz")[0] == 503
    flags.alive = False
    assert get(server, "/healthz")[0] == 503
    assert get(server, "/nothing")[0] == 404


def test_failing_check_is_503() -> None:
    def broken() -> bool:
        raise RuntimeError("state lock poisoned")

    server = MetricsServer("127.0.0.1:0", CollectorRegistry(), ready=broken, alive=broken)
    with server:
        status, _, body = get(server, "/readyz")
        assert status == 503 and "ready check failed: state lock poisoned" in body
        assert get(server, "/healthz")[0] == 503


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464, socket.AF_INET)),
        (":9464", ("0.0.0.0", 9464, socket.AF_INET)),  # noqa: S104
        ("[::1]:0", ("::1", 0, socket.AF_INET6)),
        ("localhost:80", ("localhost", 80, socket.AF_INET)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9464", "host:", "host:x", "1.2.3.4:70000", "::1:80", "[::1]"])
def test_bad_address(address: str) -> None:
    with pytest.raises(MetricsServerError, match="invalid metrics address"):
        parse_address(address)


def test_port_in_use_is_a_clear_error(served: tuple[AgentMetrics, MetricsServer]) -> None:
    _, server = served
    other = MetricsServer(f"127.0.0.1:{server.port}", CollectorRegistry(), ready=lambda: True)
    with pytest.raises(MetricsServerError, match=r"cannot serve metrics on 127\.0\.0\.1:") as info:
        other.start()
    assert info.value.fix is not None and "free port" in info.value.fix
