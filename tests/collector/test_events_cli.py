"""``nodeguard events`` against a real store the tests fill: table and OCSF JSON output
field by field, filters, --losses, --config, --follow (a real subprocess stopped with
SIGTERM) and the errors a user can cause."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import pytest

from nodeguard.cli import events as events_cli
from nodeguard.cli import main as cli_main
from nodeguard.collector.records import DEFAULT_STORE_PATH
from nodeguard.collector.store import EventStore
from nodeguard.events.model import EgressDetail, ExecDetail, Kind, LimitDetail, Violation
from nodeguard.events.ocsf import to_json_line
from tests.collector.test_store import (
    EPOCH,
    NODE,
    POD,
    POLICY,
    loss_rec,
    violation,
    vrec,
)

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 30.0


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    """run(*argv) -> (exit code, stdout, stderr) of ``nodeguard events ARGV``."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        try:
            code = cli_main.main(["events", *argv])
        except SystemExit as exit_:  # argparse errors
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


NOW = datetime.now(UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def recent(seq: int, kind: Kind = "egress", *, minutes_ago: float, **fields: Any) -> Violation:
    t = NOW_MS - int(minutes_ago * 60_000)
    return violation(seq, kind, time_ms=t, first_time_ms=t, **fields)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
def sample(db: Path) -> list[Violation]:
    """One violation of every kind (arriving out of time order), two nodes, a pod-less
    one; the list is in time order."""
    vs = [
        recent(1, "egress", minutes_ago=50, count=3),
        recent(2, "exec", minutes_ago=40, exec=ExecDetail("/usr/bin/nc", truncated=True)),
        recent(3, "syscall", minutes_ago=30),
        recent(4, "socket", minutes_ago=20, verdict="audited"),
        recent(5, "limit", minutes_ago=10, workload=None),
    ]
    ipv6 = recent(
        6,
        "egress",
        minutes_ago=45,
        node="node-b",
        workload=dataclasses.replace(POD, namespace="ci", pod_name="builder-0"),
        policy=dataclasses.replace(POLICY, name="coder"),
        egress=EgressDetail("fd00:20::1", 53, "udp", 6, "sendmsg6"),
    )
    with EventStore(db, durable=False) as store:
        store.insert(NODE, EPOCH, [vrec(v) for v in (vs[2], vs[0], vs[4], vs[1], vs[3])])
        store.insert("node-b", EPOCH, [vrec(ipv6)])
    return sorted([*vs, ipv6], key=lambda v: v.time_ms)


def table_rows(out: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a rendered table (cells are separated by 2+ spaces)."""
    lines = [line for line in out.splitlines() if line.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    assert set(lines[1]) == {"─"}
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]
    return header, [row for row in rows if len(row) == len(header)]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -------------------------------------------------------------------- table ---


def test_table_field_by_field(run: Any, db: Path, sample: list[Violation]) -> None:
    code, out, err = run("--store", str(db))
    assert (code, err) == (0, "")
    header, rows = table_rows(out)
    assert header == list(events_cli.EVENT_COLUMNS)
    expected_what = {
        1: "10.20.1.5:443/tcp",
        2: "/usr/bin/nc (truncated)",
        3: "ptrace",
        4: "packet:raw",
        5: "forksPerSecond 20/s (burst 40)",
        6: "[fd00:20::1]:53/udp",
    }
    assert rows == [
        [
            iso(v.time_ms),
            v.node or "",
            "-" if v.workload is None else f"{v.workload.namespace}/{v.workload.pod_name}",
            v.policy.name,
            v.kind,
            v.verdict,
            expected_what[v.sequence],
            str(v.count),
        ]
        for v in sample
    ]
    assert rows[0][-1] == "3"
    assert rows[4][4:6] == ["socket", "audited"]


def test_limit_shows_the_newest_in_time_order(run: Any, db: Path, sample: list[Violation]) -> None:
    code, out, _ = run("--store", str(db), "--limit", "2")
    assert code == 0
    _, rows = table_rows(out)
    # newest by arrival: the node-b egress (45 min ago), then the socket one (20 min ago)
    assert [row[0] for row in rows] == [iso(sample[1].time_ms), iso(sample[4].time_ms)]
    assert "the newest 2 matching events; --limit N (0: all) shows more" in out
    code, out, _ = run("--store", str(db), "--limit", "0")
    assert len(table_rows(out)[1]) == len(sample)
    assert "shows more" not in out


def test_empty_result(run: Any, db: Path, sample: list[Violation]) -> None:
    code, out, _ = run("--store", str(db), "--node", "nobody")
    assert code == 0
    assert table_rows(out)[1] == []
    assert "no matching events" in out


# --------------------------------------------------------------------- json ---


def test_json_lines_are_the_ocsf_events(run: Any, db: Path, sample: list[Violation]) -> None:
    code, out, err = run("--store", str(db), "--json")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines == [to_json_line(v) for v in sample]
    first = json.loads(lines[0])
    assert (first["class_uid"], first["metadata"]["uid"], first["count"]) == (
        4001,
        sample[0].uid,
        3,
    )
    assert first["dst_endpoint"] == {"ip": "10.20.1.5", "port": 443}
    assert first["device"]["hostname"] == NODE
    classes = [json.loads(line)["class_uid"] for line in lines]
    assert sorted(classes) == [1007, 2004, 2004, 2004, 4001, 4001]


# ------------------------------------------------------------------ filters ---


def _uids(out: str) -> list[str]:
    return [json.loads(line)["metadata"]["uid"] for line in out.splitlines()]


@pytest.mark.parametrize(
    ("args", "seqs"),
    [
        (["--node", "node-b"], [6]),
        (["--namespace", "agents"], [1, 2, 3, 4]),
        (["--pod", "builder-0"], [6]),
        (["--policy", "coder"], [6]),
        (["--kind", "egress"], [1, 6]),
        (["--kind", "limit"], [5]),
        (["--since", "35m"], [3, 4, 5]),
        (["--until", "35m"], [1, 6, 2]),
        (["--since", "42m", "--until", "15m", "--namespace", "agents"], [2, 3, 4]),
    ],
)
def test_filters(
    run: Any, db: Path, sample: list[Violation], args: list[str], seqs: list[int]
) -> None:
    code, out, _ = run("--store", str(db), "--json", *args)
    assert code == 0
    by_seq = {v.sequence: v.uid for v in sample}
    assert _uids(out) == [by_seq[s] for s in seqs]


def test_since_iso_time(run: Any, db: Path, sample: list[Violation]) -> None:
    since = iso(sample[3].time_ms)  # the syscall one, 30 minutes ago
    code, out, _ = run("--store", str(db), "--json", "--since", since)
    assert code == 0
    assert _uids(out) == [v.uid for v in sample[3:]]


def test_parse_time() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    now_ms = int(now.timestamp() * 1000)
    assert events_cli.parse_time("30s", now=now) == now_ms - 30_000
    assert events_cli.parse_time("15m", now=now) == now_ms - 900_000
    assert events_cli.parse_time("2h", now=now) == now_ms - 7_200_000
    assert events_cli.parse_time("7d", now=now) == now_ms - 7 * 86_400_000
    assert events_cli.parse_time("1h30m", now=now) == now_ms - 5_400_000
    assert events_cli.parse_time("2024-05-01T10:00:00Z") == now_ms - 7_200_000
    assert events_cli.parse_time("2024-05-01T12:00:00.250+02:00") == now_ms - 7_200_000 + 250
    local = datetime(2024, 5, 1, 10, 0, 0).astimezone()
    assert events_cli.parse_time("2024-05-01T10:00:00") == int(local.timestamp() * 1000)
    assert events_cli.parse_time("2024-05-01") == int(
        datetime(2024, 5, 1).astimezone().timestamp() * 1000
    )
    offset = timezone(timedelta(hours=-5))
    assert events_cli.parse_time("2024-05-01T07:00:00-05:00") == int(
        datetime(2024, 5, 1, 7, tzinfo=offset).timestamp() * 1000
    )


@pytest.mark.parametrize("bad", ["yesterday", "3x", "", "15 m", "2024-13-01"])
def test_bad_since_is_a_clear_error(run: Any, db: Path, sample: list[Violation], bad: str) -> None:
    code, out, err = run("--store", str(db), "--since", bad)
    assert code == 2
    assert out == ""
    assert f"argument --since: {bad!r} is not a time; write a duration" in err
    assert "Traceback" not in err


def test_bad_limit(run: Any, db: Path, sample: list[Violation]) -> None:
    code, _, err = run("--store", str(db), "--limit", "-3")
    assert code == 2
    assert "'-3' is not a count" in err


def test_what_of_other_protocols() -> None:
    v = violation(1, egress=EgressDetail("10.0.0.9", 0, "ip-proto-1", 4, "sendmsg4"))
    assert events_cli.what(v) == "10.0.0.9/ip-proto-1"
    budget = violation(2, "limit", limit=LimitDetail("maxProcesses", 50, None, 51))
    assert events_cli.what(budget) == "maxProcesses 50"
    assert events_cli.format_time(1_700_000_000_007) == "2023-11-14T22:13:20.007Z"


# ------------------------------------------------------------------- losses ---


def test_losses_table_and_json(run: Any, db: Path) -> None:
    t = NOW_MS - 60_000
    with EventStore(db, durable=False) as store:
        store.insert(NODE, EPOCH, [loss_rec(7, time_ms=t)])
        store.insert("node-b", EPOCH + 1, [loss_rec(3, time_ms=t + 1, first_seq=0, last_seq=0)])
    code, out, err = run("--store", str(db), "--losses")
    assert (code, err) == (0, "")
    header, rows = table_rows(out)
    assert header == list(events_cli.LOSS_COLUMNS)
    assert rows == [
        [iso(t), NODE, str(EPOCH), "spool_full", "audit", "5", "9", "10-14"],
        [iso(t + 1), "node-b", str(EPOCH + 1), "spool_full", "audit", "5", "9", "-"],
    ]
    code, out, _ = run("--store", str(db), "--losses", "--json", "--node", "node-b")
    [line] = out.splitlines()
    loss = json.loads(line)
    assert (loss["node"], loss["epoch"], loss["seq"], loss["count"]) == ("node-b", EPOCH + 1, 3, 5)
    assert (loss["reason"], loss["priority"], loss["attempts"]) == ("spool_full", "audit", 9)
    code, out, _ = run("--store", str(db), "--losses", "--json", "--since", "30s")
    assert (code, out) == (0, "")


def test_losses_refuse_event_filters(run: Any, db: Path, sample: list[Violation]) -> None:
    code, _, err = run("--store", str(db), "--losses", "--pod", "x")
    assert code == 2
    assert "--pod does not apply" in err


def test_no_losses(run: Any, db: Path, sample: list[Violation]) -> None:
    code, out, _ = run("--store", str(db), "--losses")
    assert code == 0
    assert "no loss records" in out


# ------------------------------------------------------------ store sources ---


def test_missing_store_exits_1(run: Any, tmp_path: Path) -> None:
    code, out, err = run("--store", str(tmp_path / "nothing.db"))
    assert code == 1
    assert out == ""
    assert f"no event store at {tmp_path / 'nothing.db'}" in err
    assert "fix:" in err
    assert not (tmp_path / "nothing.db").exists()


def test_config_gives_the_store_path(
    run: Any, db: Path, sample: list[Violation], tmp_path: Path
) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"apiVersion: nodeguard.io/v1alpha1\nkind: CollectorConfig\nlisten: 0.0.0.0:7443\n"
        f"store:\n  path: {db}\n  durable: true\n"
    )
    code, out, _ = run("--config", str(config), "--json", "--kind", "exec")
    assert code == 0
    assert _uids(out) == [sample[2].uid]


def test_config_problems(run: Any, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    code, _, err = run("--config", str(missing))
    assert code == 1
    assert f"cannot read the collector config {missing}" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: [unclosed\n")
    code, _, err = run("--config", str(bad))
    assert (code, "is not valid YAML" in err) == (1, True)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("store:\n  path: 42\n")
    code, _, err = run("--config", str(wrong))
    assert (code, "store.path is 42, not a file path" in err) == (1, True)


def test_config_without_store_uses_the_default(tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text("listen: 0.0.0.0:7443\n")
    assert events_cli.store_path(config, None) == DEFAULT_STORE_PATH
    assert events_cli.store_path(None, None) == DEFAULT_STORE_PATH
    assert events_cli.store_path(config, tmp_path / "x.db") == tmp_path / "x.db"


# ------------------------------------------------------------------- follow ---


class _Lines:
    """The lines a process writes, read by a thread (bounded waits, no blocking reads)."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, timeout_s: float = WAIT_S) -> str | None:
        return self._queue.get(timeout=timeout_s)


@pytest.fixture
def follow(db: Path) -> Iterator[Any]:
    """Start ``nodeguard events --follow ...`` as a subprocess; killed at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> tuple[subprocess.Popen[str], _Lines]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nodeguard",
                "events",
                "--store",
                str(db),
                "--follow",
                *argv,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(proc)
        assert proc.stdout is not None
        return proc, _Lines(proc.stdout)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT_S)


def test_follow_prints_rows_inserted_after_it_started(
    follow: Any, db: Path, sample: list[Violation]
) -> None:
    proc, lines = follow("--json", "--namespace", "agents")
    existing = [v for v in sample if v.workload is not None and v.workload.namespace == "agents"]
    assert [lines.next() for _ in existing] == [to_json_line(v) for v in existing]
    later = recent(20, "exec", minutes_ago=0)
    elsewhere = recent(21, "exec", minutes_ago=0, workload=None)  # filtered out
    last = recent(22, "egress", minutes_ago=0)
    with EventStore(db, durable=False) as store:
        store.insert(NODE, EPOCH, [vrec(later), vrec(elsewhere)])
        assert lines.next() == to_json_line(later)
        store.insert(NODE, EPOCH, [vrec(last)])
        assert lines.next() == to_json_line(last)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=WAIT_S) == 0
    assert lines.next() is None  # nothing else was printed
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()


def test_follow_table_mode_on_an_empty_store_stops_on_sigint(follow: Any, db: Path) -> None:
    EventStore(db, durable=False).close()
    proc, lines = follow()
    assert proc.stderr is not None
    started = proc.stderr.readline()  # printed once it follows (after the first query)
    assert started.startswith(f"nodeguard: following new events in {db}")
    v = recent(1, "syscall", minutes_ago=0)
    with EventStore(db, durable=False) as store:
        store.insert(NODE, EPOCH, [vrec(v)])
    line = lines.next()
    assert line is not None
    assert line.split("  ") == [
        iso(v.time_ms),
        NODE,
        "agents/research-0",
        "research-agent",
        "syscall",
        "blocked",
        "ptrace",
        "1",
    ]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=WAIT_S) == 0
