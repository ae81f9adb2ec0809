"""Line rate: when has a batch of `n` bytes left a link of rate R?

A NIC sends one frame after another at line rate: a batch offered while the
link is idle finishes n / R after it was offered; one offered while others
are still leaving waits for them (the queue is where a burst goes), then
takes its n / R. There is no idle credit: a link idle for a while does not
let the next bytes leave faster than line rate. (The shaper once let 10 ms of
credit through at once, so a stop-and-copy after an idle moment left faster
than the link allows; issue "Fidelity" (7).)

Pure arithmetic over a clock value, so it is tested without sleeping.
Departures are FIFO; which batch is offered next is the link's choice
(agents/datapath/fair_queue.py). The class keeps its historical name: it is
a token bucket whose depth is one byte.
"""
from __future__ import annotations


class TokenBucket:
    def __init__(self, rate_bytes_s: float, t0: float) -> None:
        if rate_bytes_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate_bytes_s
        self.t = t0  # when the batches offered so far have all left

    def set_rate(self, rate_bytes_s: float, t: float) -> None:
        """A new rate for batches that start leaving from `t` on; one already leaving keeps its time."""
        if rate_bytes_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate_bytes_s

    @property
    def free_at(self) -> float:
        """When the batches offered so far have fully left: the next may start then."""
        return self.t

    def departure(self, nbytes: int, t: float, ready: float = 0.0, tail_bytes: int = 0) -> float:
        """Time at which `nbytes` offered at `t` have fully left the link: serialized at line rate.

        A batch produced as a stream (cut through, not stored and forwarded) begins to
        leave at `t` as its first page is ready, but its last `tail_bytes` are ready only at
        `ready`: it has left no earlier than `ready + tail_bytes / rate`. The link is busy
        for its line time only: while it trickles out at its producer's pace, other
        batches' bytes take the gaps (packets of concurrent flows interleave on a NIC)."""
        self.t = max(self.t, t) + nbytes / self.rate
        return max(self.t, ready + tail_bytes / self.rate)
