"""The agent's local API (HTTP/1.1 + JSON over a UNIX socket): server and client."""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.agent.api import (
    DEFAULT_SOCKET,
    MAX_BODY,
    AdmitRequest,
    AdmitResponse,
    AgentAlreadyRunning,
    AgentAPIClient,
    AgentAPIError,
    AgentAPIServer,
    AgentUnavailable,
    APIServerError,
    default_socket_path,
)
from nodeguard.agent.status import StatusSnapshot
from tests.unit.test_status_render import sample_snapshot

REQUEST = AdmitRequest(
    pod_uid="6c0d4f6e-1b7a-4c1e-9d0a-0f3e2b1a9c11",
    pod_namespace="agents",
    pod_name="research-0",
    sandbox_id="a" * 64,
    container_id="b" * 64,
    container_type="container",
    cgroups_path="/kubepods/besteffort/pod6c0d4f6e-1b7a-4c1e-9d0a-0f3e2b1a9c11/" + "b" * 64,
    bundle="/run/containerd/io.containerd.runtime.v2.task/k8s.io/" + "b" * 64,
    container_name="agent",
    pid=4242,
)


class FakeAgent:
    def __init__(self) -> None:
        self.requests: list[AdmitRequest] = []
        self.fail = False

    def snapshot(self) -> StatusSnapshot:
        return sample_snapshot()

    def admit(self, req: AdmitRequest) -> AdmitResponse:
        if self.fail:
            raise RuntimeError("boom")
        self.requests.append(req)
        return AdmitResponse(True, True, "research-agent", "pod agents/research-0 enforced")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # UNIX socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="ng-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def server(sock_dir: Path, agent: FakeAgent) -> Iterator[AgentAPIServer]:
    srv = AgentAPIServer(sock_dir / "run" / "agent.sock", agent.snapshot, agent.admit)
    srv.start()
    yield srv
    srv.stop()


def raw_request(path: Path, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, object]]:
    """Send raw bytes, return (status, JSON body) of the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def post(path: Path, body: bytes, route: str = "/v1/admit") -> tuple[int, dict[str, object]]:
    head = f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    return raw_request(path, head + body)


# ------------------------------------------------------------------- requests --


def test_status_round_trip(server: AgentAPIServer) -> None:
    client = AgentAPIClient(server.socket_path, timeout_s=5)
    assert client.status() == sample_snapshot()
    assert client.healthz()


def test_admit(server: AgentAPIServer, agent: FakeAgent) -> None:
    answer = AgentAPIClient(server.socket_path).admit(REQUEST)
    assert answer == AdmitResponse(True, True, "research-agent", "pod agents/research-0 enforced")
    assert agent.requests == [REQUEST]


def test_admit_request_json_round_trip() -> None:
    assert AdmitRequest.from_dict(json.loads(json.dumps(REQUEST.to_dict()))) == REQUEST
    minimal = {k: v for k, v in REQUEST.to_dict().items() if k not in ("container_name", "pid")}
    assert AdmitRequest.from_dict(minimal).pid == 0


def test_socket_permissions(server: AgentAPIServer) -> None:
    st = server.socket_path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(server.socket_path.parent.stat().st_mode) == 0o755
    # no temporary socket left behind
    assert sorted(p.name for p in server.socket_path.parent.iterdir()) == [
        "agent.sock",
        "agent.sock.lock",
    ]


def test_malformed_json_is_400_and_server_lives_on(server: AgentAPIServer) -> None:
    status, body = post(server.socket_path, b"{not json")
    assert status == 400
    assert "not valid JSON" in str(body["error"])
    assert body["status"] == 400
    status, body = post(server.socket_path, json.dumps({"pod_uid": 3}).encode())
    assert status == 400
    assert "bad admit request: pod_uid: expected a string" in str(body["error"])
    bad_type = {**REQUEST.to_dict(), "container_type": "vm"}
    status, body = post(server.socket_path, json.dumps(bad_type).encode())
    assert status == 400 and "container_type" in str(body["error"])
    assert AgentAPIClient(server.socket_path).status() == sample_snapshot()


def test_oversized_body_is_400(server: AgentAPIServer, agent: FakeAgent) -> None:
    big = json.dumps({**REQUEST.to_dict(), "bundle": "x" * (MAX_BODY + 10)}).encode()
    status, body = post(server.socket_path, big)
    assert status == 400
    assert "over the 64 KiB limit" in str(body["error"])
    assert agent.requests == []
    assert AgentAPIClient(server.socket_path).healthz()


def test_missing_length_unknown_path_wrong_method(server: AgentAPIServer) -> None:
    status, body = raw_request(server.socket_path, b"POST /v1/admit HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and "Content-Length" in str(body["error"])
    status, body = raw_request(server.socket_path, b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404
    status, body = raw_request(server.socket_path, b"GET /v1/admit HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405 and "takes POST" in str(body["error"])
    status, body = raw_request(server.socket_path, b"garbage\r\n\r\n")
    assert status == 400 and "Bad request syntax" in str(body["error"])
    status, body = raw_request(server.socket_path, b"PATCH /v1/status HTTP/1.1\r\n\r\n")
    assert status == 501


def test_callback_failure_is_500_not_a_crash(server: AgentAPIServer, agent: FakeAgent) -> None:
    agent.fail = True
    client = AgentAPIClient(server.socket_path)
    with pytest.raises(
        AgentAPIError, match="answered POST /v1/admit with 500: internal error: boom"
    ):
        client.admit(REQUEST)
    agent.fail = False
    assert client.admit(REQUEST).allowed


def test_concurrent_requests(server: AgentAPIServer, agent: FakeAgent) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            client = AgentAPIClient(server.socket_path)
            for _ in range(5):
                client.admit(REQUEST)
                client.status()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(agent.requests) == 40


# ------------------------------------------------------------- socket life --


def test_second_server_is_refused(server: AgentAPIServer, agent: FakeAgent) -> None:
    other = AgentAPIServer(server.socket_path, agent.snapshot, agent.admit)
    with pytest.raises(AgentAlreadyRunning, match=f"already serving {server.socket_path}"):
        other.start()
    # the first one is untouched
    assert AgentAPIClient(server.socket_path).healthz()


def test_foreign_listener_is_not_replaced(sock_dir: Path, agent: FakeAgent) -> None:
    path = sock_dir / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        srv = AgentAPIServer(path, agent.snapshot, agent.admit)
        with pytest.raises(AgentAlreadyRunning, match=rf"\(pid {os.getpid()}\)") as info:
            srv.start()
        assert "run one agent per node" in str(info.value)
    assert path.exists()


def test_stale_socket_is_replaced(sock_dir: Path, agent: FakeAgent) -> None:
    path = sock_dir / "agent.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what SIGKILL leaves behind
    with pytest.raises(AgentUnavailable, match="nothing listens"):
        AgentAPIClient(path).status()
    with AgentAPIServer(path, agent.snapshot, agent.admit):
        assert AgentAPIClient(path).status() == sample_snapshot()
    assert not path.exists()  # stop() removes its socket


def test_non_socket_file_is_not_replaced(sock_dir: Path, agent: FakeAgent) -> None:
    path = sock_dir / "agent.sock"
    path.write_text("precious")
    with pytest.raises(APIServerError, match="exists and is not a socket"):
        AgentAPIServer(path, agent.snapshot, agent.admit).start()
    assert path.read_text() == "precious"


def test_restart_on_same_path(sock_dir: Path, agent: FakeAgent) -> None:
    path = sock_dir / "agent.sock"
    for _ in range(2):
        with AgentAPIServer(path, agent.snapshot, agent.admit):
            assert AgentAPIClient(path).healthz()


# ------------------------------------------------------------ client errors --


def test_client_no_agent_message(sock_dir: Path) -> None:
    path = sock_dir / "agent.sock"
    with pytest.raises(AgentUnavailable) as info:
        AgentAPIClient(path).status()
    err = info.value
    assert err.message == (f"the nodeguard agent is not running on this node (no socket at {path})")
    assert err.fix == (
        "start it with `nodeguard agent --config FILE` or check the DaemonSet: "
        "kubectl -n nodeguard get pods -o wide"
    )
    assert err.exit_code == 2


def test_client_timeout(sock_dir: Path) -> None:
    path = sock_dir / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)  # accepts (in the backlog) but never answers
        start = time.monotonic()
        with pytest.raises(AgentUnavailable, match=r"did not answer within 0\.3 s"):
            AgentAPIClient(path, timeout_s=0.3).admit(REQUEST)
        assert time.monotonic() - start < 3


def test_client_not_the_agent(sock_dir: Path) -> None:
    """Something else answers on the socket: a clear error, not a traceback."""
    path = sock_dir / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                received = b""
                while not received.endswith(b"}"):
                    received += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

        t = threading.Thread(target=answer)
        t.start()
        with pytest.raises(AgentAPIError, match="bad admit answer"):
            AgentAPIClient(path).admit(REQUEST)
        t.join()


def test_default_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODEGUARD_API_SOCKET", raising=False)
    assert default_socket_path() == DEFAULT_SOCKET == Path("/run/nodeguard/agent.sock")
    monkeypatch.setenv("NODEGUARD_API_SOCKET", "/tmp/x.sock")
    assert default_socket_path() == Path("/tmp/x.sock")
    assert AgentAPIClient().socket_path == Path("/tmp/x.sock")


def test_client_waits_while_the_listen_backlog_is_full(sock_dir: Path) -> None:
    """A burst of container starts can fill the socket's backlog: connect() then fails
    with EAGAIN at once on a UNIX socket; the client retries until its timeout."""
    path = sock_dir / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(0)
        fillers = []
        for _ in range(16):
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(str(path))
            except BlockingIOError:
                filler.close()
                break
            fillers.append(filler)
        else:
            pytest.skip("could not fill the listen backlog")

        def serve() -> None:
            time.sleep(0.2)
            listener.settimeout(3)
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(0.2)
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue  # a filler
                    if data:
                        body = b'{"ok": true}'
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                        )
                        return

        t = threading.Thread(target=serve)
        t.start()
        try:
            assert AgentAPIClient(path, timeout_s=3).healthz()
        finally:
            t.join(timeout=5)
            for filler in fillers:
                filler.close()
