"""Test hosts in network namespaces of our own, linked by veth to a client namespace.

Used by `nodeguard demo`, the tests and the benchmarks.

Every address used here belongs to a namespace this module created (198.18.0.0/15 is the
benchmarking range, fd00:6e67::/32 a ULA prefix); nothing leaves the machine. The guarded
command joins the client namespace itself (setns, see join_netns), so the host's own network
and routes are never touched. Everything is deleted on close(), also after a failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVER = Path(__file__).with_name("host_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str
    netns: str
    ip4: str
    ip6: str
    log: Path
    server: subprocess.Popen[bytes] | None = None

    def received(self) -> list[dict[str, object]]:
        """What the host's server saw: one dict per TCP accept or UDP datagram."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


@dataclass
class NetLab:
    workdir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def client_netns(self) -> str:
        return f"ngc-{self.tag}"

    @property
    def client_netns_path(self) -> str:
        return f"/run/netns/{self.client_netns}"

    def start(self) -> NetLab:
        _ip("netns", "add", self.client_netns)
        _ip("-n", self.client_netns, "link", "set", "lo", "up")
        return self

    def add_host(self, name: str, tcp_ports: list[int], udp_ports: list[int]) -> Host:
        index = len(self.hosts) + 1
        netns = f"ngh{index}-{self.tag}"
        _ip("netns", "add", netns)
        _ip("-n", netns, "link", "set", "lo", "up")
        a, b = f"ngv{index}a{self.tag}", f"ngv{index}b{self.tag}"
        _ip("link", "add", a, "netns", self.client_netns, "type", "veth", "peer", b, "netns", netns)
        ip4c, ip4h = f"198.18.{index}.1", f"198.18.{index}.2"
        ip6c, ip6h = f"fd00:6e67:{index}::1", f"fd00:6e67:{index}::2"
        for ns, dev, v4, v6 in ((self.client_netns, a, ip4c, ip6c), (netns, b, ip4h, ip6h)):
            _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            _ip("-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        host = Host(name=name, netns=netns, ip4=ip4h, ip6=ip6h, log=self.workdir / f"{name}.log")
        ports = ",".join(map(str, tcp_ports))
        uports = ",".join(map(str, udp_ports))
        ready = self.workdir / f"{name}.ready"
        host.server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                SYSTEM_PYTHON,
                str(SERVER),
                "--tcp",
                ports,
                "--udp",
                uports,
                "--log",
                str(host.log),
                "--ready",
                str(ready),
            ],
        )
        deadline = time.monotonic() + 10
        while not ready.exists():
            if host.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"test host {name} did not start")
            time.sleep(0.02)
        self.hosts[name] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            if host.server is not None:
                host.server.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.server.wait(5)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.netns)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", self.client_netns)


CLONE_NEWNET = 0x40000000


def join_netns(path: str) -> None:
    """Move the calling process into a network namespace (what `nsenter --net` does)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)
