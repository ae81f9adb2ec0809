"""Precise waiting.

`sleep_until` sleeps most of the way and spins the last stretch, because
plain sleeps overshoot by up to a millisecond. (Charged CPU is
agents/cpu.py's `CorePool`.)
"""
from __future__ import annotations

import sys
import threading
import time

# Sleep until this close to a deadline, then spin. Short: many threads of a
# process wait this way at once, and a spinning thread holds the GIL and a core
# (on 2 cores a consumer spinning 0.2 ms per 1 MiB batch took CPU the link and
# the receiver needed). With a 1 us timer slack (set once per waiting thread)
# the sleep itself wakes 10-20 us late at the median, under a load of 9 here.
_SPIN_S = 0.00005
_tls = threading.local()


def precise_threads() -> None:
    """Hand the GIL over every 0.2 ms instead of every 5 ms, so that a thread
    spinning towards its deadline cannot delay another's by milliseconds; and
    wake timed waits on time (`fine_timer_slack`)."""
    sys.setswitchinterval(0.0002)
    fine_timer_slack()


def fine_timer_slack() -> None:
    """Let the kernel wake this thread's timed waits (select, sleep) within 1 us of their
    timeout instead of its default 50 us slack (Linux prctl PR_SET_TIMERSLACK; threads
    started from this one inherit it). Measured here under a load of 7 on 2 cores: a 0.8 ms
    select overshoots by 31 us (median) instead of 74 us, so waiters spin for less.
    Elsewhere, nothing happens."""
    global _libc
    try:
        if _libc is None:
            import ctypes
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        pass


_libc = None
_PR_SET_TIMERSLACK = 29


def now() -> float:
    return time.monotonic()


def sleep_until(deadline: float) -> None:
    if not getattr(_tls, "fine", False):  # once per thread: timer slack is a thread's own
        fine_timer_slack()
        _tls.fine = True
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        # The last stretch: sleep(0) yields the GIL to other threads while spinning.
        time.sleep(left - _SPIN_S if left > _SPIN_S else 0)
