"""``Throttle``: the first event is reported at once, the next ones counted and reported together once per interval."""

from __future__ import annotations

import time

from foldedcnns.utils.throttle import Throttle


def test_the_first_event_is_reported_at_once_then_the_count_once_per_interval():
    lines = Throttle(every_s=0.2)
    assert lines.due() is None  # nothing happened
    assert lines.add() == 1
    assert lines.add(3) is None and lines.add() is None  # within the interval: counted, not reported
    time.sleep(0.25)
    assert lines.due() == 4  # the four since the last line
    assert lines.due() is None
