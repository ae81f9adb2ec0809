"""Precise waiting and charged CPU.

`sleep_until` sleeps most of the way and spins the last stretch, because
plain sleeps overshoot by up to a millisecond. `ChargedCore` makes a stage
take as long as its emulated CPU cost says, and records when real work took
longer than that (saturation: the emulation is then slower than the system it
stands for).
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


class ChargedCore:
    """One emulated core. `charge(real_cost_s, started)` holds the caller
    until `started + real_cost_s`, so a stage never runs faster than its model.
    Costs are in real seconds (already dilated)."""

    def __init__(self) -> None:
        self.charged_s = 0.0  # real seconds charged
        self.overrun_s = 0.0  # real seconds by which real work exceeded the charge

    def charge(self, real_cost_s: float, started: float) -> None:
        self.charged_s += real_cost_s
        deadline = started + real_cost_s
        late = time.monotonic() - deadline
        if late > 0:
            self.overrun_s += late
        else:
            sleep_until(deadline)
