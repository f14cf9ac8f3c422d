"""`nodeguard demo`: the embedded tour (root; creates and removes its own test hosts)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="run a hijacked demo agent under an example policy and show what is stopped",
    )
    p.set_defaults(func=_run)


def _run(_args: argparse.Namespace) -> int:
    from nodeguard.demo.tour import run_demo  # noqa: PLC0415

    return run_demo()
