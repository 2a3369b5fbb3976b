"""``Throttle``: at most one log line per interval for an event that may repeat many times a second.

A server cutting stalled uploads, or ``watch`` dropping late frames, must say so, but one line per
event lets a hostile or overloaded peer flood the log. The first event is reported at once; later
ones are counted and reported together, at most once per ``every_s``, with how many there were.
"""

from __future__ import annotations

import math
import threading
import time


class Throttle:
    """Count events (:meth:`count`, cheap, from any thread) and say when a line is due (:meth:`due`)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._pending = 0
        self._last = -math.inf
        self._lock = threading.Lock()

    def count(self, events: int = 1) -> None:
        with self._lock:
            self._pending += events

    def due(self) -> int | None:
        """The events since the last line when a line is due now (then the count restarts), else None."""
        now = time.monotonic()
        with self._lock:
            if not self._pending or now - self._last < self.every_s:
                return None
            events, self._pending, self._last = self._pending, 0, now
        return events

    def add(self, events: int = 1) -> int | None:
        """:meth:`count`, then :meth:`due`."""
        self.count(events)
        return self.due()
