"""A link: one NIC pair, shaped to its bandwidth and latency.

Several connections may share a link (PMigrate runs two consumers per NIC
port). Descriptors of batches arrive from the senders; one token bucket per
link gives the time each batch has finished leaving the NIC (bandwidth), and
the batch is handed to its connection's receiver one one-way latency later.
Bytes stay in shared memory; only descriptors pass through here.

Background traffic of a co-located VM (e.g. a web server) shares the NIC.
Each emulated second a monitor measures both NICs' use and sets the
migration's share: without rate control the two flows split the link fairly
(max-min, as TCP flows would); with PMigrate's network rate control
(§3.2) the migration takes only the spare bandwidth, but never less than its
reserved minimum.

One thread does pacing and delivery, waiting in `select` and spinning only
the last stretch: two threads spinning in one process would fight over the
GIL and blur the latency by milliseconds.
"""
from __future__ import annotations

import collections
import select
import threading
import time

from agents.datapath.channel import DESCRIPTOR, KIND_CLOSE, Channel
from agents.datapath.token_bucket import TokenBucket

_SPIN_S = 0.001
_CLOSE = (KIND_CLOSE, 0, 0, 0, 0, 0, 0.0, 0.0)


def migration_share(capacity: float, background: float, rate_control: bool, reserved: float) -> float:
    """The migration's rate on a link of `capacity` whose background flow wants `background`."""
    if background <= 0:
        return capacity
    if rate_control:
        return min(capacity, max(reserved, capacity - background))
    # Max-min fairness between two greedy-enough flows.
    return capacity - min(background, capacity / 2)


class LinkShaper:
    def __init__(self, rate_bytes_s: float, one_way_s: float, burst_s: float = 0.010,
                 background_bytes_s: float = 0.0, rate_control: bool = False, reserved_bytes_s: float = 0.0,
                 monitor_period_s: float = 1.0) -> None:
        self.capacity = rate_bytes_s
        self.background = background_bytes_s
        self.rate_control = rate_control
        self.reserved = reserved_bytes_s
        self.monitor_period_s = monitor_period_s  # one emulated second, in real seconds
        self.one_way_s = one_way_s
        self.burst_s = burst_s
        self.bytes_forwarded = 0
        self.batches_forwarded = 0
        # Background throughput the monitor saw: (real seconds observed, bytes moved).
        self.background_seen = [0.0, 0.0]
        self.corrupt_next = None  # fault injection: callable(descriptor)
        self._thread: threading.Thread | None = None

    @property
    def migration_rate(self) -> float:
        """The migration's rate while it is sending (the monitor's setting)."""
        return migration_share(self.capacity, self.background, self.rate_control, self.reserved)

    def run(self, pairs: list[tuple[Channel, Channel]]) -> None:
        """Shape descriptors from each (inbound, outbound) connection, in a thread."""
        self._thread = threading.Thread(target=self._loop, args=(pairs,), daemon=True, name="link")
        self._thread.start()

    def _monitor(self, bucket: TokenBucket, now: float, window: list) -> None:
        """Each period: what did the background get, and what may the migration take next."""
        t0, sent0 = window
        dt = now - t0
        if dt < self.monitor_period_s:
            return
        used = (self.bytes_forwarded - sent0) / dt
        bg = min(self.background, max(0.0, self.capacity - used))
        self.background_seen[0] += dt
        self.background_seen[1] += bg * dt
        bucket.set_rate(max(1.0, self.migration_rate), now)
        window[:] = [now, self.bytes_forwarded]

    def _loop(self, pairs: list[tuple[Channel, Channel]]) -> None:
        rate = max(1.0, self.migration_rate)
        now = time.monotonic()
        bucket = TokenBucket(rate, rate * self.burst_s, now)
        window = [now, 0]
        line: collections.deque = collections.deque()  # (arrival time, outbound, descriptor): FIFO
        open_socks = {inbound.sock: (inbound, outbound) for inbound, outbound in pairs}
        while open_socks or line:
            now = time.monotonic()
            self._monitor(bucket, now, window)
            wait = (line[0][0] - now) if line else self.monitor_period_s
            if open_socks and wait > _SPIN_S:
                ready, _, _ = select.select(list(open_socks), [], [], min(wait - _SPIN_S, self.monitor_period_s))
                for sock in ready:
                    inbound, outbound = open_socks[sock]
                    d = inbound.recv()
                    if d is None or d[0] == KIND_CLOSE:
                        # Closed: the close goes behind what is still on the wire.
                        del open_socks[sock]
                        line.append((time.monotonic(), outbound, _CLOSE))
                        continue
                    if self.corrupt_next is not None:
                        self.corrupt_next(d)
                    # Offered when the sender posted it (d[6]), not when this
                    # thread woke up: wake-up latency is not link latency.
                    done = bucket.departure(d[4], min(d[6], time.monotonic()))
                    line.append((done + self.one_way_s, outbound, d))
                if ready:
                    continue
            if not line:
                if not open_socks:
                    break
                continue
            arrival, outbound, d = line[0]
            while time.monotonic() < arrival:
                pass  # the last fraction of a millisecond: spin for precision
            line.popleft()
            try:
                outbound.sock.send(DESCRIPTOR.pack(*d))
            except OSError:
                pass  # the receiver is gone (tear-down)
            if d is _CLOSE:
                continue
            self.bytes_forwarded += d[4]
            self.batches_forwarded += 1

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)
