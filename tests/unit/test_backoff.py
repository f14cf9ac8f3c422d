"""Reconnect backoff: exponential ceiling, full jitter from an injected random source."""

from __future__ import annotations

import pytest

from nodeguard.delivery.backoff import Backoff


class Fixed:
    """A random source that returns the given values in turn."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0)


def test_defaults_are_half_a_second_doubling_to_thirty() -> None:
    b = Backoff()
    assert (b.initial, b.factor, b.maximum) == (0.5, 2.0, 30.0)
    assert [b.ceiling(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    b = Backoff(rand=Fixed(0.0, 0.999, 0.5, 0.25))
    assert b.next_delay() == 0.0  # attempt 0: [0, 0.5)
    assert b.next_delay() == pytest.approx(0.999)  # attempt 1: [0, 1.0)
    assert b.next_delay() == pytest.approx(1.0)  # attempt 2: half of 2.0
    assert b.next_delay() == pytest.approx(1.0)  # attempt 3: a quarter of 4.0
    assert b.attempt == 4


def test_the_cap_holds_for_long_outages() -> None:
    b = Backoff(rand=lambda: 0.999999)
    delays = [b.next_delay() for _ in range(200)]  # no overflow on attempt 199
    assert max(delays) < 30.0
    assert delays[-1] == pytest.approx(30.0, rel=1e-5)


def test_reset_after_a_success_starts_again_from_initial() -> None:
    b = Backoff(rand=lambda: 1.0)
    for _ in range(5):
        b.next_delay()
    assert b.next_delay() == 16.0
    b.reset()
    assert b.attempt == 0
    assert b.next_delay() == 0.5


def test_custom_parameters() -> None:
    b = Backoff(initial=0.05, factor=3.0, maximum=1.0, rand=lambda: 1.0)
    assert [round(b.next_delay(), 6) for _ in range(5)] == [0.05, 0.15, 0.45, 1.0, 1.0]


@pytest.mark.parametrize(
    ("initial", "factor", "maximum"), [(0.0, 2.0, 30.0), (0.5, 0.5, 30.0), (2.0, 2.0, 1.0)]
)
def test_bad_parameters(initial: float, factor: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial=initial, factor=factor, maximum=maximum)
