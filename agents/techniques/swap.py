"""Swap-assisted migration, S-memV's baseline (§II, §V): the `swap` technique.

Plain pre-copy (agents/techniques/precopy.py, inherited unchanged) to a
destination whose free memory is only `swap_resident_share` of the VM's:
as pages arrive, its kernel pages the least recently used ones out to a
swap device (SSD or HDD, agents/split/swap.py), and the receiver waits for
the device before it takes the next batch, so paging slows the migration
down, the stop-and-copy included. After the switch-over every access to a
swapped-out page faults and is read in from the device (with read-ahead)
while the vCPUs wait, and another page goes out.

`SwapDestination` is the destination host's side: one VM image, its swap
space, and the device as one queue (one request at a time), used by the
receivers during the migration and by the guest's faults after it.
"""
from __future__ import annotations

import threading
import time
from typing import ClassVar

import numpy as np

from agents.guest.remote_memory import LatencyHistogram
from agents.split.history import bitmap_bytes
from agents.split.swap import DEVICES, SwapSpace
from agents.techniques.precopy import PrecopyMigration


class SwapMigration(PrecopyMigration):
    """Pre-copy to a destination that pages to swap; the destination does the rest."""

    name: ClassVar[str] = "swap"
    swaps: ClassVar[bool] = True  # the destination attaches a SwapDestination (cluster/build.py)


def resident_pages(npages: int, share: float) -> int:
    """Real pages the destination keeps in memory for the VM (at least one)."""
    return max(1, int(npages * share))


class SwapDestination:
    """The destination's swap space for image `pages`, with `access` the guest's
    accessed bits there (packed) and `resident` the shared map of pages in memory."""

    def __init__(self, pages: np.ndarray, resident: np.ndarray, access: np.ndarray, share: float, device: str,
                 memory_scale: float, dilation: float) -> None:
        self.space = SwapSpace(pages, resident_pages(len(pages), share), DEVICES[device], memory_scale, resident)
        self.access = access[:bitmap_bytes(len(pages))]
        self.dilation = dilation
        self.lock = threading.Lock()
        self.device_free_at = 0.0  # real time the device finishes what it was given
        self.during: dict = {}

    def _queue(self, emulated_s: float) -> float:
        """Put `emulated_s` of device work behind what it is doing; real seconds until it is done."""
        now = time.monotonic()
        self.device_free_at = max(now, self.device_free_at) + emulated_s * self.dilation
        return self.device_free_at - now

    def received(self, idx: np.ndarray, zero: np.ndarray, restore) -> float:
        """A batch arrives (receiver thread): restore it through the swap space; real seconds to wait.
        A zero page that was never written takes no memory (QEMU leaves it unmapped), so only
        pages with contents, or overwriting a page that had some, count (`zero`: bool per page)."""
        with self.lock:
            takes = idx[~zero | self.space.present[idx]]
            return self._queue(self.space.received(takes, restore))

    def migration_done(self) -> dict:
        """Freeze the figures of the migration (before the guest runs here)."""
        with self.lock:
            self.during = self.space.status()
            self.space.touch(np.empty(0, dtype=np.int64))
            return self.during

    def fault(self, idx: np.ndarray) -> float:
        """The guest touched swapped-out pages `idx`: take the referenced bits,
        read them in, page others out. Real seconds the guest must wait."""
        with self.lock:
            bits = np.unpackbits(self.access, bitorder="little", count=len(self.space.stamp)).astype(bool)
            self.access[:] = 0
            self.space.touch(np.flatnonzero(bits))
            return self._queue(self.space.access(idx))

    def status(self) -> dict:
        with self.lock:
            after = self.space.status()
        keys = ("swapped_out_pages", "swapped_in_pages", "swap_faults", "device_busy_s")
        return {"device": after["device"], "resident_pages": after["capacity_pages"],
                "during_migration": {k: self.during.get(k, after[k]) for k in keys},
                "after_migration": {k: after[k] - self.during.get(k, after[k]) for k in keys}}

    def close(self) -> None:
        self.space.close()


class SwapFaults:
    """The guest's side after the switch-over: pages not resident fault to the
    destination host (`host.swap_fault`, a real call), and the vCPUs wait
    for the device. Same interface as agents/guest/split_memory.py."""

    faults_on_reads = True

    def __init__(self, resident: np.ndarray, host, m: int, dilation: float) -> None:
        self.resident, self.host, self.m, self.dilation = resident, host, m, dilation
        self.histogram = LatencyHistogram()
        self.faults = 0
        self.blocked_s = 0.0  # emulated

    def ensure(self, idx: np.ndarray) -> float:
        out = np.unique(idx[self.resident[idx] == 0])
        if not len(out):
            return 0.0
        import ray
        t0 = time.monotonic()
        wait = ray.get(self.host.swap_fault.remote(self.m, out))
        target = t0 + wait
        now = time.monotonic()
        if now < target:
            time.sleep(target - now)
        blocked = time.monotonic() - t0
        self.faults += 1
        self.histogram.add(blocked / self.dilation * 1e6)
        self.blocked_s += blocked / self.dilation
        return blocked

    def wrote(self, idx: np.ndarray) -> None:
        pass

    def status(self) -> dict:
        return {"fault_batches": self.faults, "blocked_s": self.blocked_s,
                "fault_latency": {k.replace("postcopy_latency_dist", "histogram"): v
                                  for k, v in self.histogram.summary().items()}}
