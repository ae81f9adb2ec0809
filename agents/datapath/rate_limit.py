"""A migration's own rate limit: QEMU's max-bandwidth.

The cap belongs to the migration, not to its links: the NICs keep their
speed, and the migration paces what it puts on them, over all its
connections together. QEMU lifts it when the VM stops (the last stage runs
as fast as the link allows); the technique decides that, by setting the
rate to None (agents/techniques/precopy.py).

A slower NIC in front of the real one: a batch is handed to the link when
its bytes would have finished leaving at the capped rate, after those before
it. So no stretch of the migration goes faster than the cap, however coarse
its batches (one batch of a 10 GbE link is 160 ms at 0.5 Gbit/s: paying for
it afterwards let a short pass beat the cap). The wait takes no emulated
core: a rate-limited migration thread sleeps.
"""
from __future__ import annotations

import threading
import time

from agents.datapath.clock import sleep_until


class RateLimit:
    def __init__(self, rate_bytes_s: float | None = None) -> None:
        self.rate = rate_bytes_s
        self._paid_until = 0.0
        self._lock = threading.Lock()

    def set_rate(self, rate_bytes_s: float | None) -> None:
        """Real bytes/s from now on; None lifts the limit (and forgets any debt)."""
        if rate_bytes_s is not None and rate_bytes_s <= 0:
            raise ValueError("a rate limit must be positive")
        with self._lock:
            self.rate = rate_bytes_s
            if rate_bytes_s is None:
                self._paid_until = 0.0

    @property
    def active(self) -> bool:
        return self.rate is not None

    def pace(self, nbytes: int) -> float:
        """Wait until `nbytes`, ready now, have left at the capped rate (no wait without a cap);
        returns when they left on that schedule (monotonic seconds; now without a cap)."""
        with self._lock:
            if not self.rate:
                return time.monotonic()
            self._paid_until = max(self._paid_until, time.monotonic()) + nbytes / self.rate
            until = self._paid_until
        sleep_until(until)
        return until
