"""The collector as a real process (``python -m nodeguard collector --config FILE``), for
fault tests: start it, SIGKILL it mid-stream, restart it on the same port.

``start()`` returns once the gRPC health service says SERVING; the bound port is read
from the ``collector_listening`` log line, so a config may listen on port 0. Later
starts pin that port (a derived config next to the logs) so producers reconnect to the
same address.

The health check needs a client certificate when the collector requires mutual TLS:
pass ``tls=ClientTLS(...)``, or let the lab issue itself one from the CA next to
``tls.clientCA`` (a ``nodeguard.pki`` / ``nodeguard collector certs`` directory holds
``ca.crt`` and ``ca.key``; that CA signs the server certificate too).

``netns``: run the collector in a network namespace of the caller's own (a path such as
``/run/netns/NAME``; the child setns()es into it before exec). The health check then runs
in a short-lived probe process in that namespace (``python -m
nodeguard.lab.collector_process health ...``), since this process's network cannot reach
it; :meth:`CollectorProcess.channel` still dials from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodeguard import pki
from nodeguard.lab.netns import join_netns

REPO = Path(__file__).resolve().parents[2]

_WILDCARD_DIAL = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - mapping, not a bind
HEALTH_SERVICE = "nodeguard.v1.Collector"


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """What a client needs to talk to a mutual-TLS collector: the CA that signed the
    server's certificate, and a client certificate + key the collector's clientCA
    accepts. ``server_name``: the name to check the server certificate against when the
    dialled address is not in it."""

    ca: Path
    cert: Path
    key: Path
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )

    def options(self) -> list[tuple[str, Any]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def check_health(target: str, tls: ClientTLS | None, timeout: float = 2.0) -> bool:
    """True when the gRPC health service at ``target`` answers SERVING for
    nodeguard.v1.Collector (``tls`` None: a plain-text channel)."""
    if tls is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, tls.credentials(), tls.options())
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)
        answer = stub.Check(request, timeout=timeout)
    except grpc.RpcError:
        return False
    finally:
        channel.close()
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def _server_name(cert: x509.Certificate, dialled: str) -> str | None:
    """None when ``dialled`` is in the certificate, else a name that is (for
    ``grpc.ssl_target_name_override``)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = san.get_values_for_type(x509.DNSName)
    addresses = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    if dialled in names or dialled in addresses or not names:
        return None
    return names[0]


class CollectorProcess:
    """One collector subprocess. ``tls``: client credentials for the health check and
    :meth:`channel` (None when the config is ``insecure``)."""

    def __init__(
        self,
        config_path: Path,
        *,
        tls: ClientTLS | None = None,
        workdir: Path | None = None,
        extra_args: tuple[str, ...] = (),
        netns: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.netns = netns
        self.tls = tls
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="nodeguard-collector-"))
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._port: int | None = None
        self._config: dict[str, Any] = yaml.safe_load(config_path.read_text()) or {}
        if tls is None and not self._config.get("insecure", False):
            self.tls = self._lab_client_tls()

    def _lab_client_tls(self) -> ClientTLS:
        tls = self._config.get("tls") or {}
        client_ca = Path(str(tls.get("clientCA", "")))
        if not (client_ca.parent / "ca.key").is_file():
            raise RuntimeError(
                f"{self.config_path}: no ca.key next to tls.clientCA {client_ca}: pass "
                "tls=ClientTLS(ca, cert, key) for the health check"
            )
        ca = pki.load_ca(client_ca.parent)
        files = pki.issue_client(ca, self.workdir / "lab-client", "nodeguard-lab")
        server_cert = x509.load_pem_x509_certificate(Path(str(tls["cert"])).read_bytes())
        return ClientTLS(ca.cert_path, files.cert, files.key, _server_name(server_cert, self.host))

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    # ------------------------------------------------------------------ addresses --

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the collector has not started yet")
        return self._port

    @property
    def host(self) -> str:
        listen = str(self._config.get("listen", "0.0.0.0:7443"))
        host = listen.rpartition(":")[0].strip("[]")
        return _WILDCARD_DIAL.get(host, host)

    @property
    def target(self) -> str:
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def channel(self) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self.tls.credentials(), self.tls.options())

    @property
    def log_path(self) -> Path:
        return self.workdir / f"collector-{self.starts}.log"

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines of the current run."""
        out: list[dict[str, Any]] = []
        path = self.log_path
        if not path.exists():
            return out
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    out.append(item)
        return out

    # ------------------------------------------------------------------ lifecycle --

    def _config_to_run(self) -> Path:
        if self._port is None:
            return self.config_path
        listen = str(self._config.get("listen", "0.0.0.0:7443"))
        host = listen.rpartition(":")[0]
        pinned = dict(self._config, listen=f"{host}:{self._port}")
        path = self.workdir / "collector.pinned.yaml"
        path.write_text(yaml.safe_dump(pinned))
        return path

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            raise RuntimeError("the collector is already running")
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._config_to_run()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nodeguard", "--log-level", "info", "collector",
                 "--config", str(config), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                preexec_fn=self._preexec(),  # noqa: PLW1509 - see _preexec
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"collector exited with status {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self._port is None:
                self._port = self._listening_port()
            if self._port is not None and self.serving():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"collector not SERVING after {timeout}s:\n{self.log_tail()}")

    def _listening_port(self) -> int | None:
        for item in self.log_events():
            if item.get("event") == "collector_listening":
                return int(item["port"])
        return None

    def _preexec(self) -> Callable[[], None] | None:
        """What a child runs before exec: join the collector's network namespace. Only a
        setns(): glibc resets its own locks in a forked child, and gRPC installs no fork
        handlers unless GRPC_ENABLE_FORK_SUPPORT is set, so the threads of this process
        cannot hold anything the child needs."""
        netns = self.netns
        if netns is None:
            return None
        return lambda: join_netns(netns)

    def serving(self, timeout: float = 2.0) -> bool:
        """True when the gRPC health service answers SERVING for nodeguard.v1.Collector."""
        if self._port is None:
            return False
        if self.netns is None:
            return check_health(self.target, self.tls, timeout)
        # Our own network cannot reach the namespace: ask from a probe process inside it.
        args = [sys.executable, "-m", "nodeguard.lab.collector_process", "health", self.target,
                "--timeout", str(timeout)]  # fmt: skip
        if self.tls is not None:
            args += ["--ca", str(self.tls.ca), "--cert", str(self.tls.cert),
                     "--key", str(self.tls.key)]  # fmt: skip
            if self.tls.server_name is not None:
                args += ["--server-name", self.tls.server_name]
        try:
            probe = subprocess.run(
                args, cwd=REPO, capture_output=True, timeout=timeout + 30,
                preexec_fn=self._preexec(), check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False
        return probe.returncode == 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit status (0 for a clean stop)."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(
                    f"collector did not stop within {timeout}s of SIGTERM:\n{self.log_tail()}"
                ) from None
        return int(proc.returncode)

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is flushed or closed by the collector)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)

    def restart(self, *, kill: bool = False, timeout: float = 30.0) -> None:
        """Stop (SIGTERM, or SIGKILL with ``kill``) and start again on the same port."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start(timeout)

    def __enter__(self) -> CollectorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()


def main(argv: list[str] | None = None) -> int:
    """``python -m nodeguard.lab.collector_process health TARGET [--ca --cert --key]``:
    exit 0 when the collector at TARGET is SERVING, 1 otherwise (the probe that
    :meth:`CollectorProcess.serving` runs inside a collector's network namespace)."""
    parser = argparse.ArgumentParser(prog="python -m nodeguard.lab.collector_process")
    sub = parser.add_subparsers(dest="command", required=True)
    health = sub.add_parser("health", help="check the collector's gRPC health service")
    health.add_argument("target", help="host:port")
    health.add_argument("--ca", type=Path)
    health.add_argument("--cert", type=Path)
    health.add_argument("--key", type=Path)
    health.add_argument("--server-name")
    health.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    tls = None
    if args.ca is not None:
        if args.cert is None or args.key is None:
            parser.error("--ca needs --cert and --key")
        tls = ClientTLS(args.ca, args.cert, args.key, args.server_name)
    return 0 if check_health(args.target, tls, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
