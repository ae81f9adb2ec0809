"""Precise waiting.

`sleep_until` sleeps most of the way and spins the last stretch, because
plain sleeps overshoot by up to a millisecond. (Charged CPU is
agents/cpu.py's `CorePool`.)
"""
from __future__ import annotations

import sys
import time

# Sleep until this close to a deadline, then spin. Short: many threads of a
# process wait this way at once, and a spinning thread holds the GIL.
_SPIN_S = 0.0002


def precise_threads() -> None:
    """Hand the GIL over every 0.2 ms instead of every 5 ms, so that a thread
    spinning towards its deadline cannot delay another's by milliseconds."""
    sys.setswitchinterval(0.0002)


def now() -> float:
    return time.monotonic()


def sleep_until(deadline: float) -> None:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        # The last stretch: sleep(0) yields the GIL to other threads while spinning.
        time.sleep(left - _SPIN_S if left > _SPIN_S else 0)
