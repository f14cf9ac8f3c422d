"""`nodeguard run --policy FILE [--mode M] [--events PATH|-] [--fail-on-violation]
[--collector HOST:PORT --collector-ca F --collector-cert F --collector-key F] -- CMD...`"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from pydantic_core import PydanticCustomError

from nodeguard.agent.config import parse_host_port
from nodeguard.delivery.publisher import PublisherTLS
from nodeguard.errors import CommandError, NodeguardError
from nodeguard.runner.session import CollectorOptions, RunOptions, run

DEFAULT_COLLECTOR_WAIT_S = 10.0
_TLS_FLAGS = ("--collector-ca", "--collector-cert", "--collector-key")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run a command under a policy, enforced in the kernel",
        description="Run CMD in a fresh cgroup under an AgentPolicy. Forbidden connects fail "
        "with EPERM, forbidden execs are killed before their first instruction. Exits with "
        "CMD's status, or 3 with --fail-on-violation when anything was violated.",
    )
    p.add_argument("--policy", required=True, type=Path, metavar="FILE", help="policy YAML")
    p.add_argument("--name", dest="policy_name", help="policy to use when FILE holds several")
    p.add_argument("--mode", choices=["enforce", "audit"], help="override the policy's mode")
    p.add_argument("--events", metavar="PATH|-", help="write violations as OCSF JSON lines here")
    p.add_argument(
        "--fail-on-violation", action="store_true", help="exit 3 when anything was violated"
    )
    p.add_argument(
        "--user",
        metavar="NAME|UID",
        help="run CMD as this user (default: the user who ran sudo, else the current user; "
        "'--user root' keeps root)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no per-violation lines on stderr")
    c = p.add_argument_group(
        "collector",
        "also publish the violations to a nodeguard collector (mutual TLS; the node is the "
        "one the client certificate names)",
    )
    c.add_argument("--collector", metavar="HOST:PORT", help="the collector's address")
    c.add_argument("--collector-ca", metavar="FILE", type=Path, help="CA of its certificate")
    c.add_argument("--collector-cert", metavar="FILE", type=Path, help="node certificate")
    c.add_argument("--collector-key", metavar="FILE", type=Path, help="node key")
    c.add_argument(
        "--collector-server-name",
        metavar="NAME",
        help="name to check the collector's certificate against (default: the host)",
    )
    c.add_argument(
        "--collector-wait",
        metavar="SECONDS",
        default=None,
        help=f"at exit, wait this long for the collector to acknowledge every record "
        f"(default {DEFAULT_COLLECTOR_WAIT_S:g}); the rest is left in a spool file",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(func=_run)


class CollectorFlagError(NodeguardError):
    """The --collector flags are incomplete or invalid."""


def collector_options(args: argparse.Namespace) -> CollectorOptions | None:
    """The ``--collector*`` flags, checked (before anything touches the kernel)."""
    files = {"--collector-ca": args.collector_ca, "--collector-cert": args.collector_cert,
             "--collector-key": args.collector_key}  # fmt: skip
    others = {**files, "--collector-server-name": args.collector_server_name,
              "--collector-wait": args.collector_wait}  # fmt: skip
    usage = (
        "nodeguard run --policy FILE --collector HOST:PORT --collector-ca CA.crt "
        "--collector-cert NODE.crt --collector-key NODE.key -- CMD"
    )
    if args.collector is None:
        given = [flag for flag, value in others.items() if value is not None]
        if given:
            raise CollectorFlagError(f"{given[0]} needs --collector HOST:PORT", fix=usage)
        return None
    try:
        address = parse_host_port(args.collector)
    except PydanticCustomError as err:
        raise CollectorFlagError(f"--collector {args.collector!r}: {err.message()}") from None
    missing = [flag for flag, value in files.items() if value is None]
    if missing:
        raise CollectorFlagError(
            f"--collector needs {', '.join(missing)}: the collector only takes mutual TLS",
            fix=usage + " (`nodeguard collector certs` makes them)",
        )
    for flag, path in files.items():
        if not path.is_file():
            raise CollectorFlagError(
                f"{flag} {path}: no such file", fix=f"give the path of the file for {flag}"
            )
    wait = DEFAULT_COLLECTOR_WAIT_S
    if args.collector_wait is not None:
        try:
            wait = float(args.collector_wait)
        except ValueError:
            wait = math.nan
        if not math.isfinite(wait) or wait < 0:
            raise CollectorFlagError(
                f"--collector-wait {args.collector_wait!r} is not a number of seconds >= 0",
                fix="e.g. --collector-wait 30 (0: do not wait)",
            )
    tls = PublisherTLS(
        ca=args.collector_ca,
        cert=args.collector_cert,
        key=args.collector_key,
        server_name=args.collector_server_name,
        names=_TLS_FLAGS,
    )
    return CollectorOptions(address=str(address), tls=tls, wait_s=wait)


def _run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CommandError("no command given", fix="nodeguard run --policy FILE -- CMD [ARG...]")
    collector = collector_options(args)
    return run(
        RunOptions(
            policy_file=args.policy,
            command=command,
            policy_name=args.policy_name,
            mode=args.mode,
            events=args.events,
            fail_on_violation=args.fail_on_violation,
            quiet=args.quiet,
            user=args.user,
            collector=collector,
        )
    )
