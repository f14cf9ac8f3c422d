"""A private nats-server with JetStream for tests and demos, on 127.0.0.1.

The port is picked by the server on the first start (``-p -1``, read back from its
ports file) and kept on a restart; JetStream data lives in the instance's directory,
so streams survive a restart. With ``tls=True`` the server wants TLS and a client
certificate signed by its CA (made with :mod:`nodeguard.pki`, files in ``pki/``).

    with NatsServer(tmp_path / "nats") as server:
        server.url  # "nats://127.0.0.1:PORT"
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

from nodeguard import pki
from nodeguard.lab.process import stop_process

NATS_SERVER = "nats-server"


def available() -> bool:
    return shutil.which(NATS_SERVER) is not None


class NatsServer:
    def __init__(self, directory: Path, *, tls: bool = False, token: str | None = None) -> None:
        self.directory = directory
        self.tls = tls
        self.token = token
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.ca: Path | None = None
        self.client: pki.CertFiles | None = None
        self._server: pki.CertFiles | None = None
        if tls:
            ca = pki.make_ca(directory / "pki", "nodeguard nats test CA")
            self.ca = ca.cert_path
            self._server = pki.issue_server(ca, directory / "pki", ["127.0.0.1", "localhost"])
            self.client = pki.issue_client(ca, directory / "pki", "nodeguard-collector")

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 15.0) -> None:
        if self.running:
            raise RuntimeError("nats-server is already running")
        d = self.directory
        ports_dir = d / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        log = d / "nats-server.log"
        if log.exists():  # "Server is ready" must come from this start
            log.replace(d / "nats-server.log.prev")
        argv = [
            NATS_SERVER,
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port or -1),
            "-sd",
            str(d / "jetstream"),
            "--ports_file_dir",
            str(ports_dir),
            "-l",
            str(log),
        ]
        if self.token:
            argv += ["--auth", self.token]
        if self._server is not None and self.ca is not None:
            argv += [
                "--tlsverify",
                "--tlscert",
                str(self._server.cert),
                "--tlskey",
                str(self._server.key),
                "--tlscacert",
                str(self.ca),
            ]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            port = self._read_port(ports_dir)
            if port and "Server is ready" in self._log_text():
                self.port = port
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"nats-server not ready within {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """A clean stop (SIGTERM)."""
        self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, sig, timeout_s)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_text().splitlines()[-lines:])

    def _log_text(self) -> str:
        try:
            return (self.directory / "nats-server.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _read_port(self, ports_dir: Path) -> int:
        for path in ports_dir.glob("*.ports"):
            with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                url = json.loads(path.read_text())["nats"][0]
                return int(url.rsplit(":", 1)[1])
        return 0
