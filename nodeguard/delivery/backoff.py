"""Reconnect delays: exponential backoff with full jitter.

Attempt ``n`` (0 after a success) waits a uniformly random time in
``[0, min(maximum, initial * factor**n))``: a fleet of agents that lost the collector at
the same moment spreads its reconnects over the whole window instead of returning in
waves. Pure: the random source is injected (tests pass a fixed one).
"""

from __future__ import annotations

import random
from collections.abc import Callable

DEFAULT_INITIAL_S = 0.5
DEFAULT_FACTOR = 2.0
DEFAULT_MAXIMUM_S = 30.0


class Backoff:
    def __init__(
        self,
        *,
        initial: float = DEFAULT_INITIAL_S,
        factor: float = DEFAULT_FACTOR,
        maximum: float = DEFAULT_MAXIMUM_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if initial <= 0 or factor < 1 or maximum < initial:
            raise ValueError(
                f"backoff needs initial > 0, factor >= 1, maximum >= initial; got "
                f"initial={initial}, factor={factor}, maximum={maximum}"
            )
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self._rand = rand
        self.attempt = 0

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before retry number ``attempt`` (0-based)."""
        # Stop multiplying once the cap is reached (no float overflow on long outages).
        bound = self.initial
        for _ in range(attempt):
            bound *= self.factor
            if bound >= self.maximum:
                return self.maximum
        return min(bound, self.maximum)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the attempt counter."""
        delay = self._rand() * self.ceiling(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """After a success: the next failure starts again from ``initial``."""
        self.attempt = 0
