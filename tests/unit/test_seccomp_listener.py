"""The agent's seccomp listener socket (runc's ContainerProcessState + SCM_RIGHTS) and the
notify server serving several listeners (a real seccomp filter in a forked child: no
root needed, only no_new_privs)."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from nodeguard.agent.seccomp_listener import (
    ProcessState,
    SeccompListenerServer,
    parse_process_state,
)
from nodeguard.bpf import abi
from nodeguard.policy.compile import compile_policy
from nodeguard.policy.compiled import CompiledPolicy, CompiledSockets
from nodeguard.policy.loader import load_policy_text
from nodeguard.policy.syscalls import host_arch
from nodeguard.seccomp.filter import assemble, plan
from nodeguard.seccomp.install import install, user_notif_available
from nodeguard.seccomp.notify import Listener, NotifyServer

STATE = {
    "ociVersion": "1.0.2-dev",
    "fds": ["seccompFd"],
    "pid": 4242,
    "metadata": "nodeguard-policy=sandboxed",
    "state": {
        "ociVersion": "1.0.2-dev",
        "id": "c0ffee",
        "status": "creating",
        "pid": 4242,
        "bundle": "/run/b",
        "annotations": {"io.kubernetes.cri.sandbox-uid": "uid-1", "n": 3},
    },
}


def test_parse_runc_state() -> None:
    st = parse_process_state(json.dumps(STATE).encode())
    assert st == ProcessState(
        container_id="c0ffee",
        pid=4242,
        annotations={"io.kubernetes.cri.sandbox-uid": "uid-1"},
        metadata="nodeguard-policy=sandboxed",
        fd_index=0,
    )


@pytest.mark.parametrize("data", [b"nope", b"[]", json.dumps({**STATE, "fds": ["other"]}).encode()])
def test_parse_rejects(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_process_state(data)


def test_listener_receives_the_fd(tmp_path: Path) -> None:
    got: list[tuple[int, ProcessState]] = []
    done = threading.Event()

    def on_fd(fd: int, st: ProcessState) -> None:
        got.append((fd, st))
        done.set()

    path = tmp_path / "seccomp.sock"
    server = SeccompListenerServer(path, on_fd)
    server.start()
    r, w = os.pipe()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(path))
            socket.send_fds(c, [json.dumps(STATE).encode()], [r])
        assert done.wait(5)
        fd, st = got[0]
        os.write(w, b"x")
        assert os.read(fd, 1) == b"x"  # the same pipe, passed through SCM_RIGHTS
        os.close(fd)
        assert st.container_id == "c0ffee" and server.received == 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:  # garbage is dropped
            c.connect(str(path))
            c.sendall(b"garbage")
        deadline = time.monotonic() + 5
        while server.rejected == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.rejected == 1
    finally:
        server.stop()
        os.close(r)
        os.close(w)
    assert not path.exists()


def _policy() -> CompiledPolicy:
    text = (
        "apiVersion: nodeguard.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p}\n"
        "spec:\n  sockets: {deny: [packet, 'netlink:audit']}\n"
    )
    return compile_policy(load_policy_text(text)[0])


def _child_with_filter(program: bytes) -> tuple[int, int, socket.socket]:
    """Fork a child that installs the filter, sends us its listener fd, waits for a byte,
    tries socket(AF_PACKET) and exits with the errno it got."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 100
        try:
            parent.close()
            fd = install(program, listener=True)
            assert fd is not None
            socket.send_fds(child, [b"fd"], [fd])
            os.close(fd)
            child.recv(1)
            try:
                socket.socket(17, socket.SOCK_DGRAM, 0).close()
                code = 0
            except OSError as err:
                code = err.errno or 101
        finally:
            os._exit(code)
    child.close()
    _msg, fds, _f, _a = socket.recv_fds(parent, 16, 1)
    return pid, fds[0], parent


@pytest.mark.skipif(not user_notif_available(), reason="kernel without seccomp user notification")
def test_notify_server_serves_several_listeners_and_closes_ended_ones() -> None:
    compiled = _policy()
    p = plan(compiled)
    assert p is not None
    program = assemble(p, host_arch())
    records: list[bytes] = []
    server = NotifyServer(emit=records.append)
    server.start()
    children = []
    try:
        for policy_id in (7, 8):
            pid, fd, ctl = _child_with_filter(program)

            def policy_of(
                pid_: int = policy_id, sockets: CompiledSockets | None = compiled.sockets
            ) -> tuple[int, CompiledSockets | None]:
                return pid_, sockets

            def cgroup_of(_tid: int, c: int = policy_id) -> int:
                return 1000 + c

            server.add(Listener(fd, policy_of, cgroup_of))
            children.append((pid, ctl))
        for pid, ctl in children:
            ctl.send(b"go")
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == errno.EPERM
            ctl.close()
        deadline = time.monotonic() + 5
        while server.closed < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.closed == 2 and server.listeners() == []
        assert server.answered == 2
        events = [abi.SocketEvent.from_buffer_copy(r) for r in records]
        assert sorted((e.hdr.policy_id, e.hdr.cgroup_id, e.family) for e in events) == [
            (7, 1007, 17),
            (8, 1008, 17),
        ]
        assert all(e.hook == abi.SockHook.SECCOMP_NOTIFY for e in events)
        assert sorted(k.policy_id for k, _v in server.aggregates()) == [7, 8]
        server.forget_cgroups({1007})
        assert [k.policy_id for k, _v in server.aggregates()] == [8]
    finally:
        server.stop()
