"""Durations as people write them in configs and on the command line: ``90s``, ``15m``,
``1h30m``, ``7d``, ``2w`` (units in this order, each at most once)."""

from __future__ import annotations

import re

DURATION_RE = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
DURATION_UNITS = (7 * 86400, 86400, 3600, 60, 1)  # seconds per w, d, h, m, s


def duration_seconds(text: str) -> int | None:
    """Seconds of a duration text, or None when ``text`` is not one (or is empty)."""
    match = DURATION_RE.fullmatch(text.strip())
    if not text.strip() or match is None:
        return None
    return sum(int(g) * unit for g, unit in zip(match.groups(), DURATION_UNITS, strict=True) if g)
