"""``nodeguard collector --config FILE``: the central collector (gRPC over mutual TLS,
durable store, SIEM sinks); ``nodeguard collector certs``: a CA, a server certificate and
node certificates for it (docs/collector.md)."""

from __future__ import annotations

import argparse
import ipaddress
import re
from pathlib import Path
from typing import Any

from nodeguard.errors import NodeguardError

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NODE_RE = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_HOST_RE = re.compile(
    r"(\*\.)?[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*"
)


class CollectorUsageError(NodeguardError):
    """A ``nodeguard collector`` argument is invalid."""

    exit_code = 1


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "collector",
        help="run the central collector that receives violations from the nodes",
        description="Receive violation streams from node agents and `nodeguard run` over "
        "mutual TLS, store every batch durably before acknowledging it, and forward events "
        "to the configured SIEM sinks. `nodeguard collector certs` makes test certificates.",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="collector config YAML")
    p.set_defaults(func=_run, parser=p)
    commands = p.add_subparsers(dest="collector_command", metavar="COMMAND")
    certs = commands.add_parser(
        "certs",
        help="make a CA, a server certificate and node (client) certificates",
        description="Write a private CA (ca.crt, ca.key; reused when DIR already has one), a "
        "server certificate for the collector's host names and addresses (server.crt, "
        "server.key) and one client certificate per node (node-NAME.crt, node-NAME.key, "
        "naming the node in the CN and a nodeguard-node:NAME URI SAN). Keys are written 0600.",
    )
    certs.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        required=True,
        help="a DNS name or IP address producers use to reach the collector (repeatable)",
    )
    certs.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME",
        help="a node to issue a client certificate for (repeatable)",
    )
    certs.add_argument(
        "--days", type=int, default=365, metavar="N", help="validity in days (default 365)"
    )
    certs.set_defaults(func=_certs)


def _run(args: argparse.Namespace) -> int:
    from nodeguard import log  # noqa: PLC0415
    from nodeguard.collector.config import load_collector_config  # noqa: PLC0415
    from nodeguard.collector.server import serve  # noqa: PLC0415

    if args.config is None:
        args.parser.error("--config FILE is required (examples/collector.yaml has every key)")
    config = load_collector_config(args.config)
    log.configure(config.log_level)
    return serve(config)


def _check_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not _HOST_RE.fullmatch(host):
        raise CollectorUsageError(
            f"--host {host!r} is neither an IP address nor a DNS name",
            fix="give the name or address producers dial, e.g. --host collector.example.com "
            "--host 10.0.0.5",
        )
    return host


def _check_node(node: str) -> str:
    if len(node) > 253 or not _NODE_RE.fullmatch(node):
        raise CollectorUsageError(
            f"--node {node!r} is not a valid node name",
            fix="use the Kubernetes node name: lower-case letters, digits, '-' and '.'",
        )
    return node


def _certs(args: argparse.Namespace) -> int:
    from nodeguard import pki  # noqa: PLC0415

    hosts = [_check_host(h) for h in args.host]
    nodes = [_check_node(n) for n in args.node]
    if len(set(nodes)) != len(nodes):
        raise CollectorUsageError("a --node is given twice", fix="list each node once")
    if not 1 <= args.days <= 36500:
        raise CollectorUsageError(f"--days {args.days} is out of range", fix="use 1-36500")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        if (out / "ca.crt").exists() and (out / "ca.key").exists():
            ca = pki.load_ca(out)
            print(f"reused  {out / 'ca.crt'} (existing CA)")
        else:
            ca = pki.make_ca(out, "nodeguard collector CA", days=args.days)
            print(f"wrote   {ca.cert_path}  (CA certificate: the collector's tls.clientCA)")
            print(f"wrote   {out / 'ca.key'}  (CA key: keep it private)")
        server = pki.issue_server(ca, out, hosts, days=args.days)
        print(f"wrote   {server.cert}  (server certificate for {', '.join(hosts)}: tls.cert)")
        print(f"wrote   {server.key}  (server key: tls.key)")
        for node in nodes:
            files = pki.issue_node(ca, out, node, days=args.days)
            print(f"wrote   {files.cert}  (client certificate of node {node})")
            print(f"wrote   {files.key}  (its key)")
    except (OSError, ValueError) as err:
        raise CollectorUsageError(
            f"cannot write certificates to {out}: {err}",
            fix="pick a writable --out directory (an existing one needs a readable ca.crt "
            "and ca.key)",
        ) from err
    return 0
