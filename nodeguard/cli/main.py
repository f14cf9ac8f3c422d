"""`nodeguard` command line: a thin dispatcher over the subcommand modules.

Every subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed namespace, returning the exit code). NodeguardError becomes
one clear message on stderr and its exit code; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nodeguard import __version__, log
from nodeguard.errors import NodeguardError


def build_parser() -> argparse.ArgumentParser:
    from nodeguard.cli import (  # noqa: PLC0415 - keep start-up light
        agent,
        collector,
        demo,
        doctor,
        events,
        hook,
        policy,
        run,
        status,
    )

    parser = argparse.ArgumentParser(
        prog="nodeguard",
        description="Governance-as-code for AI agents, enforced in the kernel with eBPF.",
    )
    parser.add_argument("--version", action="version", version=f"nodeguard {__version__}")
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run.register(sub)
    policy.register(sub)
    doctor.register(sub)
    demo.register(sub)
    agent.register(sub)
    status.register(sub)
    hook.register(sub)
    collector.register(sub)
    events.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure(args.log_level)
    try:
        code: int = args.func(args)
    except NodeguardError as err:
        print(f"nodeguard: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
