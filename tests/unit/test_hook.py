"""`nodeguard hook` (OCI createRuntime hook): decisions against a fake agent."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeguard.agent import api, hook
from nodeguard.agent.api import AdmitRequest, AdmitResponse, AgentAPIServer
from nodeguard.agent.hook import HookConfig, run_hook
from nodeguard.cli.main import main
from tests.unit.test_status_render import sample_snapshot

REPO = Path(__file__).resolve().parents[2]
POD_UID = "6c0d4f6e-1b7a-4c1e-9d0a-0f3e2b1a9c11"
SANDBOX_ID = "a" * 64
CONTAINER_ID = "b" * 64
CGROUPS_PATH = f"/kubepods/besteffort/pod{POD_UID}/{CONTAINER_ID}"


class FakeAgent:
    def __init__(self) -> None:
        self.requests: list[AdmitRequest] = []
        self.answer = AdmitResponse(True, True, "research-agent", "enforced")
        self.delay_s = 0.0
        self.fail = False

    def admit(self, req: AdmitRequest) -> AdmitResponse:
        self.requests.append(req)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("selection crashed")
        return self.answer


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ng-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture(autouse=True)
def _no_syslog(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hook, "SYSLOG_SOCKET", str(work / "no-syslog"))


@pytest.fixture
def agent(work: Path) -> Iterator[FakeAgent]:
    fake = FakeAgent()
    with AgentAPIServer(work / "agent.sock", sample_snapshot, fake.admit):
        yield fake


def cri_annotations(namespace: str = "agents", ctype: str = "container") -> dict[str, str]:
    return {
        hook.CONTAINER_TYPE: ctype,
        hook.SANDBOX_ID: SANDBOX_ID,
        hook.SANDBOX_NAMESPACE: namespace,
        hook.SANDBOX_NAME: "research-0",
        hook.SANDBOX_UID: POD_UID,
        hook.CONTAINER_NAME: "agent",
    }


def make_state(
    work: Path,
    annotations: dict[str, str] | None,
    *,
    container_id: str = CONTAINER_ID,
    in_state: bool = True,
    write_config: bool = True,
) -> bytes:
    """A bundle with config.json, and the OCI state runc writes on the hook's stdin."""
    bundle = work / "bundle"
    bundle.mkdir(exist_ok=True)
    if write_config:
        config: dict[str, Any] = {
            "ociVersion": "1.0.2",
            "process": {"args": ["/agent"]},
            "linux": {"cgroupsPath": CGROUPS_PATH},
        }
        if annotations is not None:
            config["annotations"] = annotations
        (bundle / "config.json").write_text(json.dumps(config))
    state: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "id": container_id,
        "status": "creating",
        "pid": 4242,
        "bundle": str(bundle),
    }
    if annotations is not None and in_state:
        state["annotations"] = annotations
    return json.dumps(state).encode()


def config(work: Path, fail_closed: str = "", **kw: Any) -> HookConfig:
    return HookConfig(
        socket_path=work / "agent.sock",
        fail_closed_namespaces=hook.parse_namespace_list(fail_closed),
        fail_closed_file=kw.pop("fail_closed_file", None),
        timeout_s=kw.pop("timeout_s", 2.0),
        **kw,
    )


def run(cfg: HookConfig, stdin: bytes) -> tuple[int, str]:
    err = io.StringIO()
    code = run_hook(cfg, io.BytesIO(stdin), err)
    return code, err.getvalue()


# ------------------------------------------------------------- agent answers --


def test_allowed(work: Path, agent: FakeAgent) -> None:
    code, err = run(config(work), make_state(work, cri_annotations()))
    assert (code, err) == (0, "")
    assert agent.requests == [
        AdmitRequest(
            pod_uid=POD_UID,
            pod_namespace="agents",
            pod_name="research-0",
            sandbox_id=SANDBOX_ID,
            container_id=CONTAINER_ID,
            container_type="container",
            cgroups_path=CGROUPS_PATH,
            bundle=str(work / "bundle"),
            container_name="agent",
            pid=4242,
        )
    ]


def test_refused_by_agent(work: Path, agent: FakeAgent) -> None:
    agent.answer = AdmitResponse(False, False, "research-agent", "cannot attach: cgroup gone")
    code, err = run(config(work), make_state(work, cri_annotations()))
    assert code == 1
    assert err == (
        f"nodeguard hook: refused container 'agent' ({CONTAINER_ID[:12]}) of pod "
        "agents/research-0: cannot attach: cgroup gone\n"
    )


def test_sandbox(work: Path, agent: FakeAgent) -> None:
    annotations = cri_annotations(ctype="sandbox")
    del annotations[hook.SANDBOX_ID]
    del annotations[hook.CONTAINER_NAME]
    code, _ = run(config(work), make_state(work, annotations, container_id=SANDBOX_ID))
    assert code == 0
    (req,) = agent.requests
    assert (req.container_type, req.sandbox_id, req.container_id) == (
        "sandbox",
        SANDBOX_ID,
        SANDBOX_ID,
    )


def test_annotations_from_config_json_only(work: Path, agent: FakeAgent) -> None:
    code, _ = run(config(work), make_state(work, cri_annotations(), in_state=False))
    assert code == 0
    assert agent.requests[0].pod_uid == POD_UID


def test_unreadable_config_json_still_admits(work: Path, agent: FakeAgent) -> None:
    code, _ = run(config(work), make_state(work, cri_annotations(), write_config=False))
    assert code == 0
    assert agent.requests[0].cgroups_path == ""  # the agent finds it from pid / CRI


def test_agent_error_answer_applies_fail_closed_rule(work: Path, agent: FakeAgent) -> None:
    agent.fail = True
    code, err = run(config(work, "agents"), make_state(work, cri_annotations()))
    assert code == 1
    assert "answered POST /v1/admit with 500" in err
    code, _ = run(config(work), make_state(work, cri_annotations()))
    assert code == 0


def test_agent_too_slow_counts_as_down(work: Path, agent: FakeAgent) -> None:
    agent.delay_s = 1.0
    start = time.monotonic()
    code, err = run(config(work, "agents", timeout_s=0.2), make_state(work, cri_annotations()))
    assert code == 1
    assert "did not answer within 0.2 s" in err
    assert time.monotonic() - start < 1.0


# -------------------------------------------------------------- agent is down --


def test_down_fail_closed_namespace_refuses(work: Path) -> None:
    code, err = run(config(work, "agents,other"), make_state(work, cri_annotations("agents")))
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith(f"nodeguard hook: refused container 'agent' ({CONTAINER_ID[:12]})")
    assert "the nodeguard agent is not running on this node (no socket at" in err
    assert "namespace 'agents' is fail-closed while the nodeguard agent cannot answer" in err
    assert "kubectl -n nodeguard get pods -o wide" in err


def test_down_other_namespace_allows_and_logs(work: Path) -> None:
    code, err = run(config(work, "agents"), make_state(work, cri_annotations("web")))
    assert code == 0
    assert "allowed container 'agent'" in err and "unguarded" in err


def test_down_wildcard(work: Path) -> None:
    state = make_state(work, cri_annotations("web"))
    assert run(config(work, "*"), state)[0] == 1
    exempt = make_state(work, cri_annotations("kube-system"))
    assert run(config(work, "*"), exempt)[0] == 0  # default exemptions: the agent can start
    assert run(config(work, "*,kube-system"), exempt)[0] == 1  # named explicitly: closed
    assert run(config(work, "*", exempt_namespaces=frozenset()), exempt)[0] == 1


def test_down_namespaces_file(work: Path) -> None:
    path = work / "state" / "fail-closed-namespaces"
    state = make_state(work, cri_annotations("agents"))
    assert run(config(work, fail_closed_file=path), state)[0] == 0  # no file yet
    hook.write_fail_closed_file(path, ["agents", "research"])
    assert hook.read_fail_closed_file(path) == {"agents", "research"}
    assert run(config(work, fail_closed_file=path), state)[0] == 1
    hook.write_fail_closed_file(path, ["*"])
    assert run(config(work, fail_closed_file=path), state)[0] == 1
    system = make_state(work, cri_annotations("nodeguard"))
    assert run(config(work, fail_closed_file=path), system)[0] == 0


def test_not_kubernetes_always_allowed(work: Path) -> None:
    state = make_state(work, {"org.opencontainers.image.ref.name": "busybox"})
    assert run(config(work, "*"), state) == (0, "")
    assert run(config(work, "*"), make_state(work, None)) == (0, "")


@pytest.mark.parametrize(
    ("stdin", "fail_closed", "code"),
    [
        (b"garbage", "*", 1),
        (b"garbage", "agents", 1),  # cannot prove it is outside a fail-closed namespace
        (b"garbage", "", 0),
        (b"", "*", 1),
        (b'["a list"]', "*", 1),
        (b"\xff\xfe", "*", 1),
    ],
)
def test_garbage_stdin_applies_fail_closed_rule(
    work: Path, stdin: bytes, fail_closed: str, code: int
) -> None:
    got, err = run(config(work, fail_closed), stdin)
    assert got == code
    assert err.count("\n") == 1
    assert "cannot read the container's OCI state" in err
    assert "Traceback" not in err


def test_bad_annotations_keep_the_namespace(work: Path) -> None:
    annotations = cri_annotations("agents", ctype="vm")
    state = make_state(work, annotations)
    assert run(config(work, "agents"), state)[0] == 1
    assert run(config(work, "web"), state)[0] == 0


def test_unexpected_error_applies_fail_closed_rule(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(_state: bytes | str) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(hook, "parse_container", explode)
    code, err = run(config(work, "*"), b"{}")
    assert code == 1
    assert "unexpected error in nodeguard hook: KeyError" in err
    assert run(config(work), b"{}")[0] == 0


def test_namespace_list_parsing() -> None:
    assert hook.parse_namespace_list(" a, b ,,") == {"a", "b"}
    assert hook.parse_namespace_list("*") == {"*"}
    assert hook.parse_namespace_list("") == frozenset()
    for bad in ("Agents", "-x", "a_b", "a" * 64):
        with pytest.raises(ValueError, match="not a Kubernetes namespace name"):
            hook.parse_namespace_list(bad)


def test_default_socket_matches_the_api() -> None:
    assert Path(hook.DEFAULT_SOCKET) == api.DEFAULT_SOCKET
    assert hook.SOCKET_ENV == api.SOCKET_ENV


# ----------------------------------------------------------------------- CLI --


def run_cli(
    args: list[str], stdin: bytes, *, module: bool = False
) -> subprocess.CompletedProcess[bytes]:
    if module:
        cmd = [sys.executable, "-m", "nodeguard.cli.hook", *args]
    else:
        cmd = [sys.executable, "-m", "nodeguard", "hook", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, env=env, check=False)


def test_cli_agent_down(work: Path) -> None:
    state = make_state(work, cri_annotations("agents"))
    sock = str(work / "agent.sock")
    closed = run_cli(["--socket", sock, "--fail-closed-namespaces", "agents"], state)
    assert closed.returncode == 1
    assert closed.stderr.decode().count("\n") == 1
    assert b"namespace 'agents' is fail-closed" in closed.stderr
    opened = run_cli(
        ["--socket", sock, "--fail-closed-namespaces", "web", "--fail-closed-file", ""],
        state,
        module=True,
    )
    assert opened.returncode == 0
    for result in (closed, opened):
        assert b"Traceback" not in result.stderr
        assert result.stdout == b""


def test_cli_against_agent(work: Path, agent: FakeAgent) -> None:
    state = make_state(work, cri_annotations("agents"))
    result = run_cli(["--socket", str(work / "agent.sock"), "--timeout-ms", "3000"], state)
    assert (result.returncode, result.stderr) == (0, b"")
    assert agent.requests[0].pod_uid == POD_UID


def test_cli_bad_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["hook", "--fail-closed-namespaces", "Bad_Name"])
    assert info.value.code == 2
    assert "not a Kubernetes namespace name" in capsys.readouterr().err


def test_cli_parses_config(monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
    seen: list[HookConfig] = []

    def fake_main(cfg: HookConfig) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr(hook, "main_stdio", fake_main)
    args = [
        "hook",
        "--socket",
        str(work / "s.sock"),
        "--fail-closed-namespaces",
        "agents,web",
        "--exempt-namespaces",
        "ops",
        "--fail-closed-file",
        "",
        "--timeout-ms",
        "250",
    ]
    assert main(args) == 0
    assert seen == [
        HookConfig(
            socket_path=work / "s.sock",
            fail_closed_namespaces=frozenset({"agents", "web"}),
            exempt_namespaces=frozenset({"ops"}),
            fail_closed_file=None,
            timeout_s=0.25,
        )
    ]


def test_concurrent_hooks(work: Path, agent: FakeAgent) -> None:
    """Many containers starting at once all get an answer."""
    state = make_state(work, cri_annotations())
    results: list[int] = []

    def one() -> None:
        results.append(run(config(work, "*"), state)[0])

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [0] * 20
    assert len(agent.requests) == 20


def test_decisions_are_logged_to_syslog(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket  # noqa: PLC0415

    path = work / "dev-log"
    monkeypatch.setattr(hook, "SYSLOG_SOCKET", str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as log_sock:
        log_sock.bind(str(path))
        log_sock.settimeout(2)
        assert run(config(work, "agents"), make_state(work, cri_annotations("web")))[0] == 0
        line = log_sock.recv(65536).decode()
        assert line.startswith("<28>nodeguard-hook[")  # daemon.warning
        record = json.loads(line.split("]: ", 1)[1])
        assert record["event"] == "hook_allowed_fail_open"
        assert record["namespace"] == "web"
        assert run(config(work, "agents"), make_state(work, cri_annotations("agents")))[0] == 1
        line = log_sock.recv(65536).decode()
        assert line.startswith("<27>")  # daemon.err
        assert json.loads(line.split("]: ", 1)[1])["event"] == "hook_refused_fail_closed"


def test_hook_needs_only_the_standard_library(work: Path) -> None:
    """The hook runs on every container start, on the host: it must start fast and must
    not need the third-party modules of the agent (rich, structlog, pydantic, ...)."""
    state = make_state(work, cri_annotations("agents"))
    script = (
        "import io, sys\n"
        "from nodeguard.cli import hook\n"
        f"sys.stdin = io.TextIOWrapper(io.BytesIO({state!r}))\n"
        f"code = hook.main(['--socket', {str(work / 'none.sock')!r}, '--fail-closed-file', ''])\n"
        "heavy = {'rich', 'structlog', 'prometheus_client', 'pydantic', 'yaml', 'grpc', 'psutil'}\n"
        "print(code, sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, env=env, check=False
    )
    assert result.stdout.decode().split("\n")[0] == "0 []", result.stderr.decode()


def test_failing_rule_still_no_traceback(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_config: HookConfig, _namespace: str | None) -> bool:
        raise OSError("disk on fire")

    monkeypatch.setattr(hook, "fail_closed", broken)
    code, err = run(config(work, "agents"), b"garbage")
    assert code == 1
    assert "internal error (OSError: disk on fire)" in err
    assert run(config(work), b"garbage")[0] == 0
