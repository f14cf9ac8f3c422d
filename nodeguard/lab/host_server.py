"""Test host server (runs inside its own netns): accepts TCP and UDP, logs what arrives.

Standard library only; started by tests/netlab.py with the system python.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", default="")
    ap.add_argument("--udp", default="")
    ap.add_argument("--log", required=True)
    ap.add_argument("--ready", required=True)
    args = ap.parse_args()
    sel = selectors.DefaultSelector()
    for port in filter(None, args.tcp.split(",")):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", int(port)))
        s.listen(1024)
        sel.register(s, selectors.EVENT_READ, ("tcp", int(port)))
    for port in filter(None, args.udp.split(",")):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", int(port)))
        sel.register(s, selectors.EVENT_READ, ("udp", int(port)))
    log = open(args.log, "a", buffering=1)  # noqa: SIM115
    Path(args.ready).write_text("ok")
    while True:
        for key, _ in sel.select():
            kind, port = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if kind == "tcp":
                conn, peer = sock.accept()
                conn.close()
            else:
                _, peer = sock.recvfrom(65535)
            log.write(json.dumps({"proto": kind, "port": port, "peer": peer[0]}) + "\n")


if __name__ == "__main__":
    main()
