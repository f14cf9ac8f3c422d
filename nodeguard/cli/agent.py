"""`nodeguard agent --config FILE`: the per-node agent (DaemonSet)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "agent",
        help="run the node agent: guard the pods that policies select (root)",
        description="Watch pods through CRI and the policy directory, and keep every selected "
        "pod under its AgentPolicy in the kernel. Enforcement is pinned: it continues while "
        "the agent restarts, and a restarted agent adopts it.",
    )
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="agent config YAML (default: built-in defaults)"
    )
    p.add_argument(
        "--teardown",
        action="store_true",
        help="remove nodeguard from this node: detach from every guarded pod, unpin, exit",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from nodeguard import log  # noqa: PLC0415
    from nodeguard.agent.config import load_agent_config  # noqa: PLC0415
    from nodeguard.agent.daemon import Agent, teardown  # noqa: PLC0415

    config = load_agent_config(args.config)
    log.configure(config.log_level)
    if args.teardown:
        return teardown(config)
    return Agent(config).run()
