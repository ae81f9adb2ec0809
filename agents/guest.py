"""The guest: a running VM's workload writing into its memory image.

The guest runs in its own thread, in ticks of a few milliseconds of real
time. Each tick turns the elapsed emulated time into operations of its
workload, writes the pages those operations touch, and then marks them in the
dirty log (after the write, so a page the migration has already read is
always marked again). The dirty log is the hypervisor's: `harvest` returns
and resets it atomically with respect to the guest's writes.

While dirty logging is on, the first write to a page after each reset costs
a write-protection fault on a vCPU; operations beyond the vCPUs' capacity are
not done. That is how migration slows a busy guest down.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from agents.content import write_pages
from agents.workloads import Sweeper, Workload

TICK_S = 0.005


class Guest:
    def __init__(self, pages: np.ndarray, workload: Workload, classes: np.ndarray, pools: np.ndarray,
                 vcpus: int, dilation: float, fault_s: float, seed: int) -> None:
        self.pages = pages
        self.workload = workload
        self.classes = classes
        self.pools = pools
        self.vcpus = vcpus
        self.dilation = dilation
        self.fault_s = fault_s
        self.rng = np.random.default_rng(seed + 7)
        self.dirty = np.zeros(len(pages), dtype=bool)
        self.logging = False
        self.paused = False
        self.ops = 0.0  # cumulative operations (emulated units)
        self.samples: list[tuple[float, float]] = []  # (real time, cumulative ops)
        self.faults = 0.0
        self._fault_ratio = 0.0
        self._counter = 1 << 32
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="guest")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def pause(self) -> float:
        """Stop the vCPUs at a tick boundary; returns the time they stopped."""
        with self._lock:
            self.paused = True
            return time.monotonic()

    def resume(self, pages: np.ndarray | None = None) -> float:
        """Run again, on a new image if given (the destination's after switchover)."""
        with self._lock:
            if pages is not None:
                self.pages = pages
            self.paused = False
            return time.monotonic()

    # --- dirty log -------------------------------------------------------
    def start_dirty_log(self) -> None:
        with self._lock:
            self.dirty[:] = False
            self.logging = True

    def stop_dirty_log(self) -> None:
        with self._lock:
            self.logging = False

    def harvest(self) -> np.ndarray:
        """Dirty page numbers since the last harvest, sorted; the log is reset."""
        with self._lock:
            idx = np.flatnonzero(self.dirty)
            self.dirty[idx] = False
            return idx

    # --- the vCPUs ------------------------------------------------------
    def _run(self) -> None:
        last = time.monotonic()
        carry = 0.0
        while not self._stop.is_set():
            time.sleep(TICK_S)
            with self._lock:
                t = time.monotonic()
                dt = (t - last) / self.dilation
                last = t
                if not self.paused:
                    carry = self._tick(dt, carry)
                self.samples.append((t, self.ops))

    def _tick(self, dt: float, carry: float) -> float:
        wl = self.workload
        awake = wl.advance(dt) if isinstance(wl, Sweeper) else dt
        offered = wl.ops_rate() * awake + carry
        # vCPU budget: operations plus expected dirty-tracking faults must fit.
        per_op = wl.op_cost_s + (self._fault_ratio * self.fault_s if self.logging else 0.0)
        capacity = self.vcpus * awake / per_op if per_op > 0 else offered
        ops = min(offered, capacity)
        idx = wl.step(ops)
        if len(idx):
            write_pages(self.pages, idx, self.classes, self.pools, self.rng, self._counter)
            self._counter += len(idx)
            if self.logging:
                fresh = int((~self.dirty[idx]).sum())
                self.dirty[idx] = True
                # Each real page stands for 1/scale emulated pages.
                emu_faults = fresh / wl.scale
                self.faults += emu_faults
                self._fault_ratio = emu_faults / ops if ops > 0 else 0.0
        self.ops += ops
        # Work not done is not carried over beyond one tick (an open-loop client gives up).
        return min(offered - ops, wl.ops_rate() * awake)
