"""What a guarded test command does: network and exec attempts, one JSON result per line.

Runs under the guard with the system python and the standard library only. Actions:
  tcp HOST PORT | udp-sendto HOST PORT | udp-connect HOST PORT | icmp HOST
  repeat N ACTION ARGS...   (bounded loop of the same attempt)
  exec PATH [ARGS...]       (run a program, report its exit status; must be last)
  spawn-grandchild PATH ARGS...  (sh -> sh -> PATH; must be last)
  join-subcgroup NAME       (make a sub-cgroup of its own cgroup and move into it)
  distinct-udp HOST FIRST_PORT N  (N sendto()s, each to another port: N aggregation keys)
--netns PATH joins that network namespace first (the client side of tests/netlab.py).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import subprocess
import sys

CLONE_NEWNET = 0x40000000


def setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def attempt(action: str, host: str, port: int) -> int:
    """0 on success, else the errno."""
    try:
        if action == "tcp":
            with socket.socket(_family(host), socket.SOCK_STREAM) as s:
                s.settimeout(3)
                s.connect((host, port))
        elif action == "udp-sendto":
            with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
                s.sendto(b"nodeguard-probe", (host, port))
        elif action == "udp-connect":
            with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
                s.connect((host, port))
                s.send(b"nodeguard-probe")
        else:
            raise SystemExit(f"unknown action {action}")
    except OSError as err:
        return err.errno or -1
    return 0


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--netns"]:
        setns(argv[1])
        argv = argv[2:]
    while argv:
        action = argv.pop(0)
        if action in ("tcp", "udp-sendto", "udp-connect"):
            host, port = argv.pop(0), int(argv.pop(0))
            err = attempt(action, host, port)
            report(
                action=action, host=host, port=port, errno=err, name=errno.errorcode.get(err, "OK")
            )
        elif action == "repeat":
            n, sub, host, port = int(argv.pop(0)), argv.pop(0), argv.pop(0), int(argv.pop(0))
            errs = [attempt(sub, host, port) for _ in range(n)]
            report(action="repeat", sub=sub, n=n, eperm=errs.count(errno.EPERM), ok=errs.count(0))
        elif action == "join-subcgroup":
            name = argv.pop(0)
            with open("/proc/self/cgroup") as f:
                rel = f.read().split("0::", 1)[1].split("\n", 1)[0]
            with open("/proc/self/mountinfo") as f:
                mount = next(
                    line.split()[4] for line in f if line.split(" - ")[1].startswith("cgroup2 ")
                )
            sub = os.path.join(mount + rel, name)
            os.mkdir(sub)
            with open(os.path.join(sub, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            report(action="join-subcgroup", cgroup=rel + "/" + name)
        elif action == "distinct-udp":
            host, first, n = argv.pop(0), int(argv.pop(0)), int(argv.pop(0))
            errs = [attempt("udp-sendto", host, first + i) for i in range(n)]
            report(action="distinct-udp", n=n, eperm=errs.count(errno.EPERM), ok=errs.count(0))
        elif action == "exec":
            r = subprocess.run(argv, check=False)
            report(action="exec", path=argv[0], status=r.returncode)
            return 0
        elif action == "spawn-grandchild":
            # python -> sh -> sh -> program: the "; exit $?" keeps each shell from exec'ing
            # its last command in place, so the program really is a grandchild's child.
            inner = " ".join(argv)
            r = subprocess.run(
                ["/bin/sh", "-c", f"/bin/sh -c '{inner}; exit $?'; exit $?"], check=False
            )
            report(action="spawn-grandchild", status=r.returncode)
            return 0
        else:
            raise SystemExit(f"unknown action {action}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
