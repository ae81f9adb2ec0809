"""Token bucket: when may a batch of `n` bytes leave a link of rate R?

Pure arithmetic over a clock value, so it is tested without sleeping. The
bucket holds at most `burst_bytes`; a batch larger than what is in the bucket
waits for the deficit to refill. Departures are FIFO.
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

    def set_rate(self, rate_bytes_s: float, t: float) -> None:
        if rate_bytes_s <= 0:
            raise ValueError("rate must be positive")
        self._refill(t)
        self.rate = rate_bytes_s

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
