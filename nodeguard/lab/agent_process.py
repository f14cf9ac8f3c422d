"""The nodeguard agent as a real process for node tests, as the DaemonSet runs it.

``netns``: run the agent in a network namespace of the caller's own (a path such as
``/run/netns/NAME``; the child setns()es into it before exec), so it reaches the
collector only through that namespace's links. Its unix sockets (CRI, local API,
seccomp listener) work across network namespaces, so :meth:`AgentProcess.status` still
answers from here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nodeguard.agent.api import AgentAPIClient, AgentUnavailable
from nodeguard.agent.status import StatusSnapshot
from nodeguard.lab.containerd import ContainerdRuntime
from nodeguard.lab.netns import join_netns

REPO = Path(__file__).resolve().parents[2]


@dataclass
class AgentProcess:
    runtime: ContainerdRuntime
    workdir: Path
    pin_root: Path = field(
        default_factory=lambda: Path("/sys/fs/bpf") / f"nodeguard-node-{secrets.token_hex(3)}"
    )
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    overrides: dict[str, object] = field(default_factory=dict)
    netns: str | None = None

    @property
    def policy_dir(self) -> Path:
        return self.workdir / "policies"

    @property
    def seccomp_profile_dir(self) -> Path:
        return self.workdir / "seccomp"

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.yaml"

    def write_config(self) -> None:
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        self.runtime.agent_socket.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "criSocket": self.runtime.endpoint,
            "policyDir": str(self.policy_dir),
            "stateDir": str(self.workdir / "state"),
            "apiSocket": str(self.runtime.agent_socket),
            "seccompProfileDir": str(self.seccomp_profile_dir),
            "seccompListenerPath": str(self.runtime.agent_socket.with_name("seccomp.sock")),
            "metricsAddress": "",
            "pinDir": str(self.pin_root),
            "nodeName": "test-node",
            "resyncIntervalMs": 200,
            "logLevel": "info",
            **self.overrides,
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self, timeout: float = 60, *, require_ready: bool = True) -> None:
        self.write_config()
        self.starts += 1
        netns = self.netns
        with open(self.workdir / f"agent-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nodeguard", "agent", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                # only a setns() between fork and exec: glibc resets its locks in the child
                # and gRPC installs no fork handlers unless GRPC_ENABLE_FORK_SUPPORT is set
                preexec_fn=None if netns is None else (lambda: join_netns(netns)),  # noqa: PLW1509
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited: {self.log_tail()}")
            with contextlib.suppress(AgentUnavailable):
                state = self.status().agent.state
                if state == "ready" or (not require_ready and state != "starting"):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"agent not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / f"agent-{self.starts}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def status(self) -> StatusSnapshot:
        return AgentAPIClient(self.runtime.agent_socket, timeout_s=5).status()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.runtime.agent_socket)

    def teardown(self) -> None:
        self.kill(signal.SIGTERM)
        if self.config_path.exists():
            subprocess.run(
                [sys.executable, "-m", "nodeguard", "agent", "--config", str(self.config_path),
                 "--teardown"],
                cwd=REPO, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        shutil.rmtree(self.pin_root, ignore_errors=True)

    def wait_for(
        self, predicate: Callable[[StatusSnapshot], object], timeout: float = 10
    ) -> StatusSnapshot:
        deadline = time.monotonic() + timeout
        snap = self.status()
        while time.monotonic() < deadline:
            snap = self.status()
            if predicate(snap):
                return snap
            time.sleep(0.1)
        raise AssertionError(f"condition not met in {timeout}s; last status: {snap.to_json()}")
