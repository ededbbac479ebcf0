"""The reconnect schedule: 1, 2, 4 … 30 s with jitter, reset after a good session (docs/protocol.md §4)."""

from __future__ import annotations

import random
from collections.abc import Callable

BACKOFF_FIRST = 1.0
BACKOFF_CAP = 30.0
BACKOFF_JITTER = 0.1  # each delay is scaled by a factor in [1 - j, 1 + j]


def delay(
    attempt: int,
    *,
    first: float = BACKOFF_FIRST,
    cap: float = BACKOFF_CAP,
    jitter: float = BACKOFF_JITTER,
    rng: Callable[[], float] = random.random,
) -> float:
    """The delay before retry number ``attempt`` (1, 2, ...): first * 2^(attempt-1), capped,
    scaled by a factor in [1 - jitter, 1 + jitter], never above the cap."""
    base = min(cap, first * 2.0 ** min(max(attempt - 1, 0), 64))
    return min(cap, base * (1.0 + jitter * (2.0 * rng() - 1.0)))


class Backoff:
    """A pure object: ``next()`` returns the next delay; ``rng`` is injected for tests."""

    def __init__(
        self,
        *,
        first: float = BACKOFF_FIRST,
        cap: float = BACKOFF_CAP,
        factor: float = 2.0,
        jitter: float = BACKOFF_JITTER,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.first = first
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._rng = rng
        self._attempt = 0

    @property
    def attempt(self) -> int:
        return self._attempt

    def base(self) -> float:
        """The delay before jitter for the coming attempt."""
        return min(self.cap, self.first * self.factor**self._attempt)

    def next(self) -> float:
        delay = self.base()
        if self.first * self.factor**self._attempt < self.cap:
            self._attempt += 1
        scale = 1.0 + self.jitter * (2.0 * self._rng() - 1.0)
        return min(self.cap, delay * scale) if self.jitter else delay

    def reset(self) -> None:
        self._attempt = 0
