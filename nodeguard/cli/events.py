"""``nodeguard events``: read the collector's event store (on the collector's host).

Shows the newest violations matching the filters in time order, as a table or as OCSF
JSON lines (``--json``); ``--follow`` keeps printing new ones until SIGINT/SIGTERM;
``--losses`` lists the producers' loss records instead. The store is opened read-only:
this command never changes it. Exit 0; 1 when the store cannot be read; 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from nodeguard.collector.records import DEFAULT_STORE_PATH
from nodeguard.durations import duration_seconds
from nodeguard.errors import NodeguardError

if TYPE_CHECKING:
    from rich.console import JustifyMethod
    from rich.table import Table

    from nodeguard.collector.records import EventQuery, StoredEvent, StoredLoss
    from nodeguard.collector.store import EventStore
    from nodeguard.events.model import Violation

DEFAULT_LIMIT = 100
FOLLOW_INTERVAL_S = 0.5
FOLLOW_BATCH = 1000
TEXT_WIDTH = 100
KINDS = ("egress", "exec", "syscall", "socket", "limit")

_TIME_USAGE = (
    "write a duration back from now (30s, 15m, 2h, 7d, 1h30m) or an ISO 8601 time "
    "(2024-05-01T10:00:00Z; without a zone it is local time)"
)


class EventsCommandError(NodeguardError):
    """``nodeguard events`` cannot find or read what it was pointed at."""

    exit_code = 1


# ------------------------------------------------------------------------ parser --


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "events",
        help="show violations from the collector's store (run on the collector)",
        description="Show the violations the collector stored, newest last: the newest "
        "--limit events matching every filter, in time order. Reads the store directly "
        "(e.g. `kubectl exec deploy/nodeguard-collector -- nodeguard events --since 1h`).",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--config",
        type=Path,
        metavar="COLLECTOR_YAML",
        help="the collector's config file (its store.path is read)",
    )
    source.add_argument(
        "--store",
        type=Path,
        metavar="DB_PATH",
        help=f"the store's database file (default: {DEFAULT_STORE_PATH})",
    )
    parser.add_argument(
        "--since",
        type=parse_time,
        metavar="DUR_OR_TIME",
        help="only violations at or after: a duration back from now (30s, 15m, 2h, 7d) or "
        "an ISO 8601 time",
    )
    parser.add_argument(
        "--until", type=parse_time, metavar="DUR_OR_TIME", help="only violations at or before"
    )
    parser.add_argument("--node", metavar="N", help="only this node's violations")
    parser.add_argument("--namespace", metavar="NS", help="only pods in this namespace")
    parser.add_argument("--pod", metavar="P", help="only this pod (name)")
    parser.add_argument("--policy", metavar="NAME", help="only violations of this policy")
    parser.add_argument("--kind", choices=KINDS, help="only violations of this kind")
    parser.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show the newest N (default {DEFAULT_LIMIT}; 0: all)",
    )
    parser.add_argument(
        "--json", action="store_true", help="one OCSF JSON object per line (loss records: JSON)"
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="keep printing new violations until interrupted (SIGINT/SIGTERM)",
    )
    parser.add_argument(
        "--losses",
        action="store_true",
        help="list the loss records producers sent (what was lost, where, why) instead",
    )
    parser.set_defaults(func=_main, parser=parser)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count; write 0 (all) or more")
    return value


def parse_time(text: str, *, now: datetime | None = None) -> int:
    """``--since``/``--until``: a duration back from ``now`` (``30s``, ``15m``, ``2h``,
    ``7d``, ``1h30m``) or an ISO 8601 time (local time without a zone) -> unix ms."""
    value = text.strip()
    seconds = duration_seconds(value)
    if seconds is not None:
        reference = now or datetime.now(UTC)
        return int(reference.timestamp() * 1000) - seconds * 1000
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time; {_TIME_USAGE}") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return int(moment.timestamp() * 1000)


# ------------------------------------------------------------------------ source --


def store_path(config: Path | None, store: Path | None) -> Path:
    """The database to read: ``--store``, else ``store.path`` of ``--config``, else the
    collector's default."""
    if store is not None:
        return store
    if config is None:
        return DEFAULT_STORE_PATH
    import yaml  # noqa: PLC0415 - only for --config

    try:
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
    except OSError as err:
        raise EventsCommandError(
            f"cannot read the collector config {config}: {err.strerror or err}",
            fix="give the collector's config file, or the database with --store",
        ) from err
    except yaml.YAMLError as err:
        raise EventsCommandError(
            f"the collector config {config} is not valid YAML: {err}",
            fix="fix the file (`nodeguard collector --config` reports every problem)",
        ) from err
    section = document.get("store") if isinstance(document, dict) else None
    if section is None:
        return DEFAULT_STORE_PATH
    path = section.get("path") if isinstance(section, dict) else None
    if path is None:
        return DEFAULT_STORE_PATH
    if not isinstance(path, str) or not path:
        raise EventsCommandError(
            f"{config}: store.path is {path!r}, not a file path",
            fix="write the absolute path of the store's database, or use --store",
        )
    return Path(path)


def _open(path: Path) -> EventStore:
    from nodeguard.collector.store import EventStore  # noqa: PLC0415

    if not path.exists():
        raise EventsCommandError(
            f"no event store at {path}",
            fix="run this on the collector's host (kubectl exec deploy/nodeguard-collector "
            "-- nodeguard events), or point --store/--config at the store",
        )
    return EventStore(path, read_only=True)


def _query(
    args: argparse.Namespace, *, limit: int | None, after_rowid: int = 0, newest_first: bool
) -> EventQuery:
    from nodeguard.collector.records import EventQuery  # noqa: PLC0415

    return EventQuery(
        since_ms=args.since,
        until_ms=args.until,
        node=args.node,
        namespace=args.namespace,
        pod=args.pod,
        policy=args.policy,
        kind=args.kind,
        after_rowid=after_rowid,
        limit=limit,
        newest_first=newest_first,
    )


# ------------------------------------------------------------------------ output --


def format_time(ms: int) -> str:
    """``2023-11-14T22:13:20.123Z``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def what(v: Violation) -> str:
    """What was attempted: ``10.20.1.5:443/tcp``, an exec path, a syscall name, a socket
    kind (``packet:raw``), a broken budget (``forksPerSecond 20/s (burst 40)``)."""
    from nodeguard.events import ocsf  # noqa: PLC0415

    if v.egress is not None:
        e = v.egress
        if ocsf.has_ports(e.protocol):
            return f"{ocsf.endpoint_text(e)}/{e.protocol}"
        return f"{e.ip}/{e.protocol}"
    if v.exec is not None:
        return f"{v.exec.path} (truncated)" if v.exec.truncated else v.exec.path
    if v.syscall is not None:
        return v.syscall.name
    if v.socket is not None:
        return ocsf.socket_text(v.socket)
    if v.limit is not None:
        return ocsf.limit_text(v.limit)
    return v.kind


def workload_text(v: Violation) -> str:
    w = v.workload
    if w is None or not (w.namespace or w.pod_name):
        return "-"
    if w.namespace and w.pod_name:
        return f"{w.namespace}/{w.pod_name}"
    return w.pod_name or f"{w.namespace}/-"


EVENT_COLUMNS = ("time", "node", "namespace/pod", "policy", "kind", "verdict", "what", "count")


def event_row(e: StoredEvent) -> tuple[str, ...]:
    v = e.violation
    return (
        format_time(v.time_ms),
        v.node or e.node,
        workload_text(v),
        v.policy.name,
        v.kind,
        v.verdict,
        what(v),
        str(v.count),
    )


LOSS_COLUMNS = ("time", "node", "epoch", "reason", "priority", "count", "attempts", "seq range")


def loss_row(loss: StoredLoss) -> tuple[str, ...]:
    seqs = f"{loss.first_seq}-{loss.last_seq}" if loss.first_seq or loss.last_seq else "-"
    return (
        format_time(loss.time_ms),
        loss.node,
        str(loss.epoch),
        loss.reason,
        loss.priority,
        str(loss.count),
        str(loss.attempts),
        seqs,
    )


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], caption: str | None) -> Table:
    from rich import box  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, caption=caption)
    for name in columns:
        justify: JustifyMethod = "right" if name in ("count", "attempts") else "left"
        table.add_column(name, no_wrap=name != "what", justify=justify)
    for row in rows:
        table.add_row(*row)
    return table


def _print_table(out: IO[str], table: Table) -> None:
    import io  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    is_tty = out.isatty()
    # a pipe gets whole rows (one line per event, nothing cut)
    width = shutil.get_terminal_size((TEXT_WIDTH, 24)).columns if is_tty else 10_000
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=is_tty,
        no_color=not is_tty,
        color_system="standard" if is_tty else None,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )
    console.print(table)
    text = buffer.getvalue()
    if not is_tty:
        text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    out.write(text)


def _json_line(e: StoredEvent) -> str:
    from nodeguard.events.ocsf import to_json_line  # noqa: PLC0415

    return to_json_line(e.violation)


# -------------------------------------------------------------------------- main --


def _main(args: argparse.Namespace) -> int:
    if args.losses:
        others = [
            flag
            for flag in ("follow", "namespace", "pod", "policy", "kind")
            if getattr(args, flag) not in (None, False)
        ]
        if others:
            args.parser.error(
                f"--losses lists loss records, which --{others[0]} does not apply to "
                "(use --since, --until, --node, --limit, --json)"
            )
    path = store_path(args.config, args.store)
    out = sys.stdout
    try:
        with _open(path) as store:
            if args.losses:
                _show_losses(store, args, out)
            else:
                cursor = _show_events(store, args, out)
                if args.follow:
                    _follow(store, args, out, cursor)
        out.flush()
    except BrokenPipeError:  # the reader went away (| head): nothing more to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return 0


def _show_events(store: EventStore, args: argparse.Namespace, out: IO[str]) -> int:
    """Print the newest matching events in time order; the rowid to follow from."""
    top = store.last_rowid()
    limit = args.limit or None
    query = _query(args, limit=None if limit is None else limit + 1, newest_first=True)
    newest = store.query(query)
    more = limit is not None and len(newest) > limit
    events = sorted(newest[:limit], key=lambda e: (e.violation.time_ms, e.rowid))
    if args.json:
        for e in events:
            out.write(_json_line(e) + "\n")
    else:
        caption = None
        if more:
            caption = f"the newest {limit} matching events; --limit N (0: all) shows more"
        elif not events:
            caption = "no matching events"
        if events or not args.follow:
            _print_table(out, _table(EVENT_COLUMNS, [event_row(e) for e in events], caption))
    out.flush()
    return max([top, *(e.rowid for e in newest)])


def _follow(store: EventStore, args: argparse.Namespace, out: IO[str], cursor: int) -> None:
    """Print what arrives after ``cursor`` (one line per event) until SIGINT/SIGTERM."""
    with _stop_on_signals() as stop:
        print(
            f"nodeguard: following new events in {store.path} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        while not stop.is_set():
            top = store.last_rowid()
            query = _query(args, limit=FOLLOW_BATCH, after_rowid=cursor, newest_first=False)
            events = store.query(query)
            for e in events:
                out.write((_json_line(e) if args.json else "  ".join(event_row(e))) + "\n")
            out.flush()
            if len(events) == FOLLOW_BATCH:
                cursor = events[-1].rowid
                continue
            cursor = max([cursor, top, *(e.rowid for e in events)])
            stop.wait(FOLLOW_INTERVAL_S)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield stop
    finally:
        for restored, old in previous.items():
            signal.signal(restored, old)


def _show_losses(store: EventStore, args: argparse.Namespace, out: IO[str]) -> None:
    losses = [
        loss
        for loss in store.losses(since_ms=args.since, node=args.node)
        if args.until is None or loss.time_ms <= args.until
    ]
    if args.limit:
        losses = losses[-args.limit :]
    if args.json:
        for loss in losses:
            out.write(json.dumps(dataclasses.asdict(loss), sort_keys=True) + "\n")
        return
    caption = None if losses else "no loss records: nothing was reported lost"
    _print_table(out, _table(LOSS_COLUMNS, [loss_row(loss) for loss in losses], caption))
