from __future__ import annotations

from pathlib import Path

from nodeguard.agent import checkpoint
from nodeguard.events.aggregate import AggregationKey, CountTracker

KEY = AggregationKey(42, 3, 1, 443, bytes(10) + b"\xff\xff\xc6\x12\x02\x02", 6, 2)


def test_round_trip_means_no_second_report(tmp_path: Path) -> None:
    before = CountTracker()
    assert before.observe(KEY, 5, first_ns=100) == 5
    checkpoint.save(tmp_path / "c.json", before)
    after = CountTracker()
    assert checkpoint.load(tmp_path / "c.json", after) == 1
    assert after.residual(KEY, 5, first_ns=100) == 0  # already reported
    assert after.residual(KEY, 8, first_ns=100) == 3  # only the new attempts


def test_recreated_aggregate_is_counted_from_scratch(tmp_path: Path) -> None:
    t = CountTracker()
    t.observe(KEY, 5, first_ns=100)
    checkpoint.save(tmp_path / "c.json", t)
    fresh = CountTracker()
    checkpoint.load(tmp_path / "c.json", fresh)
    assert fresh.residual(KEY, 2, first_ns=200) == 2  # another generation of the key


def test_missing_or_broken_checkpoint_seeds_nothing(tmp_path: Path) -> None:
    t = CountTracker()
    assert checkpoint.load(tmp_path / "none.json", t) == 0
    (tmp_path / "bad.json").write_text("{not json")
    assert checkpoint.load(tmp_path / "bad.json", t) == 0
    assert t.residual(KEY, 4) == 4  # may repeat, never vanish
