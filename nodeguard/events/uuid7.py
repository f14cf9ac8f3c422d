"""UUID version 7 (RFC 9562): 48-bit Unix time in ms, then random bits.

Identifiers from one generator are strictly increasing, also within one millisecond
(RFC 9562 section 6.2, method 2: the 74 random bits are incremented by a random amount),
so they sort in the order they were made, as text and as integers.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections.abc import Callable

_RAND_BITS = 74  # 12 bits rand_a + 62 bits rand_b
_RAND_MAX = (1 << _RAND_BITS) - 1
_STEP_BITS = 32  # random increment within a millisecond (< 2^32): keeps ~2^42 ids/ms of room
_MS_MAX = (1 << 48) - 1
_VERSION = 7
_VARIANT = 0b10


# The random bits need to be unique, not secret: a PRNG seeded from the OS (and reseeded
# in every forked child, so parent and child never share a sequence) costs ~0.1 us per
# id where secrets/os.urandom costs a syscall each.
_rng = random.Random(secrets.randbits(128))  # noqa: S311 - uniqueness, not secrecy


def _reseed() -> None:
    _rng.seed(secrets.randbits(128))


os.register_at_fork(after_in_child=_reseed)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def pack(unix_ms: int, rand74: int) -> int:
    """The 128-bit UUIDv7 value for a timestamp and 74 random bits."""
    rand_a = rand74 >> 62
    rand_b = rand74 & ((1 << 62) - 1)
    return (unix_ms & _MS_MAX) << 80 | _VERSION << 76 | rand_a << 64 | _VARIANT << 62 | rand_b


def format_uuid(value: int) -> str:
    """Canonical 8-4-4-4-12 lowercase hex text of a 128-bit value."""
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def unix_ms_of(uuid_text: str) -> int:
    """The millisecond timestamp a UUIDv7 carries."""
    return int(uuid_text.replace("-", "")[:12], 16)


class Uuid7Generator:
    """Thread-safe, strictly increasing UUIDv7 source (``now_ms`` injectable for tests)."""

    def __init__(self, now_ms: Callable[[], int] = _now_ms) -> None:
        self._now_ms = now_ms
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def __call__(self) -> str:
        with self._lock:
            ms = self._now_ms()
            if ms > self._last_ms:
                rand = _rng.getrandbits(_RAND_BITS)
            else:
                # Same (or an earlier, after a clock step back) millisecond: stay on the
                # last one and count up; borrow the next millisecond if the bits run out.
                ms = self._last_ms
                rand = self._last_rand + 1 + _rng.getrandbits(_STEP_BITS)
                if rand > _RAND_MAX:
                    ms += 1
                    rand = _rng.getrandbits(_RAND_BITS - 1)  # leave room to count up
            self._last_ms = ms
            self._last_rand = rand
            return format_uuid(pack(ms, rand))


_default = Uuid7Generator()


def uuid7() -> str:
    """A new UUIDv7 as canonical text, greater than every one made before in this process."""
    return _default()
