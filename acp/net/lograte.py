"""Log lines that a remote side can cause, at most one per source and kind per interval.

A host that opens 26 000 garbage connections in ten seconds must not write 26 000 warnings: the
journal's own rate limit would then drop real ones. ``LogLimiter.allow(key)`` says whether to log
now and how many lines of that key were held back since the last one, which the line reports.
The table of keys is bounded, so a flood from many sources cannot grow it either.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable

INTERVAL = 60.0  # seconds between two lines of one key
MAX_KEYS = 4096


class LogLimiter:
    def __init__(
        self, clock: Callable[[], float], *, interval: float = INTERVAL, max_keys: int = MAX_KEYS
    ) -> None:
        self._clock = clock
        self.interval = interval
        self.max_keys = max_keys
        self._keys: OrderedDict[Hashable, list[float | int]] = OrderedDict()  # key -> [last, held]

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """(log it now, how many of this key were held back before it)."""
        now = self._clock()
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False, 0
        held = int(entry[1]) if entry is not None else 0
        self._keys[key] = [now, 0]
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return True, held

    def log(
        self, logger: logging.Logger, level: int, key: Hashable, msg: str, *args: object
    ) -> None:
        """``logger.log(level, msg, *args)`` if ``key`` may log now, with the count held back."""
        emit, held = self.allow(key)
        if emit and logger.isEnabledFor(level):
            logger.log(level, msg + held_note(held), *args)


def held_note(held: int) -> str:
    """The tail of a line that follows held-back ones."""
    return f" ({held} more like this held back)" if held else ""
