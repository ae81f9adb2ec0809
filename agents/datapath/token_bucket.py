"""Token bucket: when may a batch of `n` bytes leave a link of rate R?

Pure arithmetic over a clock value, so it is tested without sleeping. The
bucket holds at most `burst_bytes`; a batch larger than what is in the bucket
waits for the deficit to refill. Departures are FIFO; which batch is offered
next is the link's choice (agents/datapath/fair_queue.py).
"""
from __future__ import annotations


class TokenBucket:
    def __init__(self, rate_bytes_s: float, burst_bytes: float, t0: float) -> None:
        if rate_bytes_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate_bytes_s
        self.burst = max(burst_bytes, 1.0)
        self.tokens = self.burst
        self.t = t0

    def set_rate(self, rate_bytes_s: float, t: float, burst_bytes: float | None = None) -> None:
        """A new rate (and burst, if given) from `t` on; tokens earned before `t` are kept."""
        if rate_bytes_s <= 0:
            raise ValueError("rate must be positive")
        self._refill(t)
        self.rate = rate_bytes_s
        if burst_bytes is not None:
            self.burst = max(burst_bytes, 1.0)
            self.tokens = min(self.tokens, self.burst)

    @property
    def free_at(self) -> float:
        """When the batches offered so far have fully left: the next may start then."""
        return self.t

    def _refill(self, t: float) -> None:
        if t > self.t:
            self.tokens = min(self.burst, self.tokens + (t - self.t) * self.rate)
            self.t = t

    def departure(self, nbytes: int, t: float) -> float:
        """Time at which `nbytes` offered at `t` have fully left the link."""
        self._refill(t)
        self.tokens -= nbytes
        if self.tokens >= 0:
            return self.t
        # Deficit: the batch finishes when the bucket has refilled to zero.
        done = self.t + (-self.tokens) / self.rate
        self.tokens = 0.0
        self.t = done
        return done
