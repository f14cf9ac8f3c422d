"""The collector's configuration (every problem as ``file:line: path: why``) and the
``nodeguard collector`` command line (bad configs exit 1 without a traceback; ``certs``
makes a working CA, server and node certificates)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509

from nodeguard import pki
from nodeguard.agent.config import HostPort
from nodeguard.cli.main import main
from nodeguard.collector.config import (
    CollectorConfigError,
    format_duration,
    load_collector_config,
    parse_collector_config_text,
    parse_duration,
)
from nodeguard.collector.records import Retention

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "collector.yaml"


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca = pki.make_ca(d)
    pki.issue_server(ca, d, ["127.0.0.1"])
    return d


def tls_block(d: Path) -> str:
    return (
        f"tls:\n  cert: {d / 'server.crt'}\n  key: {d / 'server.key'}\n  clientCA: {d / 'ca.crt'}\n"
    )


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(CollectorConfigError) as info:
        parse_collector_config_text(text, "collector.yaml")
    assert all(p.file == "collector.yaml" for p in info.value.problems)
    return [(p.line, p.path, p.message) for p in info.value.problems]


def only_problem(text: str) -> tuple[int, str, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------------ config --


def test_defaults_with_tls(tls_dir: Path) -> None:
    config = parse_collector_config_text(tls_block(tls_dir))
    assert config.listen == HostPort("0.0.0.0", 7443)  # noqa: S104 - the documented default
    assert config.cluster == "default"
    assert config.tls is not None and config.tls.client_ca == tls_dir / "ca.crt"
    assert not config.insecure
    assert config.store.path == Path("/var/lib/nodeguard-collector/events.db")
    assert config.store.durable
    assert config.store.retention.to_retention() == Retention(7 * 86400, 10_000_000)
    limits = config.limits
    assert (limits.max_message_bytes, limits.max_records_per_batch, limits.max_streams) == (
        4 * 1024 * 1024,
        10_000,
        256,
    )
    assert config.metrics_address == HostPort("127.0.0.1", 9465)
    assert config.sinks == []
    assert config.to_yaml_dict()["store"]["retention"] == {"maxAge": "7d", "maxEvents": 10000000}


def test_missing_tls_without_insecure() -> None:
    line, path, message = only_problem("listen: 0.0.0.0:7443\ncluster: prod\n")
    assert (line, path) == (1, "tls")
    assert "needs mTLS" in message and "nodeguard collector certs" in message


def test_insecure_only_on_loopback(tls_dir: Path) -> None:
    line, path, message = only_problem("cluster: c\ninsecure: true\nlisten: 0.0.0.0:7443\n")
    assert (line, path) == (2, "insecure")
    assert "loopback" in message and "0.0.0.0:7443" in message
    for listen in ("127.0.0.1:0", "[::1]:7443", "localhost:7443", "127.0.0.2:1"):
        config = parse_collector_config_text(f"insecure: true\nlisten: '{listen}'\n")
        assert config.insecure and config.tls is None
    line, path, message = only_problem(tls_block(tls_dir) + "insecure: true\nlisten: 127.0.0.1:1\n")
    assert path == "insecure" and "remove one" in message


def test_unknown_keys_name_the_line_and_suggest(tls_dir: Path) -> None:
    text = tls_block(tls_dir) + "listn: 0.0.0.0:1\nstore:\n  durable: true\n  retension: {}\n"
    found = problems(text)
    assert found[0][:2] == (5, "listn")
    assert "did you mean 'listen'?" in found[0][2]
    assert found[1][:2] == (8, "store.retension")
    assert "did you mean 'retention'?" in found[1][2]
    assert "allowed here: path, durable, retention" in found[1][2]
    _, path, message = only_problem(tls_block(tls_dir) + "metrics_address: null\n")
    assert (path, "did you mean 'metricsAddress'?" in message) == ("metrics_address", True)


def test_bad_values(tls_dir: Path) -> None:
    text = (
        tls_block(tls_dir)
        + "listen: 0.0.0.0:99999\n"
        + "cluster: Prod_1\n"
        + "store: {durable: 'yes', retention: {maxAge: 7, maxEvents: 0}}\n"
        + "limits: {maxMessageBytes: 100, maxStreams: '10'}\n"
    )
    found = {path: (line, message) for line, path, message in problems(text)}
    assert found["listen"][0] == 5 and "out of range" in found["listen"][1]
    assert "not a valid cluster name" in found["cluster"][1]
    assert "expected a boolean" in found["store.durable"][1]
    assert "duration" in found["store.retention.maxAge"][1]
    assert "out of range" in found["store.retention.maxEvents"][1]
    assert "1024-" in found["limits.maxMessageBytes"][1]
    assert "whole number" in found["limits.maxStreams"][1]


def test_tls_files_must_exist(tmp_path: Path) -> None:
    text = f"tls:\n  cert: {tmp_path}/missing.crt\n  key: relative.key\n"
    found = {path: (line, message) for line, path, message in problems(text)}
    assert "does not exist" in found["tls.cert"][1] and found["tls.cert"][0] == 2
    assert "not an absolute path" in found["tls.key"][1]
    assert "missing required key 'clientCA'" in found["tls.clientCA"][1]


def test_sink_problems_are_located(tls_dir: Path, tmp_path: Path) -> None:
    text = tls_block(tls_dir) + (
        "sinks:\n"
        f"  - {{type: jsonl, name: a, path: {tmp_path}/a.jsonl, pth: x}}\n"
        "  - {type: kafka, name: b}\n"
        f"  - {{type: jsonl, name: a, path: {tmp_path}/b.jsonl}}\n"
    )
    found = problems(text)
    assert found[0][:2] == (6, "sinks[0].pth")
    assert "allowed here" in found[0][2] and "'path'" in found[0][2]
    assert found[1][:2] == (7, "sinks[1]")
    assert "unknown sink type 'kafka'" in found[1][2]
    ok = tls_block(tls_dir) + (
        "sinks:\n"
        f"  - {{type: jsonl, name: a, path: {tmp_path}/a.jsonl}}\n"
        f"  - {{type: jsonl, name: a, path: {tmp_path}/b.jsonl}}\n"
    )
    line, path, message = only_problem(ok)
    assert (line, path) == (7, "sinks[1]") and "used twice" in message


def test_metrics_address_off_and_port_zero(tls_dir: Path) -> None:
    for off in ("null", "''"):
        config = parse_collector_config_text(tls_block(tls_dir) + f"metricsAddress: {off}\n")
        assert config.metrics_address is None
    config = parse_collector_config_text(tls_block(tls_dir) + "listen: '[::]:0'\n")
    assert config.listen == HostPort("::", 0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 604800.0), ("36h", 129600.0), ("1h30m", 5400.0), ("90s", 90.0), ("2w", 1209600.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


def test_the_example_is_valid(tls_dir: Path, tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    example = yaml.safe_load(text)
    for key, name in (("cert", "server.crt"), ("key", "server.key"), ("clientCA", "ca.crt")):
        text = text.replace(example["tls"][key], str(tls_dir / name))
    config = parse_collector_config_text(text, str(EXAMPLE))
    assert config.tls is not None
    assert config.listen.port == 7443


def test_one_document_only() -> None:
    line, _, message = only_problem("insecure: true\nlisten: 127.0.0.1:1\n---\ncluster: x\n")
    assert line == 4 and "one YAML document" in message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CollectorConfigError) as info:
        load_collector_config(tmp_path / "nope.yaml")
    assert "not found" in str(info.value) and info.value.exit_code == 1


# --------------------------------------------------------------------------- CLI --


def test_cli_bad_config_exits_1_with_file_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text("cluster: prod\nlisten: 0.0.0.0:7443\nbogus: 1\n")
    assert main(["collector", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config}:1: tls: the collector needs mTLS" in err
    assert f"{config}:3: bogus: unknown key 'bogus'" in err
    assert "Traceback" not in err


def test_cli_needs_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["collector"])
    assert info.value.code == 2
    assert "--config FILE is required" in capsys.readouterr().err


def test_cli_certs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    args = ["collector", "certs", "--out", str(out), "--host", "collector.example"]
    assert main([*args, "--host", "10.0.0.5", "--node", "worker-1", "--node", "worker-2"]) == 0
    printed = capsys.readouterr().out
    for name in ("ca.crt", "ca.key", "server.crt", "server.key", "node-worker-1.crt"):
        assert (out / name).is_file() and str(out / name) in printed
    assert (out / "ca.key").stat().st_mode & 0o777 == 0o600
    node = x509.load_pem_x509_certificate((out / "node-worker-2.crt").read_bytes())
    san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["nodeguard-node:worker-2"]
    ca_before = (out / "ca.crt").read_bytes()
    assert main([*args, "--node", "worker-3"]) == 0  # a later node: same CA
    assert (out / "ca.crt").read_bytes() == ca_before
    assert "reused" in capsys.readouterr().out
    # the files make a valid collector configuration
    text = f"tls: {{cert: {out}/server.crt, key: {out}/server.key, clientCA: {out}/ca.crt}}\n"
    assert parse_collector_config_text(text).tls is not None


def test_cli_certs_rejects_bad_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    code = main(["collector", "certs", "--out", str(out), "--host", "h", "--node", "Bad_Node"])
    assert code == 1
    err = capsys.readouterr().err
    assert "--node 'Bad_Node' is not a valid node name" in err and "Traceback" not in err
    assert not out.exists()
