"""``nodeguard hook``: OCI createRuntime hook asking the local agent to admit a container.

Configured in containerd's base runtime spec (docs/runtime-hook.md). Exit 0 lets the
container start, 1 refuses it with one line on stderr; 2 only for a usage error. Never a
traceback. ``python -m nodeguard.cli.hook`` runs the same without loading the other
subcommands (faster start-up on the container start path).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nodeguard.agent import hook


def _namespaces(text: str) -> frozenset[str]:
    try:
        return hook.parse_namespace_list(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _timeout_ms(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 1 <= value <= 600_000:
        raise argparse.ArgumentTypeError("the timeout must be between 1 and 600000 ms")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=hook.default_socket(),
        help=f"the agent's API socket (default: ${hook.SOCKET_ENV} or {hook.DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--fail-closed-namespaces",
        metavar="NS[,NS...]|*",
        type=_namespaces,
        default=frozenset(),
        help="refuse containers of these namespaces while the agent cannot answer; '*' for "
        "every namespace but the exempt ones (default: none besides the namespaces file)",
    )
    parser.add_argument(
        "--exempt-namespaces",
        metavar="NS[,NS...]",
        type=_namespaces,
        default=hook.DEFAULT_EXEMPT,
        help="never refused by '*' or the namespaces file's '*' (default: "
        f"{','.join(sorted(hook.DEFAULT_EXEMPT))}, so the agent itself can always start)",
    )
    parser.add_argument(
        "--fail-closed-file",
        metavar="PATH",
        default=hook.DEFAULT_FAIL_CLOSED_FILE,
        help="namespaces file the agent writes (the namespaces its policies select); read "
        "only when the agent cannot answer; '' to ignore (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout-ms",
        metavar="N",
        type=_timeout_ms,
        default=hook.DEFAULT_TIMEOUT_MS,
        help="how long to wait for the agent's answer (default: %(default)s)",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "hook",
        help="OCI createRuntime hook: have the agent enforce a pod before its container starts",
        description="Run by containerd/runc as an OCI createRuntime hook, with the OCI state "
        "JSON on stdin. Asks the local nodeguard agent to put the container's pod under its "
        "policy; exit 0 lets the container start, non-zero refuses it.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_main)


def config_from_args(args: argparse.Namespace) -> hook.HookConfig:
    return hook.HookConfig(
        socket_path=Path(args.socket),
        fail_closed_namespaces=args.fail_closed_namespaces,
        exempt_namespaces=args.exempt_namespaces,
        fail_closed_file=Path(args.fail_closed_file) if args.fail_closed_file else None,
        timeout_s=args.timeout_ms / 1000,
    )


def _main(args: argparse.Namespace) -> int:
    return hook.main_stdio(config_from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m nodeguard.cli.hook``."""
    parser = argparse.ArgumentParser(prog="nodeguard hook")
    add_arguments(parser)
    return _main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
