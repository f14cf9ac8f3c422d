"""Agent configuration: defaults, every field's validation, and file:line: path: errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from nodeguard.agent.config import (
    DEFAULTS_FILE,
    AgentConfig,
    ConfigError,
    HostPort,
    load_agent_config,
    parse_agent_config_text,
)
from nodeguard.errors import NodeguardError

ALL_V4 = "0.0.0.0"  # noqa: S104 - the default metrics listen address
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent.yaml"


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_agent_config_text(text, "agent.yaml")
    assert all(p.file == "agent.yaml" for p in info.value.problems)
    return [(p.line, p.path, p.message) for p in info.value.problems]


def only_problem(text: str) -> tuple[int, str, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(autouse=True)
def _node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-1")


# ---------------------------------------------------------------------- defaults --


def test_defaults() -> None:
    config = load_agent_config(None)
    assert config.cri_socket == "unix:///run/containerd/containerd.sock"
    assert config.cri_socket_path == Path("/run/containerd/containerd.sock")
    assert config.policy_dir == Path("/etc/nodeguard/policies")
    assert config.node_name == "node-1"
    assert config.state_dir == Path("/var/lib/nodeguard")
    assert config.api_socket == Path("/run/nodeguard/agent.sock")
    assert config.metrics_address == HostPort(ALL_V4, 9464)
    assert config.collector_address is None
    assert config.cgroup_driver == "auto"
    assert config.pin_dir == Path("/sys/fs/bpf/nodeguard")
    assert config.fail_closed_namespaces == ()
    assert config.resync_interval_ms == 500
    assert config.hook_timeout_ms == 2000
    assert config.log_level == "info"
    assert AgentConfig() == config


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "{}\n"])
def test_empty_file_means_defaults(text: str) -> None:
    assert parse_agent_config_text(text) == load_agent_config(None)


def test_node_name_from_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODE_NAME")
    monkeypatch.setattr(socket, "gethostname", lambda: "Worker-7.Example.COM")
    assert load_agent_config(None).node_name == "worker-7.example.com"


def test_bad_node_name_from_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "bad_name")
    with pytest.raises(ConfigError) as info:
        load_agent_config(None)
    (problem,) = info.value.problems
    assert (problem.file, problem.path) == (DEFAULTS_FILE, "nodeName")
    assert "NODE_NAME" in problem.message
    # an explicit nodeName wins over the environment
    assert parse_agent_config_text("nodeName: n2\n").node_name == "n2"


def test_full_example_file_loads() -> None:
    config = load_agent_config(EXAMPLE)
    assert config.api_version == "nodeguard.io/v1alpha1"
    assert config.kind == "AgentConfig"
    assert config.fail_closed_namespaces == ("agents",)


def test_to_yaml_dict_round_trips() -> None:
    config = parse_agent_config_text(
        "metricsAddress: ''\ncollectorAddress: '[fd00::1]:4317'\nfailClosedNamespaces: [a]\n"
        "collectorTLS: {ca: /etc/ng/ca.crt, cert: /etc/ng/node.crt, key: /etc/ng/node.key}\n"
        "spool: {maxBytes: 64Mi, maxRecords: 1000}\ntelemetryInterval: 30s\n"
        "eventLog: {enabled: false}\n"
    )
    data = config.to_yaml_dict()
    assert data["metricsAddress"] == ""
    assert data["collectorAddress"] == "[fd00::1]:4317"
    assert data["failClosedNamespaces"] == ["a"]
    import yaml  # noqa: PLC0415

    assert parse_agent_config_text(yaml.safe_dump(data)) == config


# ---------------------------------------------------------------------- values --


@pytest.mark.parametrize(
    ("written", "endpoint"),
    [
        ("unix:///run/containerd/containerd.sock", "unix:///run/containerd/containerd.sock"),
        ("/run/crio/crio.sock", "unix:///run/crio/crio.sock"),
        ("unix:///tmp//x/../y.sock", "unix:///tmp/y.sock"),
    ],
)
def test_cri_socket_forms(written: str, endpoint: str) -> None:
    assert parse_agent_config_text(f"criSocket: {written!r}\n").cri_socket == endpoint


@pytest.mark.parametrize(
    ("written", "parsed"),
    [
        ("0.0.0.0:9464", HostPort(ALL_V4, 9464)),
        ("127.0.0.1:1", HostPort("127.0.0.1", 1)),
        ("[::]:65535", HostPort("::", 65535)),
        ("[fd00::0001]:80", HostPort("fd00::1", 80)),
        ("localhost:9000", HostPort("localhost", 9000)),
        (
            "collector.nodeguard.svc.cluster.local:4317",
            HostPort("collector.nodeguard.svc.cluster.local", 4317),
        ),
        ("", None),
    ],
)
def test_metrics_address_forms(written: str, parsed: HostPort | None) -> None:
    config = parse_agent_config_text(f"metricsAddress: {written!r}\n")
    assert config.metrics_address == parsed


def test_host_port_str() -> None:
    assert str(HostPort("::1", 80)) == "[::1]:80"
    assert str(HostPort("10.0.0.1", 80)) == "10.0.0.1:80"


def test_fail_closed_namespaces() -> None:
    config = parse_agent_config_text("failClosedNamespaces: [agents, research]\n")
    assert config.fail_closed("agents")
    assert not config.fail_closed("default")
    everything = parse_agent_config_text("failClosedNamespaces: ['*']\n")
    assert everything.fail_closed("kube-system")
    assert not load_agent_config(None).fail_closed("agents")


def test_collector_link_settings() -> None:
    config = parse_agent_config_text(
        TLS + "  serverName: collector.example\nspool:\n  maxBytes: 64Mi\n  maxRecords: 5000\n"
        "  batchRecords: 500\n  window: 8\neventLog: {enabled: false}\ntelemetryInterval: 2m\n"
    )
    assert config.collector_address == HostPort("c", 7443)
    assert config.collector_tls is not None
    assert config.collector_tls.ca == Path("/ca.crt")
    assert config.collector_tls.server_name == "collector.example"
    assert (config.spool.max_bytes, config.spool.max_records) == (64 << 20, 5000)
    assert (config.spool.batch_records, config.spool.window) == (500, 8)
    assert config.event_log.enabled is False
    assert config.telemetry_interval == 120.0
    defaults = load_agent_config(None)
    assert defaults.collector_tls is None
    assert (defaults.spool.max_bytes, defaults.spool.max_records) == (256 << 20, None)
    assert (defaults.spool.batch_records, defaults.spool.window) == (2000, 4)
    assert defaults.event_log.enabled is True
    assert defaults.telemetry_interval == 10.0


@pytest.mark.parametrize(
    ("written", "size"),
    [(1048576, 1 << 20), ("256Mi", 256 << 20), ("1GiB", 1 << 30), ("500M", 500_000_000)],
)
def test_spool_sizes(written: object, size: int) -> None:
    assert parse_agent_config_text(f"spool: {{maxBytes: {written}}}\n").spool.max_bytes == size


def test_range_bounds_are_inclusive() -> None:
    config = parse_agent_config_text("resyncIntervalMs: 50\nhookTimeoutMs: 60000\n")
    assert (config.resync_interval_ms, config.hook_timeout_ms) == (50, 60000)
    config = parse_agent_config_text("resyncIntervalMs: 60000\nhookTimeoutMs: 100\n")
    assert (config.resync_interval_ms, config.hook_timeout_ms) == (60000, 100)


# ---------------------------------------------------------------------- errors --

TLS = "collectorAddress: c:7443\ncollectorTLS:\n  ca: /ca.crt\n  cert: /n.crt\n  key: /k\n"

# (id, text, line, path, fragment of the message)
CASES: list[tuple[str, str, int, str, str]] = [
    ("unknown-key", "criSocket: /x.sock\nbogus: 1\n", 2, "bogus", "unknown key 'bogus'"),
    ("snake-case", "policy_dir: /x\n", 1, "policy_dir", "did you mean 'policyDir'?"),
    ("typo", "polcyDir: /x\n", 1, "polcyDir", "did you mean 'policyDir'?"),
    ("cri-tcp", "criSocket: tcp://10.0.0.1:1\n", 1, "criSocket", "only unix socket"),
    ("cri-relative", "criSocket: unix://run/x.sock\n", 1, "criSocket", "unix:///run/x.sock"),
    ("cri-not-string", "criSocket: 1\n", 1, "criSocket", "expected a CRI endpoint"),
    ("policy-dir-relative", "policyDir: policies\n", 1, "policyDir", "not an absolute path"),
    ("policy-dir-empty", "policyDir: ''\n", 1, "policyDir", "empty string"),
    ("policy-dir-null", "policyDir:\n", 1, "policyDir", "nothing (null)"),
    ("state-dir-list", "stateDir: [a]\n", 1, "stateDir", "got a list"),
    ("pin-dir-relative", "pinDir: bpf/ng\n", 1, "pinDir", "not an absolute path"),
    ("api-socket-long", f"apiSocket: /{'s' * 120}\n", 1, "apiSocket", "at most 107"),
    ("node-name-upper", "nodeName: Node_1\n", 1, "nodeName", "not a valid Kubernetes node"),
    ("node-name-number", "nodeName: 12\n", 1, "nodeName", "put it in quotes"),
    ("metrics-no-port", "metricsAddress: 0.0.0.0\n", 1, "metricsAddress", "has no port"),
    ("metrics-port-0", "metricsAddress: '0.0.0.0:0'\n", 1, "metricsAddress", "1-65535"),
    ("metrics-no-host", "metricsAddress: ':9464'\n", 1, "metricsAddress", "has no host"),
    ("metrics-port-big2", "metricsAddress: 'h:65536'\n", 1, "metricsAddress", "1-65535"),
    ("metrics-port-text", "metricsAddress: 'h:http'\n", 1, "metricsAddress", "no valid port"),
    ("metrics-ipv6-bare", "metricsAddress: '::1:80'\n", 1, "metricsAddress", "in brackets"),
    ("metrics-ipv6-bad", "metricsAddress: '[zz::]:80'\n", 1, "metricsAddress", "not an IPv6"),
    ("metrics-bad-ipv4", "metricsAddress: '300.1.1.1:80'\n", 1, "metricsAddress", "IPv4"),
    ("metrics-bad-host", "metricsAddress: 'a_b:80'\n", 1, "metricsAddress", "host name"),
    ("metrics-null", "metricsAddress: null\n", 1, "metricsAddress", 'write ""'),
    ("metrics-number", "metricsAddress: 9464\n", 1, "metricsAddress", "host:port string"),
    ("metrics-space", "metricsAddress: ' h:1'\n", 1, "metricsAddress", "spaces"),
    ("collector-bad", "collectorAddress: collector\n", 1, "collectorAddress", "no port"),
    ("driver", "cgroupDriver: systemd-cgroup\n", 1, "cgroupDriver", "'cgroupfs'"),
    ("log-upper", "logLevel: INFO\n", 1, "logLevel", "(lower case)"),
    ("log-bool", "logLevel: off\n", 1, "logLevel", "booleans"),
    ("resync-low", "resyncIntervalMs: 49\n", 1, "resyncIntervalMs", "50-60000"),
    ("resync-high", "resyncIntervalMs: 60001\n", 1, "resyncIntervalMs", "50-60000"),
    ("resync-float", "resyncIntervalMs: 500.0\n", 1, "resyncIntervalMs", "whole number"),
    ("resync-string", "resyncIntervalMs: '500'\n", 1, "resyncIntervalMs", "whole number"),
    ("hook-bool", "hookTimeoutMs: true\n", 1, "hookTimeoutMs", "a boolean"),
    ("hook-low", "hookTimeoutMs: 99\n", 1, "hookTimeoutMs", "100-60000"),
    ("ns-string", "failClosedNamespaces: agents\n", 1, "failClosedNamespaces", "a list"),
    (
        "ns-item",
        "failClosedNamespaces:\n  - agents\n  - Bad_NS\n",
        3,
        "failClosedNamespaces[1]",
        "not a valid namespace",
    ),
    ("ns-star-mixed", "failClosedNamespaces: ['*', a]\n", 1, "failClosedNamespaces", "'*'"),
    ("ns-twice", "failClosedNamespaces: [a, a]\n", 1, "failClosedNamespaces", "twice"),
    ("ns-number", "failClosedNamespaces: [1]\n", 1, "failClosedNamespaces[0]", "a number"),
    ("api-version", "apiVersion: v1\n", 1, "apiVersion", "nodeguard.io/v1alpha1"),
    ("kind", "kind: AgentPolicy\n", 1, "kind", "kind: AgentConfig"),
    ("not-mapping", "- a\n", 1, "(document)", "must be a mapping"),
    ("scalar", "hello\n", 1, "(document)", "must be a mapping"),
    ("two-documents", "logLevel: info\n---\nlogLevel: debug\n", 3, "(document)", "one YAML"),
    ("yaml-syntax", "logLevel: [\n", 1, "(yaml)", "invalid YAML"),
    ("duplicate-key", "logLevel: info\nlogLevel: debug\n", 2, "logLevel", "duplicate key"),
    (
        "collector-without-tls",
        "logLevel: info\ncollectorAddress: c:7443\n",
        1,
        "collectorTLS",
        "collectorTLS is not",
    ),
    ("tls-relative", TLS.replace("/ca.crt", "ca.crt"), 3, "collectorTLS.ca", "absolute path"),
    ("tls-missing-key", TLS.replace("  key: /k\n", ""), 3, "collectorTLS.key", "missing key"),
    ("tls-unknown", TLS + "  caFile: /x\n", 6, "collectorTLS.caFile", "allowed keys in"),
    ("tls-server-name", TLS + "  serverName: a_b\n", 6, "collectorTLS.serverName", "host"),
    ("spool-small", "spool: {maxBytes: 1000}\n", 1, "spool.maxBytes", "1Mi to 1Ti"),
    ("spool-size-text", "spool: {maxBytes: lots}\n", 1, "spool.maxBytes", "256Mi"),
    ("spool-size-bool", "spool: {maxBytes: true}\n", 1, "spool.maxBytes", "a boolean"),
    ("spool-records-0", "spool: {maxRecords: 0}\n", 1, "spool.maxRecords", "at least 1"),
    ("spool-batch", "spool: {batchRecords: 10001}\n", 1, "spool.batchRecords", "1-10000"),
    ("spool-window", "spool: {window: 0}\n", 1, "spool.window", "1-64 batches"),
    ("spool-snake", "spool: {max_bytes: 1Mi}\n", 1, "spool.max_bytes", "'maxBytes'"),
    ("spool-scalar", "spool: 3\n", 1, "spool", "expected a mapping"),
    ("event-log", "eventLog: {enabled: 'no'}\n", 1, "eventLog.enabled", "true or false"),
    ("telemetry-unit", "telemetryInterval: 10x\n", 1, "telemetryInterval", "10s"),
    ("telemetry-low", "telemetryInterval: 500ms\n", 1, "telemetryInterval", "1s to 3600s"),
]


@pytest.mark.parametrize(
    ("text", "line", "path", "fragment"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_values(text: str, line: int, path: str, fragment: str) -> None:
    got_line, got_path, message = only_problem(text)
    assert (got_line, got_path) == (line, path), message
    assert fragment in message


def test_every_problem_is_reported_in_line_order() -> None:
    text = "logLevel: loud\npolicyDir: x\nbogus: 1\nresyncIntervalMs: 1\n"
    assert [(line, path) for line, path, _ in problems(text)] == [
        (1, "logLevel"),
        (2, "policyDir"),
        (3, "bogus"),
        (4, "resyncIntervalMs"),
    ]


def test_error_renders_file_line_path_message() -> None:
    with pytest.raises(ConfigError) as info:
        parse_agent_config_text("\n\nhookTimeoutMs: 5\n", "/etc/nodeguard/agent.yaml")
    assert str(info.value) == (
        "/etc/nodeguard/agent.yaml:3: hookTimeoutMs: 5 ms is out of range: use 100-60000 "
        "milliseconds"
    )
    assert isinstance(info.value, NodeguardError)
    assert info.value.exit_code == 1


# ---------------------------------------------------------------------- files --


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)
    assert info.value.fix is not None and "--config" in info.value.fix


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read agent configuration"):
        load_agent_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"logLevel: info\nnodeName: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    (problem,) = info.value.problems
    assert (problem.line, problem.path) == (2, "(file)")


def test_file_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"\xef\xbb\xbflogLevel: debug\n")
    assert load_agent_config(path).log_level == "debug"
    bad = tmp_path / "bad.yaml"
    bad.write_text("stateDir: /var/lib/ng\nlogLevel: verbose\n")
    with pytest.raises(ConfigError) as info:
        load_agent_config(bad)
    assert str(info.value).startswith(f"{bad}:2: logLevel: 'verbose' is not allowed here")


def test_config_is_immutable() -> None:
    config = load_agent_config(None)
    with pytest.raises(ValueError, match="frozen"):
        config.log_level = "debug"
