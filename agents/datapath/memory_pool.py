"""Bounded memory pool for one pipeline stage (PMigrate §3.2, "Limiting Memory
Consumption").

A producer reserves bytes here before it buffers a batch for the next stage, and
the consumer gives them back once the batch is sent. When the pool is full the
producer blocks, so a fast scanner cannot pile up unbounded intermediate data
in front of a slow sender; the time it spent blocked is recorded.
"""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["MemoryPool"]


class MemoryPool:
    """A fixed budget of bytes shared by the producers and consumers of a stage.

    Thread-safe. Waiters are served first come, first served: a large batch at
    the head of the queue is not overtaken by smaller ones arriving later, which
    both avoids starving it and keeps batches in pipeline order.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be a positive integer, got {capacity_bytes!r}")
        self._capacity = capacity_bytes
        self._cond = threading.Condition(threading.Lock())
        self._in_use = 0
        self._high_water = 0
        self._blocked_seconds = 0.0
        self._waiters: deque[object] = deque()  # one ticket per blocked acquire, FIFO

    def acquire(self, nbytes: int, timeout: float | None = None) -> bool:
        """Reserve `nbytes`, blocking while the pool lacks room.

        Returns True once reserved, or False if `timeout` seconds passed first
        (None waits forever; 0 only tries). Raises ValueError if `nbytes` is
        negative or larger than the whole pool, since it could never fit.
        """
        if nbytes < 0:
            raise ValueError(f"cannot acquire a negative number of bytes ({nbytes})")
        if nbytes > self._capacity:
            raise ValueError(
                f"request of {nbytes} bytes exceeds the pool capacity of {self._capacity} bytes"
            )
        with self._cond:
            # Fast path only when nobody is queued, to keep FIFO order.
            if not self._waiters and self._fits(nbytes):
                self._take(nbytes)
                return True
            ticket = object()
            self._waiters.append(ticket)
            began = time.perf_counter()
            deadline = None if timeout is None else began + timeout
            try:
                while not (self._waiters[0] is ticket and self._fits(nbytes)):
                    if deadline is None:
                        self._cond.wait()
                    else:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            return False
                        self._cond.wait(remaining)
                self._take(nbytes)
                return True
            finally:
                self._waiters.remove(ticket)
                self._blocked_seconds += time.perf_counter() - began
                # The head of the queue changed (we took room or gave up our
                # place): the next waiter may now be able to proceed.
                self._cond.notify_all()

    def release(self, nbytes: int) -> None:
        """Return `nbytes` to the pool and wake blocked producers."""
        if nbytes < 0:
            raise ValueError(f"cannot release a negative number of bytes ({nbytes})")
        with self._cond:
            if nbytes > self._in_use:
                raise ValueError(
                    f"release of {nbytes} bytes exceeds the {self._in_use} bytes in use"
                )
            self._in_use -= nbytes
            self._cond.notify_all()

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        """Bytes reserved now."""
        return self._in_use

    @property
    def available(self) -> int:
        """Bytes that could be reserved now."""
        return self._capacity - self._in_use

    @property
    def high_water(self) -> int:
        """The most bytes ever reserved at once (never above the capacity)."""
        return self._high_water

    @property
    def blocked_seconds(self) -> float:
        """Total real seconds callers spent blocked in `acquire`, timeouts included."""
        return self._blocked_seconds

    @property
    def waiting(self) -> int:
        """Number of callers blocked in `acquire` now."""
        return len(self._waiters)

    def __repr__(self) -> str:
        return (
            f"MemoryPool(capacity_bytes={self._capacity}, in_use={self._in_use}, "
            f"high_water={self._high_water}, waiting={len(self._waiters)})"
        )

    # -- helpers, called with self._cond held ------------------------------

    def _fits(self, nbytes: int) -> bool:
        return self._in_use + nbytes <= self._capacity

    def _take(self, nbytes: int) -> None:
        self._in_use += nbytes
        self._high_water = max(self._high_water, self._in_use)
