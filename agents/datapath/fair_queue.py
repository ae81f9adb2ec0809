"""Fair queue: which connection's next batch goes onto a shared link.

Deficit round robin by bytes (Shreedhar and Varghese, 1995). Each flow with
batches waiting takes its turn in a ring; a turn adds one quantum of bytes to
the flow's deficit and sends head batches while they fit in it. Backlogged
flows thus get equal byte shares, and a flow offering less than its share
keeps what it offers (max-min fairness). A flow that runs dry leaves the ring
and loses its deficit: idleness earns no credit.

Pure bookkeeping with no clock: the link asks for one batch at a time, when
it can take the next one, so no order is committed ahead.
"""
from __future__ import annotations

import collections
from collections.abc import Hashable
from typing import Any


class DeficitRoundRobin:
    def __init__(self) -> None:
        self._queues: dict[Hashable, collections.deque] = {}
        self._deficit: dict[Hashable, int] = {}
        self._ring: collections.deque = collections.deque()  # flows with batches waiting
        self._turn_started = False  # has the flow at the head of the ring had its quantum?
        self.quantum = 1  # the largest batch seen: every turn sends at least one batch

    def offer(self, flow: Hashable, nbytes: int, item: Any) -> None:
        """Queue `item` of `nbytes` behind the flow's earlier ones."""
        queue = self._queues.setdefault(flow, collections.deque())
        if not queue:
            self._ring.append(flow)
            self._deficit[flow] = 0
        queue.append((nbytes, item))
        self.quantum = max(self.quantum, nbytes)

    def waiting(self, flow: Hashable) -> int:
        """How many batches of `flow` wait."""
        queue = self._queues.get(flow)
        return len(queue) if queue else 0

    def remove(self, flow: Hashable) -> list:
        """Take every waiting item of `flow` out of the queue (its connection broke); in order."""
        queue = self._queues.pop(flow, None)
        if not queue:
            return []
        if self._ring and self._ring[0] == flow:
            self._turn_started = False
        self._ring.remove(flow)
        self._deficit.pop(flow, None)
        return [item for _, item in queue]

    def __bool__(self) -> bool:
        return bool(self._ring)

    def pop(self) -> tuple[Hashable, Any]:
        """The next (flow, item) to send; the queue must not be empty."""
        while True:
            flow = self._ring[0]
            if not self._turn_started:
                self._deficit[flow] += self.quantum
                self._turn_started = True
            queue = self._queues[flow]
            nbytes, item = queue[0]
            if nbytes <= self._deficit[flow]:
                self._deficit[flow] -= nbytes
                queue.popleft()
                if not queue:
                    self._end_turn(leave=True)
                return flow, item
            self._end_turn(leave=False)

    def _end_turn(self, leave: bool) -> None:
        flow = self._ring.popleft()
        if leave:
            self._deficit[flow] = 0
        else:
            self._ring.append(flow)
        self._turn_started = False
