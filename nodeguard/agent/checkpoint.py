"""What the agent has already reported, kept across restarts.

The kernel's aggregates are pinned and only ever count up; the agent reports the
difference to what it reported before. A restarted agent would otherwise start from
zero and report every earlier attempt again. The agent writes this checkpoint (atomically,
in its state directory) after each flush and seeds its tracker from it at start, so only
attempts of the last flush interval before a crash can be reported twice (at least once,
never lost). Monotonic timestamps stay valid across agent restarts on the same boot; the
pinned maps do not survive a reboot either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nodeguard import log
from nodeguard.events.aggregate import AggregationKey, CountTracker

_log = log.get("nodeguard.agent.checkpoint")
VERSION = 1


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
