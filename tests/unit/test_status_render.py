"""`nodeguard status`: the snapshot model, its JSON contract and the text rendering."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.agent.api import AdmitRequest, AdmitResponse, AgentAPIServer
from nodeguard.agent.status import (
    AgentHealth,
    CollectorLink,
    Counters,
    FeatureState,
    KernelInfo,
    PodStatus,
    PolicyDirStatus,
    PolicyStatus,
    SnapshotFormatError,
    StatusSnapshot,
    format_duration,
    render_status,
)
from nodeguard.bpf.probe import EGRESS_MECHANISM, Feature, Mechanism, Report
from nodeguard.cli.main import main

NOW = 1_735_725_600.0  # 2025-01-01 10:00:00 UTC
ANSI = re.compile(r"\x1b\[")
DIR_ERROR = (
    "/etc/nodeguard/policies/broken.yaml:7: spec.mode: must be 'enforce' or 'audit' "
    "[bold]got 'block'[/bold]"
)
POLICY_ERROR = "/etc/nodeguard/policies/browser.yaml:12: spec.egress.allow[0].cidr: not a network"


def sample_snapshot(*, error: bool = True) -> StatusSnapshot:
    """A snapshot with something in every section (and a policy load error)."""
    return StatusSnapshot(
        agent=AgentHealth(
            state="degraded" if error else "ready",
            started_at=NOW - 7390,
            uptime_s=7390.0,
            node="node-a",
            version="0.1.0",
            pid=4242,
            reasons=("policy directory: last load failed",) if error else (),
        ),
        kernel=KernelInfo(
            release="6.1.0-26-amd64",
            mechanisms={
                "egress": "cgroup sock_addr (connect4/6, sendmsg4/6), EPERM",
                "exec": "tracepoint sched_process_exec + bpf_send_signal(SIGKILL)",
            },
            features=(
                FeatureState("root", True),
                FeatureState("cgroup2", True),
                FeatureState("map.ringbuf", True),
                FeatureState("kprobes", False, required=False),
                FeatureState("bpf_lsm", False, required=False),
            ),
        ),
        policies=(
            PolicyStatus(
                "research-agent", "3f2a9c1e", "enforce", 2, "/etc/nodeguard/policies/research.yaml"
            ),
            PolicyStatus(
                "browser-agent",
                "77b01d4a",
                "audit",
                1,
                "/etc/nodeguard/policies/browser.yaml",
                POLICY_ERROR if error else None,
            ),
        ),
        pods=(
            PodStatus(
                "agents",
                "research-0",
                "6c0d4f6e-1b7a-4c1e-9d0a-0f3e2b1a9c11",
                "research-agent",
                "enforce",
                "namespace agents, labels app=research-agent (only match)",
                3,
                "/kubepods/besteffort/pod6c0d4f6e-1b7a-4c1e-9d0a-0f3e2b1a9c11",
                NOW - 3600,
            ),
            PodStatus(
                "agents",
                "research-1",
                "9a1b2c3d-0000-4000-8000-000000000001",
                "research-agent",
                "enforce",
                "namespace agents, labels app=research-agent; also matched browser-agent, "
                "which sorts after it by name",
                0,
                "/kubepods/besteffort/pod9a1b2c3d-0000-4000-8000-000000000001",
                NOW - 65,
            ),
            PodStatus(
                "web",
                "browser-7f9c6d-x2x7q",
                "11aa22bb-0000-4000-8000-000000000002",
                "browser-agent",
                "audit",
                "matchExpressions tier In (agent)",
                12,
                "/kubepods/burstable/pod11aa22bb-0000-4000-8000-000000000002",
                NOW - 3 * 86400,
            ),
        ),
        counters=Counters(
            violations_by_kind={"exec": 6, "egress": 9},
            aggregated=41,
            lost_in_kernel=0,
            lost_in_userspace=2,
            undecodable=1,
            records=15,
            lost_in_spool={"telemetry": 4, "audit": 0, "violation": 2},
        ),
        policy_dir=PolicyDirStatus(
            path="/etc/nodeguard/policies",
            generation=7,
            last_error=DIR_ERROR if error else None,
            last_error_at=NOW - 12 if error else None,
            last_loaded_at=NOW - 600,
        ),
        collector=COLLECTOR,
        generated_at=NOW,
    )


COLLECTOR = CollectorLink(
    "disconnected",
    "collector.nodeguard.svc:7443",
    epoch=1735718210000,
    sent=1200,
    acked=1100,
    duplicates=20,
    rejected=1,
    rejected_attempts=3,
    in_flight=0,
    spool_path="/var/lib/nodeguard/spool.db",
    spool_records=340,
    spool_bytes=170 * 1024,
    spool_max_bytes=256 << 20,
    spool_oldest_age_s=42.0,
    dropped={"telemetry": 4, "audit": 0, "violation": 2},
    dropped_attempts=9,
    last_error="UNAVAILABLE: failed to connect to all addresses",
    last_error_at=NOW - 40,
    last_ack_at=NOW - 45,
    reconnects=3,
)


def empty_snapshot() -> StatusSnapshot:
    return StatusSnapshot(
        agent=AgentHealth("starting", NOW - 1, 1.0, "node-b", "0.1.0", 7),
        kernel=KernelInfo("6.1.0"),
        policies=(),
        pods=(),
        counters=Counters(),
        policy_dir=PolicyDirStatus("/etc/nodeguard/policies", 0),
        collector=CollectorLink("not configured"),
        generated_at=NOW,
    )


# ------------------------------------------------------------------------ text --


def test_text_has_every_section_and_no_ansi() -> None:
    text = render_status(sample_snapshot())
    assert not ANSI.search(text)
    for title in (
        "Agent",
        "Kernel 6.1.0-26-amd64: mechanisms",
        "Policies (2)",
        "Guarded pods (3)",
        "Why each pod has its policy",
        "Counters",
        "Policy directory",
        "Collector",
    ):
        assert re.search(rf"^{re.escape(title)}$", text, re.M), title
    assert "nodeguard agent on node-a: DEGRADED (policy directory: last load failed)" in text
    assert "uptime                2h 03m" in text
    assert "tracepoint sched_process_exec + bpf_send_signal(SIGKILL)" in text
    assert "unavailable (optional): kprobes, bpf_lsm" in text
    assert re.search(r"^browser-agent\s+77b01d4a\s+audit\s+1\s+ERROR\s+/etc/", text, re.M)
    assert re.search(r"^agents/research-0\s+research-agent\s+enforce\s+3\s+1h 00m$", text, re.M)
    assert re.search(
        r"^web/browser-7f9c6d-x2x7q\s+browser-agent\s+audit\s+12\s+3d 00h$", text, re.M
    )
    assert re.search(r"^violations\s+15 \(egress 9, exec 6\)$", text, re.M)
    assert re.search(r"^lost in user space\s+2$", text, re.M)
    assert re.search(r"^state\s+disconnected$", text, re.M)
    assert "collector.nodeguard.svc:7443" in text
    assert re.search(r"^lost in spool\s+6 \(violation 2, audit 0, telemetry 4\)$", text, re.M)


def test_collector_section_shows_the_link_and_the_spool() -> None:
    text = render_status(sample_snapshot())
    section = text[text.index("\nCollector\n") :]
    for pattern in (
        r"^last error\s+UNAVAILABLE: failed to connect to all addresses$",
        r"^error at\s+2025-01-01 09:59:20Z \(40s ago\)$",
        r"^spool\s+340 records, 170\.0 KiB of 256\.0 MiB, oldest 42s$",
        r"^spool file\s+/var/lib/nodeguard/spool\.db$",
        r"^in flight\s+0 batches$",
        r"^sent / acked\s+1,200 / 1,100 records \(20 already stored\)$",
        r"^rejected\s+1 records \(3 attempts\)$",
        r"^dropped \(spool full\)\s+6 records \(violation 2, audit 0, telemetry 4; 9 attempts\)$",
        r"^last ack\s+2025-01-01 09:59:15Z \(45s ago\)$",
        r"^reconnects\s+3$",
        r"^epoch\s+1735718210000$",
    ):
        assert re.search(pattern, section, re.M), pattern
    healthy = dataclasses.replace(
        COLLECTOR, state="connected", last_error=None, rejected=0, dropped={}, dropped_attempts=0
    )
    text = render_status(dataclasses.replace(sample_snapshot(), collector=healthy))
    section = text[text.index("\nCollector\n") :]
    assert re.search(r"^state\s+connected$", section, re.M)
    assert "last error" not in section
    assert re.search(r"^rejected\s+0$", section, re.M)
    assert re.search(r"^dropped \(spool full\)\s+0$", section, re.M)


def test_policy_dir_error_is_prominent_and_verbatim() -> None:
    text = render_status(sample_snapshot())
    lines = text.splitlines()
    # A boxed banner right under the headline, before any table.
    assert "policy directory" in lines[1] and lines[1].lstrip().startswith("╭")
    banner = " ".join(" ".join(lines[1:6]).replace("│", " ").split())
    assert "ERROR: the last policy load failed" in banner
    assert "generation 7 stay in force" in banner
    # rich markup in an error message is shown as typed, not interpreted.
    flat = " ".join(text.split())
    assert "[bold]got 'block'[/bold]" in flat
    assert f"ERROR: {' '.join(DIR_ERROR.split())}" in flat
    assert " ".join(POLICY_ERROR.split()) in flat
    assert re.search(r"^error at\s+2025-01-01 09:59:48Z \(12s ago\)$", text, re.M)


def test_no_error_no_banner() -> None:
    text = render_status(sample_snapshot(error=False))
    assert "ERROR" not in text
    assert "╭" not in text
    assert re.search(r"^last error\s+none$", text, re.M)
    assert "nodeguard agent on node-a: READY\n" in text


def test_fits_100_columns() -> None:
    text = render_status(sample_snapshot())
    assert max(len(line) for line in text.splitlines()) <= 100
    narrow = render_status(sample_snapshot(), width=80)
    assert max(len(line) for line in narrow.splitlines()) <= 80


def test_colour_only_when_asked() -> None:
    coloured = render_status(sample_snapshot(), color=True)
    assert ANSI.search(coloured)
    assert "\x1b[1;31m" in coloured  # bold red: the policy load error


def test_empty_snapshot_renders() -> None:
    text = render_status(empty_snapshot())
    assert "nodeguard agent on node-b: STARTING" in text
    assert "Policies (0)" in text and "(none loaded)" in text
    assert "Guarded pods (0)" in text and "(no pod is under a policy)" in text
    assert "not probed yet" in text
    assert re.search(r"^state\s+not configured$", text, re.M)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (65, "1m 05s"), (7390, "2h 03m"), (3 * 86400 + 7200, "3d 02h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ------------------------------------------------------------------------ JSON --


def test_json_round_trip_is_stable() -> None:
    snap = sample_snapshot()
    text = snap.to_json()
    again = StatusSnapshot.from_json(text)
    assert again == snap
    assert again.to_json() == text
    assert StatusSnapshot.from_json(empty_snapshot().to_json()) == empty_snapshot()


def test_json_keys_are_the_documented_ones() -> None:
    data = json.loads(sample_snapshot().to_json())
    assert list(data) == [
        "schema_version",
        "generated_at",
        "agent",
        "kernel",
        "policies",
        "pods",
        "counters",
        "policy_dir",
        "collector",
    ]
    assert data["schema_version"] == 1
    assert list(data["agent"]) == [
        "state",
        "started_at",
        "uptime_s",
        "node",
        "version",
        "pid",
        "reasons",
    ]
    assert data["kernel"]["features"][3] == {"name": "kprobes", "ok": False, "required": False}
    assert list(data["kernel"]["mechanisms"]) == ["egress", "exec"]
    assert list(data["policies"][1]) == [
        "name",
        "version",
        "mode",
        "pods",
        "source_file",
        "last_load_error",
        "seccomp_profile",
        "enforcement",
        "warnings",
    ]
    assert data["policies"][1]["last_load_error"] == POLICY_ERROR
    assert data["policies"][0]["last_load_error"] is None
    assert list(data["pods"][0]) == [
        "namespace",
        "name",
        "uid",
        "policy",
        "mode",
        "selection_reason",
        "violations",
        "cgroup",
        "guarded_since",
    ]
    assert data["counters"] == {
        "violations_total": 15,
        "violations_by_kind": {"egress": 9, "exec": 6},
        "aggregated": 41,
        "lost_in_kernel": 0,
        "lost_in_userspace": 2,
        "undecodable": 1,
        "records": 15,
        "lost_in_spool": {"telemetry": 4, "audit": 0, "violation": 2},
        "execs_begun_outside": 0,
    }
    assert data["policy_dir"] == {
        "path": "/etc/nodeguard/policies",
        "generation": 7,
        "last_error": DIR_ERROR,
        "last_error_at": NOW - 12,
        "last_loaded_at": NOW - 600,
    }
    assert data["collector"] == {
        "state": "disconnected",
        "address": "collector.nodeguard.svc:7443",
        "epoch": 1735718210000,
        "sent": 1200,
        "acked": 1100,
        "duplicates": 20,
        "rejected": 1,
        "rejected_attempts": 3,
        "in_flight": 0,
        "spool_path": "/var/lib/nodeguard/spool.db",
        "spool_records": 340,
        "spool_bytes": 174080,
        "spool_max_bytes": 268435456,
        "spool_oldest_age_s": 42.0,
        "dropped": {"telemetry": 4, "audit": 0, "violation": 2},
        "dropped_attempts": 9,
        "last_error": "UNAVAILABLE: failed to connect to all addresses",
        "last_error_at": NOW - 40,
        "last_ack_at": NOW - 45,
        "reconnects": 3,
    }
    empty = json.loads(empty_snapshot().to_json())
    assert empty["collector"]["state"] == "not configured"
    assert empty["counters"]["lost_in_spool"] == {}


def test_older_collector_and_counters_objects_read_with_defaults() -> None:
    """Agents before the spool sent only state and address (and no lost_in_spool)."""
    data = json.loads(sample_snapshot().to_json())
    data["collector"] = {"state": "disconnected", "address": "c:7443"}
    del data["counters"]["lost_in_spool"]
    snap = StatusSnapshot.from_dict(data)
    assert snap.collector == CollectorLink("disconnected", "c:7443")
    assert snap.counters.lost_in_spool == {}


def test_from_json_ignores_unknown_keys() -> None:
    data = json.loads(sample_snapshot().to_json())
    data["added_later"] = {"x": 1}
    data["agent"]["added_later"] = 2
    assert StatusSnapshot.from_dict(data) == sample_snapshot()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema_version=2), "schema_version 2"),
        (lambda d: d["agent"].update(state="sleeping"), "agent.state: expected one of"),
        (lambda d: d["pods"][1].update(violations="3"), "pods[1].violations: expected an integer"),
        (lambda d: d["counters"].pop("records"), "counters.records: missing"),
        (lambda d: d["collector"].update(state="up"), "collector.state"),
        (lambda d: d["collector"].update(sent=1.5), "collector.sent: expected an integer"),
        (lambda d: d["collector"].update(dropped=[]), "collector.dropped: expected an object"),
        (lambda d: d["counters"].update(lost_in_spool={"audit": "x"}), "counters.lost_in_spool"),
        (lambda d: d.update(policies={}), "policies: expected a list"),
    ],
)
def test_from_json_errors_name_the_field(mutate: object, message: str) -> None:
    data = json.loads(sample_snapshot().to_json())
    assert callable(mutate)
    mutate(data)
    with pytest.raises(SnapshotFormatError, match=re.escape(message)):
        StatusSnapshot.from_dict(data)


def test_from_json_not_json() -> None:
    with pytest.raises(SnapshotFormatError, match="not valid JSON"):
        StatusSnapshot.from_json("<html>")


def test_kernel_info_from_doctor_report() -> None:
    report = Report(
        "6.1.0-test",
        (Feature("root", True, "uid 0"), Feature("kprobes", False, "absent", required=False)),
        (
            Mechanism("egress", EGRESS_MECHANISM, ("root",)),
            Mechanism("exec", None, ("tracepoint",)),
        ),
    )
    info = KernelInfo.from_report(report)
    assert info.release == "6.1.0-test"
    assert info.mechanisms == {"egress": EGRESS_MECHANISM, "exec": "none"}
    assert info.features == (
        FeatureState("root", True, True),
        FeatureState("kprobes", False, False),
    )


# ------------------------------------------------------------------------- CLI --


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # UNIX socket paths are limited to 107 bytes; keep them short.
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="ng-", dir="/tmp") as d:
        yield Path(d)


def _refuse(_req: AdmitRequest) -> AdmitResponse:
    return AdmitResponse(False, False, None, "not used")


def test_cli_status_text_and_json(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = short_tmp / "agent.sock"
    with AgentAPIServer(sock, sample_snapshot, _refuse):
        assert main(["status", "--socket", str(sock)]) == 0
        text = capsys.readouterr().out
        assert text == render_status(sample_snapshot())
        assert main(["status", "--json", "--socket", str(sock)]) == 0
        out = capsys.readouterr().out
        assert StatusSnapshot.from_json(out) == sample_snapshot()


def test_cli_status_env_socket(
    short_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = short_tmp / "agent.sock"
    monkeypatch.setenv("NODEGUARD_API_SOCKET", str(sock))
    with AgentAPIServer(sock, sample_snapshot, _refuse):
        assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["agent"]["node"] == "node-a"


def test_cli_status_agent_not_running(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = short_tmp / "missing.sock"
    assert main(["status", "--socket", str(sock)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"nodeguard: error: the nodeguard agent is not running on this node (no socket at "
        f"{sock})\n  fix: start it with `nodeguard agent --config FILE` or check the "
        "DaemonSet: kubectl -n nodeguard get pods -o wide\n"
    )
    assert "Traceback" not in captured.err
