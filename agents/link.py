"""A link: one NIC pair, shaped to its bandwidth and latency.

Descriptors of batches arrive from the sender; the token bucket decides when
each batch has finished leaving the NIC (bandwidth), and the delay line hands
it to the receiver one one-way latency later. Bytes stay in shared memory;
only descriptors pass through here, so shaping costs no copies. Background
traffic of a co-located VM takes its share of the bucket first.
"""
from __future__ import annotations

import collections
import threading
import time

from agents.channel import DESCRIPTOR, KIND_CLOSE, Channel
from agents.clock import sleep_until
from agents.token_bucket import TokenBucket


class LinkShaper:
    def __init__(self, rate_bytes_s: float, one_way_s: float, burst_s: float = 0.010,
                 background_bytes_s: float = 0.0) -> None:
        self.capacity = rate_bytes_s
        self.background = min(background_bytes_s, rate_bytes_s * 0.95)
        self.one_way_s = one_way_s
        self.burst_s = burst_s
        self.bytes_forwarded = 0
        self.batches_forwarded = 0
        self.busy_until = 0.0
        self._delay_line: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.corrupt_next = None  # callable(descriptor) used by fault injection

    @property
    def migration_rate(self) -> float:
        return self.capacity - self.background

    def run(self, inbound: Channel, outbound: Channel) -> None:
        """Start shaping descriptors from `inbound` to `outbound` in threads."""
        self._bucket = TokenBucket(self.migration_rate, self.migration_rate * self.burst_s, time.monotonic())
        t1 = threading.Thread(target=self._pace, args=(inbound,), daemon=True, name="link-pace")
        t2 = threading.Thread(target=self._deliver, args=(outbound,), daemon=True, name="link-deliver")
        self._threads = [t1, t2]
        t1.start()
        t2.start()

    def _pace(self, inbound: Channel) -> None:
        while True:
            d = inbound.recv()
            if d is None or d[0] == KIND_CLOSE:
                break
            if self.corrupt_next is not None:
                self.corrupt_next(d)
            wire_bytes = d[4]
            done = self._bucket.departure(wire_bytes, time.monotonic())
            sleep_until(done)
            self.busy_until = done
            with self._cv:
                self._delay_line.append((done + self.one_way_s, d))
                self._cv.notify()
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _deliver(self, outbound: Channel) -> None:
        while True:
            with self._cv:
                while not self._delay_line and not self._closed:
                    self._cv.wait()
                if not self._delay_line:
                    break
                arrival, d = self._delay_line.popleft()
            sleep_until(arrival)
            outbound.sock.send(DESCRIPTOR.pack(*d))
            self.bytes_forwarded += d[4]
            self.batches_forwarded += 1
        outbound.send(KIND_CLOSE)

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

