"""A migration's own rate limit: QEMU's max-bandwidth.

The cap belongs to the migration, not to its links: the NICs keep their
speed, and the migration paces what it puts on them, over all its
connections together. QEMU lifts it when the VM stops (the last stage runs
as fast as the link allows); the technique decides that, by setting the
rate to None (agents/techniques/precopy.py).

Send now, pay later: a batch may go once the bytes before it are paid for at
the capped rate, so the mean rate is the cap and a consumer is never held
back by bytes it has not sent yet. The wait takes no emulated core: a
rate-limited migration thread sleeps.
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

    def wait(self) -> None:
        """Until the bytes sent so far are paid for."""
        with self._lock:
            until = self._paid_until if self.rate else 0.0
        sleep_until(until)

    def charge(self, nbytes: int) -> None:
        """`nbytes` just went out."""
        with self._lock:
            if self.rate:
                self._paid_until = max(self._paid_until, time.monotonic()) + nbytes / self.rate
