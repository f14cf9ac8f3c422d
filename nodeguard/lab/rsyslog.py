"""A private rsyslogd for tests and demos: one imtcp module, two inputs on 127.0.0.1 (plain
TCP and TLS with the gtls driver), both accepting octet-counted framing, every message
written as one JSON object per line (its raw text and the fields rsyslog parsed).

The TLS input wants a client certificate signed by its CA (``x509/certvalid``); the CA,
the server certificate (127.0.0.1, localhost) and a client certificate are made with
:mod:`nodeguard.pki` in the instance's directory. Ports are picked by the kernel on the
first start and kept on a restart, so a sink configured with them reconnects.

    with Rsyslog(tmp_path / "rsyslog") as rs:
        rs.tcp_address  # "127.0.0.1:PORT"
        rs.wait_for_records(10)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from nodeguard import pki
from nodeguard.lab.process import stop_process

RSYSLOGD = "rsyslogd"
MAX_MESSAGE_SIZE = "256k"

# Each message as JSON: the fields RFC 5424 parsing gave, plus the raw message.
_TEMPLATE_FIELDS = (
    ("pri", "pri"),
    ("facility", "syslogfacility"),
    ("severity", "syslogseverity"),
    ("hostname", "hostname"),
    ("app_name", "app-name"),
    ("procid", "procid"),
    ("msgid", "msgid"),
    ("structured_data", "structured-data"),
    ("msg", "msg"),
    ("raw", "rawmsg"),
    ("input", "inputname"),
)


def available() -> bool:
    return shutil.which(RSYSLOGD) is not None


def _q(value: object) -> str:
    """A RainerScript string constant."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _listening_ports() -> set[int]:
    """TCP ports something listens on at 127.0.0.1 (from /proc/net/tcp)."""
    ports = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, _, port = local.partition(":")
            if state == "0A" and address == "0100007F":
                ports.add(int(port, 16))
    return ports


class Rsyslog:
    def __init__(self, directory: Path, *, require_client_cert: bool = True) -> None:
        self.directory = directory
        self.require_client_cert = require_client_cert
        self.output = directory / "messages.jsonl"
        self.tcp_port = 0
        self.tls_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "work").mkdir(exist_ok=True)
        ca = pki.make_ca(directory / "pki", "nodeguard rsyslog test CA")
        self.ca = ca.cert_path
        self.server = pki.issue_server(ca, directory / "pki", ["127.0.0.1", "localhost"])
        self.client = pki.issue_client(ca, directory / "pki", "nodeguard-collector")

    # ----------------------------------------------------------------- addresses --

    @property
    def tcp_address(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    @property
    def tls_address(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ----------------------------------------------------------------- lifecycle --

    def config_text(self) -> str:
        d = self.directory
        fields = "\n".join(
            f'  property(outname={_q(out)} name={_q(name)} format="jsonf")'
            for out, name in _TEMPLATE_FIELDS
        )
        auth = "x509/certvalid" if self.require_client_cert else "anon"
        return f"""# written by nodeguard.lab.rsyslog
global(
  workDirectory={_q(d / "work")}
  maxMessageSize={_q(MAX_MESSAGE_SIZE)}
  parser.escapeControlCharactersOnReceive="off"
)
module(load="imtcp" maxSessions="200")
template(name="nodeguard_json" type="list" option.jsonf="on") {{
{fields}
}}
ruleset(name="nodeguard_out") {{
  action(type="omfile" file={_q(self.output)} template="nodeguard_json")
}}
input(type="imtcp" name="tcp" address="127.0.0.1" port={_q(self.tcp_port)}
  listenPortFileName={_q(d / "tcp.port")} ruleset="nodeguard_out")
input(type="imtcp" name="tls" address="127.0.0.1" port={_q(self.tls_port)}
  listenPortFileName={_q(d / "tls.port")} ruleset="nodeguard_out"
  streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode={_q(auth)}
  streamDriver.CAFile={_q(self.ca)} streamDriver.CertFile={_q(self.server.cert)}
  streamDriver.KeyFile={_q(self.server.key)})
"""

    def start(self, timeout_s: float = 15.0) -> None:
        """Start rsyslogd (on the ports of the previous start, if any) and wait until
        both inputs listen."""
        if self.running:
            raise RuntimeError("rsyslogd is already running")
        d = self.directory
        conf = d / "rsyslog.conf"
        conf.write_text(self.config_text())
        for name in ("tcp.port", "tls.port", "rsyslogd.pid"):
            with contextlib.suppress(FileNotFoundError):
                (d / name).unlink()
        log = (d / "rsyslogd.log").open("ab")
        try:
            self._proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(conf), "-i", str(d / "rsyslogd.pid")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"rsyslogd exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            tcp, tls = self._read_port("tcp.port"), self._read_port("tls.port")
            if self.tcp_port and self.tls_port:  # a restart: rsyslogd writes no port files
                listening = _listening_ports()
                tcp = self.tcp_port if self.tcp_port in listening else 0
                tls = self.tls_port if self.tls_port in listening else 0
            if tcp and tls:
                self.tcp_port, self.tls_port = tcp, tls
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"rsyslogd did not listen within {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """A clean stop (SIGTERM): rsyslogd closes its connections and flushes its output."""
        self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """A crash (SIGKILL)."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, sig, timeout_s)

    def __enter__(self) -> Rsyslog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is not None:
            self.kill()
        else:
            self.stop()

    # ------------------------------------------------------------------- output --

    def records(self) -> list[dict[str, Any]]:
        """Every message written so far (a partly written last line is left out)."""
        try:
            text = self.output.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines(keepends=True):
            if line.endswith("\n"):
                out.append(json.loads(line))
        return out

    def wait_for_records(self, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """At least ``count`` messages (all of them), polling up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.records()
            if len(records) >= count or time.monotonic() > deadline:
                if len(records) < count:
                    raise AssertionError(
                        f"rsyslogd wrote {len(records)} of {count} messages in {timeout_s}s:\n"
                        f"{self.log_tail()}"
                    )
                return records
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.directory / "rsyslogd.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _read_port(self, name: str) -> int:
        try:
            text = (self.directory / name).read_text().strip()
        except FileNotFoundError:
            return 0
        return int(text) if text.isdigit() else 0
