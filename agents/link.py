"""A link: one NIC pair, shaped to its bandwidth and latency.

Descriptors of batches arrive from the sender; the token bucket gives the
time each batch has finished leaving the NIC (bandwidth), and the batch is
handed to the receiver one one-way latency after that. Bytes stay in shared
memory; only descriptors pass through here, so shaping costs no copies.
Background traffic of a co-located VM takes its share of the rate first.

One thread does both pacing and delivery, waiting in `select` and spinning
only the last stretch: two threads spinning in one process would fight over
the GIL and blur the latency by milliseconds.
"""
from __future__ import annotations

import collections
import select
import threading
import time

from agents.channel import DESCRIPTOR, KIND_CLOSE, Channel
from agents.token_bucket import TokenBucket

_SPIN_S = 0.001


class LinkShaper:
    def __init__(self, rate_bytes_s: float, one_way_s: float, burst_s: float = 0.010,
                 background_bytes_s: float = 0.0) -> None:
        self.capacity = rate_bytes_s
        self.background = min(background_bytes_s, rate_bytes_s * 0.95)
        self.one_way_s = one_way_s
        self.burst_s = burst_s
        self.bytes_forwarded = 0
        self.batches_forwarded = 0
        self.corrupt_next = None  # fault injection: callable(descriptor)
        self._thread: threading.Thread | None = None

    @property
    def migration_rate(self) -> float:
        return self.capacity - self.background

    def run(self, inbound: Channel, outbound: Channel) -> None:
        """Start shaping descriptors from `inbound` to `outbound` in a thread."""
        self._thread = threading.Thread(target=self._loop, args=(inbound, outbound), daemon=True, name="link")
        self._thread.start()

    def _loop(self, inbound: Channel, outbound: Channel) -> None:
        rate = self.migration_rate
        bucket = TokenBucket(rate, rate * self.burst_s, time.monotonic())
        line: collections.deque = collections.deque()  # (arrival time, descriptor), FIFO
        sock = inbound.sock
        open_ = True
        while open_ or line:
            now = time.monotonic()
            wait = (line[0][0] - now) if line else None
            if open_ and (wait is None or wait > _SPIN_S):
                ready, _, _ = select.select([sock], [], [], None if wait is None else wait - _SPIN_S)
                if ready:
                    d = inbound.recv()
                    if d is None or d[0] == KIND_CLOSE:
                        open_ = False
                    else:
                        if self.corrupt_next is not None:
                            self.corrupt_next(d)
                        # Offered when the sender posted it (d[6]), not when this
                        # thread woke up: wake-up latency is not link latency.
                        done = bucket.departure(d[4], min(d[6], time.monotonic()))
                        line.append((done + self.one_way_s, d))
                    continue
            if not line:
                continue
            arrival, d = line[0]
            while time.monotonic() < arrival:
                pass  # the last fraction of a millisecond: spin for precision
            line.popleft()
            outbound.sock.send(DESCRIPTOR.pack(*d))
            self.bytes_forwarded += d[4]
            self.batches_forwarded += 1
        outbound.send(KIND_CLOSE)

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)
