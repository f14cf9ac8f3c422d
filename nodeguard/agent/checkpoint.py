"""What the agent has already reported, kept across restarts.

The kernel's aggregates are pinned and only ever count up; the agent reports the
difference to what it reported before. A restarted agent would otherwise start from
zero and report every earlier attempt again. The agent writes this checkpoint (atomically,
in its state directory) after each flush and seeds its tracker from it at start. Between
two checkpoints, the keys each loop round advanced are written into the spool in the same
transaction as that round's records (``Spool.append(reported=)``), and seeded after the
checkpoint: what was reported and what was spooled cannot disagree after a crash, so a
restarted agent reports nothing twice. Monotonic timestamps stay valid across agent
restarts on the same boot; the pinned maps do not survive a reboot either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nodeguard import log
from nodeguard.events.aggregate import AggregationKey, CountTracker

_log = log.get("nodeguard.agent.checkpoint")
VERSION = 1


def key_text(k: AggregationKey) -> str:
    """A stable text form of an aggregation key (the spool's ``reported`` table key)."""
    return f"{k.cgroup_id}:{k.policy_id}:{k.op}:{k.port}:{k.addr.hex()}:{k.protocol}:{k.family}"


def key_of_text(text: str) -> AggregationKey:
    cgid, pid, op, port, addr, proto, fam = text.split(":")
    return AggregationKey(
        int(cgid), int(pid), int(op), int(port), bytes.fromhex(addr), int(proto), int(fam)
    )


def seed_rows(tracker: CountTracker, rows: list[tuple[str, int, int, int]]) -> int:
    """Seed ``tracker`` from (key text, cumulative, first_ns, at_ns) rows (the spool's
    ``reported`` table, written with the records of each round: newer than the
    checkpoint file). Counts only ever go up, so older rows change nothing."""
    for text, cum, first, at in rows:
        tracker.seed(key_of_text(text), int(cum), first_ns=int(first), at_ns=int(at))
    return len(rows)


def save(path: Path, tracker: CountTracker) -> None:
    rows = [
        [k.cgroup_id, k.policy_id, k.op, k.port, k.addr.hex(), k.protocol, k.family, cum, first, at]
        for k, cum, first, at in tracker.snapshot()
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": VERSION, "keys": rows}))
    os.replace(tmp, path)


def load(path: Path, tracker: CountTracker) -> int:
    """Seed ``tracker`` from a checkpoint; returns how many keys. A missing or unreadable
    checkpoint seeds nothing (and is logged): counts may then repeat, never vanish."""
    if not path.exists():
        return 0
    try:
        data = json.loads(path.read_text())
        if data.get("version") != VERSION:
            raise ValueError(f"checkpoint version {data.get('version')!r}")
        for row in data["keys"]:
            cgid, pid, op, port, addr, proto, fam, cum, first, at = row
            key = AggregationKey(cgid, pid, op, port, bytes.fromhex(addr), proto, fam)
            tracker.seed(key, int(cum), first_ns=int(first), at_ns=int(at))
        return len(data["keys"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        _log.warning("checkpoint_unreadable", path=str(path), error=str(err))
        return 0
