"""The receiving side of the data path: link -> restore into the image -> ack.

A `PageReceiver` runs one thread per link: it restores each arriving batch
into the destination image of its VM, charges the work to an emulated core of
the destination host, and acknowledges the slot so the sender may reuse it.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from agents.channel import KIND_ACK, KIND_BATCH, KIND_CLOSE, KIND_STATE, Channel
from agents.clock import ChargedCore
from agents.wire_format import SlotLayout, SlotView, restore_pages


class PageReceiver:
    def __init__(self, ring: np.ndarray, slots: int, layout: SlotLayout, from_link: Channel,
                 acks: Channel, core: ChargedCore, restore_cost_s_per_page: float,
                 images: dict[int, np.ndarray]) -> None:
        self.views = [SlotView(ring, i, layout) for i in range(slots)]
        self.from_link = from_link
        self.acks = acks
        self.core = core
        self.cost_per_page = restore_cost_s_per_page
        self.images = images
        self.pages_restored = 0
        self.state_received: dict[int, float] = {}
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="receiver")
        self._thread.start()

    def _run(self) -> None:
        while True:
            d = self.from_link.recv()
            if d is None or d[0] == KIND_CLOSE:
                break
            kind, vm, slot, npages = d[0], d[1], d[2], d[3]
            t0 = time.monotonic()
            if kind == KIND_BATCH:
                try:
                    restore_pages(self.images[vm], self.views[slot])
                except (ValueError, KeyError, IndexError) as exc:
                    self.error = f"batch {d[5]} could not be restored: {exc}"
                self.core.charge(self.cost_per_page * npages, t0)
                self.pages_restored += npages
            elif kind == KIND_STATE:
                self.state_received[vm] = time.monotonic()
            self.acks.send(KIND_ACK, vm, slot, npages, 0, d[5], d[6], time.monotonic())
        try:
            self.acks.send(KIND_CLOSE)
        except OSError:
            pass

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
