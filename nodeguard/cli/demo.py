"""`nodeguard demo`: the embedded tour (root; creates and removes everything it uses)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="see nodeguard stop a hijacked agent: the node agent guarding real pods",
        description="Starts a private containerd, the node agent and an example policy, runs "
        "a guarded and an unguarded pod through the same attempts, and shows `nodeguard "
        "status` and the violation records. --local shows `nodeguard run` instead.",
    )
    p.add_argument(
        "--local", action="store_true", help="the `nodeguard run` tour (no container runtime)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.local:
        from nodeguard.demo.tour import run_demo  # noqa: PLC0415

        return run_demo()
    from nodeguard.demo.agent_tour import run_agent_tour  # noqa: PLC0415

    return run_agent_tour()
