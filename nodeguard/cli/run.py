"""`nodeguard run --policy FILE [--mode M] [--events PATH|-] [--fail-on-violation] -- CMD...`"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nodeguard.errors import CommandError
from nodeguard.runner.session import RunOptions, run


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
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CommandError("no command given", fix="nodeguard run --policy FILE -- CMD [ARG...]")
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
        )
    )
