"""`nodeguard doctor [--json]`: what this kernel and host can enforce, and how to fix gaps.

Exit status: 0 when every required feature is ok, 1 otherwise. Runs as non-root too: the
probes that need bpf() are then reported as "not checked" with the fix "run as root".
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from nodeguard.bpf.probe import Feature, Mechanism, Report, run_probes

TEXT_WIDTH = 110

_STATUS_STYLE = {
    "ok": "green",
    "warning": "yellow",
    "missing": "bold red",
    "unavailable": "dim",
    "not checked": "yellow",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="report the kernel features nodeguard needs and the mechanisms it will use",
        description="Probe the kernel (loading, never attaching, BPF programs) and report "
        "which features nodeguard needs are present. Exit 0 when all required ones are.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    report = run_probes()
    if args.json:
        print(render_json(report))
    else:
        render_text(report, sys.stdout)
    return exit_code(report)


def exit_code(report: Report) -> int:
    return 0 if report.ok else 1


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)


def _status_cell(feature: Feature) -> Text:
    status = feature.status
    label = status.upper() if status in ("missing", "warning") else status
    return Text(label, style=_STATUS_STYLE.get(status, ""))


def _detail_cell(feature: Feature) -> Text:
    text = Text(feature.detail)
    if feature.fix and (not feature.ok or feature.warning):
        text.append(f"\nfix: {feature.fix}", style="cyan")
    return text


def build_table(report: Report) -> Table:
    table = Table(
        title=f"nodeguard doctor: kernel {report.kernel}",
        box=box.SIMPLE_HEAD,
        show_lines=False,
        title_justify="left",
    )
    table.add_column("feature", no_wrap=True)
    table.add_column("needed", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail / fix", overflow="fold")
    for feature in report.features:
        table.add_row(
            feature.name,
            "required" if feature.required else "optional",
            _status_cell(feature),
            _detail_cell(feature),
        )
    return table


def render_text(report: Report, out: IO[str], *, width: int | None = None) -> None:
    """Readable table; colours only when ``out`` is a terminal."""
    is_tty = out.isatty()
    if width is None:
        width = shutil.get_terminal_size((TEXT_WIDTH, 24)).columns if is_tty else TEXT_WIDTH
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        force_terminal=is_tty,
        no_color=not is_tty,
        color_system="auto" if is_tty else None,
        width=width,
        highlight=False,
    )
    console.print(build_table(report))
    console.print("mechanisms:")
    for mech in report.mechanisms:
        console.print(f"  {mech.feature}: {_mechanism_text(report, mech)}")
        for alt in mech.alternatives:
            state = "available" if alt.available else "unavailable here"
            if not alt.checked:
                state = "not checked"
            console.print(f"    alternative: {alt.name}: {state}")
    missing = [f.name for f in report.features if f.required and f.checked and not f.ok]
    unchecked = [f.name for f in report.features if f.required and not f.checked]
    if not missing and not unchecked:
        console.print("READY: every required feature is present")
    else:
        parts = []
        if missing:
            parts.append(f"missing: {', '.join(missing)}")
        if unchecked:
            parts.append(f"{len(unchecked)} required features not checked (run as root)")
        console.print(f"NOT READY: {'; '.join(parts)}")
    out.write("\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n")


def _mechanism_text(report: Report, mech: Mechanism) -> str:
    if mech.chosen is not None:
        return mech.chosen
    needed = [_feature(report, n) for n in mech.needs]
    missing = [n for n, f in zip(mech.needs, needed, strict=True) if f is None or not f.ok]
    if any(f is not None and not f.checked for f in needed):
        return "unknown (its features were not checked: run as root)"
    return f"NONE (missing: {', '.join(missing)})"


def _feature(report: Report, name: str) -> Feature | None:
    try:
        return report.get(name)
    except KeyError:
        return None
