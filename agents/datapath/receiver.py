"""The receiving end of one connection: link -> restore into the image -> ack.

One `PageReceiver` thread per connection (PMigrate's receivers, one for each
source consumer): it restores each arriving batch into the destination image
of its VM on a core of the destination's `CorePool`, charges the work, and
acknowledges the slot so the sender may reuse it. A connection's batches are
restored in the order they were sent, so a page's newer copy always lands
after its older one.

A batch whose checksum does not match (damaged in transit) is not
restored: it is counted and sent back as a NACK, and its sender packs it
again. A batch the link dropped with a broken connection arrives as
DROPPED and is only acknowledged, so its slot comes back.

Post-copy's requested pages (KIND_URGENT) are restored as they arrive, also
while the thread waits for a streamed batch's last page: they do not queue
behind the background push at the destination (QEMU's postcopy-preempt
channel has a thread of its own there; without preempt, what they queue
behind on the stream is the sender's emulated wait).
"""
from __future__ import annotations

import select
import threading
import time
from typing import Callable

import numpy as np

from agents.cpu import CoreClock, CorePool
from agents.datapath.clock import sleep_until
from agents.datapath.channel import (
    KIND_ACK,
    KIND_BATCH,
    KIND_CLOSE,
    KIND_DROPPED,
    KIND_NACK,
    KIND_URGENT,
    Channel,
)
from agents.datapath.wire_format import (
    ENC_ZERO,
    SlotLayout,
    SlotView,
    Unpacker,
    restore_pages,
)


class PageReceiver:
    def __init__(self, ring: np.ndarray, slots: int, layout: SlotLayout, from_link: Channel, acks: Channel,
                 cores: CorePool, restore_cost: Callable[[int, int], float], images: dict[int, np.ndarray],
                 decode_cost: Callable[[float], float] = lambda us: 0.0, codec_costs=None,
                 received: dict[int, np.ndarray] | None = None) -> None:
        """`images`: destination image of each migration, by the descriptors' `vm` field (the
        migration's number). `decode_cost(us)`: real seconds to charge for what the codec cost
        model (`codec_costs`, agents/encodings/cost_model.py) says decoding took, in us at
        scale 1. Cores are charged under the tag `(migration, "receive")`.
        `received`: per migration, a byte per page set once the page is restored
        (post-copy's map of what the destination holds)."""
        self.views = [SlotView(ring, i, layout) for i in range(slots)]
        self.unpacker = Unpacker(codec_costs)  # one zstd context per receiver
        self.decode_cost = decode_cost
        self.decode_s = 0.0  # measured, for the report
        self.decode_model_us = 0.0
        self.from_link = from_link
        self.acks = acks
        self.cores = cores
        self.restore_cost = restore_cost  # real seconds for (pages, pages with contents)
        self.images = images
        self.received = received or {}
        # Per migration, a destination that pages to swap as pages arrive (agents/techniques/swap.py):
        # its `received(idx, zero, restore)` restores through it and returns the real seconds to wait for the device.
        self.swaps: dict = {}
        self.pages_restored = 0
        self.batches_corrupted = 0  # checksum mismatches, sent back for re-sending
        self.batches_dropped = 0
        self.restored_by: dict[int, int] = {}
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="receiver")
        self._thread.start()

    def _run(self) -> None:
        clock = CoreClock()  # each restore continues the emulated schedule of the ones before
        urgent_clock = CoreClock()  # requested pages: their own schedule (QEMU's preempt channel's thread)
        d = None
        while True:
            d = d or self.from_link.recv()
            if d is None or d[0] == KIND_CLOSE:
                break
            d = self._handle(d, urgent_clock if d[0] == KIND_URGENT else clock, urgent_clock)
        try:  # the close goes back too: the sender's acknowledgement thread (or a bridge) ends on it
            self.acks.send(KIND_CLOSE)
        except OSError:
            pass

    def _handle(self, d: tuple, clock: CoreClock, urgent_clock: CoreClock) -> tuple | None:
        """Restore (or drop, or NACK) one batch and acknowledge it. Returns the next descriptor
        when one was read while this batch waited for its last page, else None."""
        kind, vm, slot, npages = d[0], d[1], d[2], d[3]
        if kind == KIND_DROPPED:
            self.batches_dropped += 1
            self.acks.send(KIND_DROPPED, vm, slot, 0, 0, d[5], d[6], time.monotonic())
            return None
        restores = kind in (KIND_BATCH, KIND_URGENT)
        if restores and not self.views[slot].intact():
            self.batches_corrupted += 1
            self.acks.send(KIND_NACK, vm, slot, npages, 0, d[5], d[6], time.monotonic())
            return None
        # A message with no pages (CPU and device state) is in when its last byte arrived on the
        # emulated schedule (the link's t_done), not when this thread woke up for it.
        done, after = (time.monotonic() if d[7] <= 0 else min(d[7], time.monotonic())), None
        if restores:
            done, cost, device_wait = self._restore(d, clock)
            last = d[7] + cost / max(1, npages)  # ... and not before its last page arrived and was restored
            if last > done:  # (the core is free meanwhile: it restored the pages as they came)
                after = self._wait_until(last, urgent_clock)
                done = last
            if device_wait > 0:  # the swap device, not a core, holds the batch up
                time.sleep(device_wait)
            self.pages_restored += npages
            self.restored_by[vm] = self.restored_by.get(vm, 0) + npages
            done = max(done, time.monotonic()) if device_wait > 0 else done
        self.acks.send(KIND_ACK, vm, slot, npages, 0, d[5], d[6], done)
        return after

    def _restore(self, d: tuple, clock: CoreClock) -> tuple[float, float, float]:
        """The batch's pages into the image, on a core; returns (when its charged work ended, the
        charge in real seconds, the swap device's wait)."""
        vm, slot, npages = d[1], d[2], d[3]
        device_wait = 0.0
        # It starts when its first page arrived (the link's t_first; the link cuts batches
        # through) or when the last batch's restore ended on the emulated schedule,
        # whichever is later; not when this thread woke up. It ends no earlier than its
        # last page's restore after that page arrived (t_done).
        first = d[8] if 0 < d[8] <= d[7] else d[7]
        clock.busy, clock.not_before = d[7] > 0, first
        with self.cores.core((vm, "receive"), clock) as core:
            zero = int(np.count_nonzero(self.views[slot].enc[:npages] == ENC_ZERO))
            try:
                view, swap = self.views[slot], self.swaps.get(vm)
                if swap is None:
                    restore_pages(self.images[vm], view, self.unpacker)
                else:
                    device_wait = swap.received(view.idx[:npages].copy(), view.enc[:npages] == ENC_ZERO,
                                                lambda: restore_pages(self.images[vm], view, self.unpacker))
            except (ValueError, KeyError, IndexError) as exc:
                self.error = f"batch {d[5]} could not be restored: {exc}"
            marks = self.received.get(vm) if vm not in self.swaps else None  # a swap space keeps its own
            if marks is not None:  # after the bytes: a guest that sees the mark finds the page
                marks[self.views[slot].idx[:npages]] = 1
            self.decode_s += self.unpacker.take_decode_s()
            model_us = self.unpacker.take_model_us()
            self.decode_model_us += model_us
            cost = self.restore_cost(npages, npages - zero) + self.decode_cost(model_us)
            core.charge(cost)
        return min(core.t, time.monotonic()), cost, device_wait

    def _wait_until(self, t: float, urgent_clock: CoreClock) -> tuple | None:
        """Until `t` (a batch's last page arrives), restoring requested pages that arrive meanwhile
        (QEMU's postcopy-preempt channel has its own thread on the destination; without it the
        wait ahead of them is the sender's, agents/techniques/postcopy.py). Returns the first other
        descriptor read meanwhile, to be handled next, in order."""
        while True:
            left = t - time.monotonic() - 0.002
            if left <= 0 or not select.select([self.from_link.sock], [], [], left)[0]:
                break
            d = self.from_link.recv()
            if d is None or d[0] != KIND_URGENT:
                sleep_until(t)
                return d or (KIND_CLOSE,)
            self._handle(d, urgent_clock, urgent_clock)
        sleep_until(t)
        return None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
