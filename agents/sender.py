"""The sending side of the data path: pages -> wire slots -> link.

A `PageSender` owns the shared-memory ring of one link. `send_pages` cuts
the pages into batches, packs each into a free slot (zero pages as markers),
charges the packing to an emulated core and hands a descriptor to the link.
Slots come back when the receiver acknowledges them, so a slow receiver or a
slow link blocks the sender instead of growing memory.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from agents.channel import KIND_ACK, KIND_BATCH, KIND_CLOSE, KIND_STATE, Channel
from agents.clock import ChargedCore
from agents.wire_format import SlotLayout, SlotView, pack_pages


@dataclass
class SendCounters:
    pages_normal: int = 0
    pages_zero: int = 0
    wire_bytes: int = 0
    batches: int = 0
    acked_batches: int = 0
    last_restore_t: float = 0.0
    by_phase: dict = field(default_factory=dict)


class PageSender:
    def __init__(self, ring: np.ndarray, slots: int, layout: SlotLayout, to_link: Channel,
                 acks: Channel, core: ChargedCore, send_cost_s_per_page: float) -> None:
        self.layout = layout
        self.views = [SlotView(ring, i, layout) for i in range(slots)]
        self.free: queue.Queue[int] = queue.Queue()
        for i in range(slots):
            self.free.put(i)
        self.to_link = to_link
        self.core = core
        self.cost_per_page = send_cost_s_per_page
        self.counters = SendCounters()
        self._seq = 0
        self._outstanding = 0
        self._cv = threading.Condition()
        self._ack_thread = threading.Thread(target=self._collect_acks, args=(acks,), daemon=True, name="acks")
        self._ack_thread.start()

    def _collect_acks(self, acks: Channel) -> None:
        while True:
            d = acks.recv()
            if d is None or d[0] == KIND_CLOSE:
                break
            if d[0] == KIND_ACK:
                self.free.put(d[2])
                with self._cv:
                    self._outstanding -= 1
                    self.counters.acked_batches += 1
                    self.counters.last_restore_t = max(self.counters.last_restore_t, d[7])
                    self._cv.notify_all()

    def send_pages(self, vm: int, image: np.ndarray, idx: np.ndarray, phase: str,
                   should_stop=lambda: False) -> int:
        """Send pages `idx` of `image`; returns wire bytes. Stops early if asked."""
        sent = 0
        b = self.layout.batch_pages
        for start in range(0, len(idx), b):
            if should_stop():
                break
            sent += self._send_batch(vm, image, idx[start:start + b], phase)
        return sent

    def _send_batch(self, vm: int, image: np.ndarray, idx: np.ndarray, phase: str) -> int:
        slot = self.free.get()
        t0 = time.monotonic()
        stats = pack_pages(image, idx, self.views[slot])
        self.core.charge(self.cost_per_page * len(idx), t0)
        self._post(KIND_BATCH, vm, slot, len(idx), stats.wire_bytes)
        c = self.counters
        c.pages_normal += stats.normal
        c.pages_zero += stats.zero
        c.wire_bytes += stats.wire_bytes
        p = c.by_phase.setdefault(phase, [0, 0])
        p[0] += stats.wire_bytes
        p[1] += len(idx)
        return stats.wire_bytes

    def send_state(self, vm: int, state_bytes: int) -> None:
        """CPU and device state: one message of the given wire size (single-threaded, as in the paper)."""
        slot = self.free.get()
        self.views[slot].set_header(0, 0, 0)
        self._post(KIND_STATE, vm, slot, 0, state_bytes)
        self.counters.wire_bytes += state_bytes

    def _post(self, kind: int, vm: int, slot: int, npages: int, wire_bytes: int) -> None:
        with self._cv:
            self._outstanding += 1
        self._seq += 1
        self.counters.batches += 1
        self.to_link.send(kind, vm, slot, npages, wire_bytes, self._seq, time.monotonic())

    def drain(self, timeout: float = 600.0) -> float:
        """Wait until every batch sent so far is restored; returns the last restore time."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._outstanding > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._outstanding} batches never acknowledged")
                self._cv.wait(min(left, 0.5))
            return self.counters.last_restore_t

    def close(self) -> None:
        try:
            self.to_link.send(KIND_CLOSE)
        except OSError:
            pass
