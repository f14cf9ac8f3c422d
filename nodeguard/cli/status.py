"""``nodeguard status [--json] [--socket PATH]``: what the node agent is doing.

Asks the local agent over its UNIX socket (``GET /v1/status``) and prints the tables
(colours only on a terminal) or the snapshot JSON (docs/status.md). Exit 0; when the
agent cannot be reached, the reason and the fix on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

TIMEOUT_S = 10.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show what the node agent is doing (policies, guarded pods, counters)",
        description="Ask the nodeguard agent on this node for its status: health, kernel "
        "mechanisms, policies, guarded pods, counters, policy directory, collector link.",
    )
    parser.add_argument("--json", action="store_true", help="print the status JSON")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help="the agent's API socket (default: $NODEGUARD_API_SOCKET or /run/nodeguard/agent.sock)",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    # Imported here: every other subcommand builds this parser too.
    from nodeguard.agent.api import AgentAPIClient, default_socket_path  # noqa: PLC0415
    from nodeguard.agent.status import TEXT_WIDTH, render_status  # noqa: PLC0415

    socket_path = args.socket or default_socket_path()
    snapshot = AgentAPIClient(socket_path, timeout_s=TIMEOUT_S).status()
    if args.json:
        print(snapshot.to_json())
        return 0
    is_tty = sys.stdout.isatty()
    width = shutil.get_terminal_size((TEXT_WIDTH, 24)).columns if is_tty else TEXT_WIDTH
    sys.stdout.write(render_status(snapshot, width, color=is_tty))
    return 0
