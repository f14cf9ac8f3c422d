"""A local stand-in for Splunk's HTTP Event Collector (Splunk itself cannot run here),
for the HEC sink's tests and demos.

It speaks the part of the HEC protocol the sink uses: ``POST /services/collector/event``
with ``Authorization: Splunk <token>`` and a body of concatenated JSON event objects,
answered like Splunk does (``{"text": "Success", "code": 0}``; 401 code 2 without a
token, 403 code 4 for a wrong one, 400 code 6 for a malformed body, 503 code 9 "Server
is busy" while told to fail). HTTP/1.1 with keep-alive, over TLS with a certificate made
by :mod:`nodeguard.pki` (or plain HTTP with ``tls=False``), on 127.0.0.1.

    with HecReceiver(tmp_path / "hec", token="t0k") as hec:
        hec.url, hec.ca           # for the sink's configuration
        hec.fail(503)             # every request fails until hec.fail(None)
        hec.wait_for_events(100)  # the accepted events, in order
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from nodeguard import pki

EVENT_PATH = "/services/collector/event"


@dataclass(frozen=True, slots=True)
class HecRequest:
    """One POST as received, and the answer it got."""

    path: str
    authorization: str | None
    headers: dict[str, str]
    body: bytes
    status: int
    events: list[dict[str, Any]]  # parsed events (empty when the body did not parse)
    connection: int  # serial number of the TCP connection it came on


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """Concatenated JSON objects (whitespace between them allowed)."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return out
        value, index = decoder.raw_decode(text, index)
        if not isinstance(value, dict):
            raise ValueError("an event is not a JSON object")
        out.append(value)


@dataclass
class _State:
    token: str
    fail_status: int | None = None
    requests: list[HecRequest] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        state = self.server.state
        with state.lock:
            state.connections += 1
            self.connection_number = state.connections

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests read the recorded requests instead

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        auth = self.headers.get("Authorization")
        events: list[dict[str, Any]] = []
        with state.lock:
            fail = state.fail_status
        if self.path.rstrip("/") != EVENT_PATH:
            status, answer = 404, {"text": "The requested URL was not found", "code": 404}
        elif auth is None:
            status, answer = 401, {"text": "Token is required", "code": 2}
        elif auth != f"Splunk {state.token}":
            status, answer = 403, {"text": "Invalid token", "code": 4}
        elif fail is not None:
            status, answer = fail, {"text": "Server is busy", "code": 9}
        else:
            try:
                events = parse_events(body)
                status, answer = 200, {"text": "Success", "code": 0}
            except ValueError:
                status, answer = 400, {"text": "Invalid data format", "code": 6}
        record = HecRequest(
            path=self.path,
            authorization=auth,
            headers=dict(self.headers.items()),
            body=body,
            status=status,
            events=events if status == 200 else [],
            connection=self.connection_number,
        )
        with state.lock:
            state.requests.append(record)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class HecReceiver:
    def __init__(self, directory: Path, *, token: str, tls: bool = True) -> None:
        self.directory = directory
        self.tls = tls
        directory.mkdir(parents=True, exist_ok=True)
        self._state = _State(token=token)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.ca: Path | None = None
        self._cert: pki.CertFiles | None = None
        if tls:
            ca = pki.make_ca(directory / "pki", "nodeguard hec test CA")
            self.ca = ca.cert_path
            self._cert = pki.issue_server(ca, directory / "pki", ["127.0.0.1", "localhost"])

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{EVENT_PATH}"

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the HEC receiver is already running")
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.state = self._state
        if self._cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self._cert.cert), str(self._cert.key))
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> HecReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ control --

    def fail(self, status: int | None = 503) -> None:
        """Answer every request with ``status`` (None: work normally again)."""
        with self._state.lock:
            self._state.fail_status = status

    def set_token(self, token: str) -> None:
        with self._state.lock:
            self._state.token = token

    # ----------------------------------------------------------------- recorded --

    def requests(self) -> list[HecRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def events(self) -> list[dict[str, Any]]:
        """Every accepted event, in arrival order."""
        return [e for r in self.requests() for e in r.events]

    @property
    def connections(self) -> int:
        with self._state.lock:
            return self._state.connections

    def wait_for_events(self, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            events = self.events()
            if len(events) >= count:
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"the HEC receiver got {len(events)} of {count} events")
            time.sleep(0.05)
