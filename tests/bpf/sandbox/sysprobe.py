"""Guarded-command side of tests/bpf/test_sandbox.py (standard library only; runs under
the system python as the guarded command, or directly as the unguarded control).

usage: sysprobe.py ACTION [ARG...]; prints one JSON line per step, flushed, so a killed
process leaves the steps it finished.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def out(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def call(name: str, nr: int, *args: int) -> None:
    out(step="calling", name=name)
    rc = int(libc.syscall(nr, *args))
    out(step="returned", name=name, rc=rc, errno=ctypes.get_errno() if rc < 0 else 0)


def sockets() -> None:
    kinds = {
        "tcp": (socket.AF_INET, socket.SOCK_STREAM, 0),
        "udp": (socket.AF_INET, socket.SOCK_DGRAM, 0),
        "tcp6": (socket.AF_INET6, socket.SOCK_STREAM, 0),
        "raw4": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        "raw6": (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
        "packet": (socket.AF_PACKET, socket.SOCK_RAW, 0),
        "netlink_route": (socket.AF_NETLINK, socket.SOCK_RAW, 0),
        "netlink_audit": (socket.AF_NETLINK, socket.SOCK_RAW, 9),
        # the kernel turns this into a packet socket (legacy SOCK_PACKET, ETH_P_ALL)
        "inet_sock_packet": (socket.AF_INET, 10, 0x0300),
    }
    for name in sys.argv[2:]:
        fam, typ, proto = kinds[name]
        try:
            s = socket.socket(fam, typ, proto)
        except OSError as e:
            out(socket=name, errno=e.errno)
            continue
        if name == "tcp":  # it really works: connect to a loopback listener
            srv = socket.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            s.connect(srv.getsockname())
            srv.close()
        s.close()
        out(socket=name, errno=0)


def main() -> None:
    action = sys.argv[1]
    if action == "syscall":  # syscall NAME NR [ARG...]
        name, nr = sys.argv[2], int(sys.argv[3])
        call(name, nr, *[int(a) for a in sys.argv[4:]])
    elif action == "ptrace-sibling":  # PTRACE_ATTACH then DETACH a child of ours
        nr = int(sys.argv[2])
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        try:
            call("ptrace", nr, 16, pid, 0, 0)  # PTRACE_ATTACH
            os.waitpid(pid, 0)
            libc.syscall(nr, 17, pid, 0, 0)  # PTRACE_DETACH
        finally:
            os.kill(pid, 9)
    elif action == "sockets":
        sockets()
    elif action == "spawn":  # spawn N children that each sleep, then wait for them
        pids = []
        for _ in range(int(sys.argv[2])):
            pid = os.fork()
            if pid == 0:
                time.sleep(0.2)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        out(spawned=len(pids))
    else:
        raise SystemExit(f"unknown action {action}")


main()
