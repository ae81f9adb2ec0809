"""The guest: a running VM's workload writing into its memory image.

The guest runs in its own thread, in ticks of a few milliseconds of real
time. Each tick turns the elapsed emulated time into operations of its
workload, writes the pages those operations touch, and then marks them in the
dirty log (after the write, so a page the migration has already read is
always marked again). With an access bitmap (split migration's emulated EPT
accessed bits, agents/split/history.py) every page read or written in a tick
is marked there too. The dirty log is the hypervisor's and lives in shared
memory (agents/guest/dirty_log.py); the migration harvests it without asking.

While dirty logging is on, the first write to a page after each reset costs
a write-protection fault on a vCPU; operations beyond the vCPUs' capacity are
not done. That is how migration slows a busy guest down. A migration that
throttles the guest to converge (agents/guest/throttle.py) shortens the time
its vCPUs run, and with it the operations and the writes.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from agents.faults import VMLost
from agents.guest.content import PageClasses, write_pages
from agents.guest.dirty_log import DirtyLog
from agents.guest.throttle import VcpuThrottle
from agents.guest.workloads import Sweeper, Workload
from agents.split.history import mark_accessed

TICK_S = 0.002


class Guest:
    def __init__(self, pages: np.ndarray, workload: Workload, classes: PageClasses, pools: np.ndarray,
                 vcpus: int, dilation: float, fault_s: float, seed: int, log: DirtyLog | None = None,
                 io_bound: bool = False, access: np.ndarray | None = None) -> None:
        self.pages = pages
        self.access = access  # packed accessed bits (bitmap_bytes(npages) bytes), or None: not tracked
        self.io_bound = io_bound
        # In a run the log is in shared memory (the source host harvests it);
        # standing alone, the guest keeps its own.
        self.log = log or DirtyLog(np.zeros(DirtyLog.nbytes(len(pages)), dtype=np.uint8), len(pages))
        self.workload = workload
        self.classes = classes
        self.pools = pools
        self.vcpus = vcpus
        self.dilation = dilation
        self.fault_s = fault_s
        self.rng = np.random.default_rng(seed + 7)
        self.paused = False
        self.synced_at = 0.0  # when the last harvest was made (GuestControl's; nothing is charged here)
        self.lost: str | None = None  # why the VM cannot go on (agents/faults.py VMLost); it stays stopped
        self.rate_factor = 1.0  # a scheduled event may scale the workload's offered rate
        self.ops = 0.0  # cumulative operations (emulated units)
        self.samples: list[tuple[float, float]] = []  # (real time, cumulative ops)
        self.faults = 0.0
        self.throttle = VcpuThrottle(vcpus)
        # After a post-copy switch-over: the destination's fault handler
        # (agents/guest/remote_memory.py); pages are checked before each write.
        self.remote = None
        self._blocked = 0.0  # real seconds the last tick waited for missing pages
        self._fault_ratio = 0.0
        self._counter = 1 << 32
        self._tick_no = 0
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

    def resume(self, pages: np.ndarray | None = None, log: DirtyLog | None = None, remote=None,
               access: np.ndarray | None = None) -> float:
        """Run again, on a new image and its dirty log if given (the destination's after
        switchover), with a post-copy fault handler if given (none on a new image otherwise)."""
        with self._lock:
            if pages is not None:
                self.pages = pages
                self.remote = remote
                self.access = access  # the new host's accessed bits, if it keeps any
            self.log.clear_pause()
            if log is not None:
                self.log = log
            self.paused = self.lost is not None  # a lost VM does not run again
            return time.monotonic()

    # --- the dirty log, for a migration in the same process ------------
    def start_dirty_log(self) -> None:
        self.log.start()

    def stop_dirty_log(self) -> None:
        self.log.stop()

    def harvest(self, at: float | None = None) -> np.ndarray:
        """Pages written since the last harvest; in-process, nothing is charged (`at` unused)."""
        idx = self.log.harvest()
        self.synced_at = time.monotonic()
        return idx

    @property
    def logging(self) -> bool:
        return self.log.logging

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
                    ops_before = self.ops
                    try:
                        carry = self._tick(dt, carry)
                    except VMLost as e:  # stopped where it is, for good
                        self.lost, self.paused, self._blocked = str(e), True, 0.0
                    if self._blocked:
                        # vCPUs waiting for missing pages do not run: that time is not owed
                        # work, and the guest made no progress in it.
                        last += self._blocked
                        t, self._blocked = last, 0.0
                        self.samples.append((t, ops_before))
                    if self.log.pause_requested():
                        # Paused by the migration through the shared log, not by a call.
                        self.paused = True
                        self.log.acknowledge_pause(t)
                self.samples.append((t, self.ops))

    def _tick(self, dt: float, carry: float) -> float:
        wl = self.workload
        awake = wl.advance(dt) if isinstance(wl, Sweeper) else dt
        shares = self.throttle.shares(self.log)
        awake *= float(shares.mean())  # a throttled vCPU sleeps part of the tick
        offered = wl.ops_rate() * self.rate_factor * awake + carry
        # vCPU budget: operations plus expected dirty-tracking faults must fit.
        logging = self.log.logging
        per_op = wl.op_cost_s + (self._fault_ratio * self.fault_s if logging else 0.0)
        vcpus = max(0.0, self.vcpus - self.log.cpu_taken)  # co-located with a migration sharing its cores
        capacity = vcpus * awake / per_op if per_op > 0 else offered
        if self.io_bound:
            # Its requests go through the I/O thread; the migration may hold it.
            capacity = min(capacity, offered * (1.0 - self.log.io_taken))
        ops = min(offered, capacity)
        self._tick_no += 1
        if wl.writes_in_place:
            if self.remote is not None and ops > 0:
                # Its writes are picked and done in one call: fault in all it may write.
                self._blocked += self.remote.ensure(np.arange(wl.footprint or len(self.pages)), in_order=False)
            idx = wl.write(self.pages, ops)  # partial-page writes, done by the workload
        else:
            idx = wl.step(ops)
            if len(idx) and self.remote is not None:
                self._blocked += self.remote.ensure(idx)  # post-copy: missing pages fault first
            if len(idx):
                write_pages(self.pages, idx, self.classes.written, self.pools, self.rng, self._counter)
                self._counter += len(idx)
        if len(idx) and self.remote is not None:
            self.remote.wrote(idx)
        reads_fault = getattr(self.remote, "faults_on_reads", False)
        if self.access is not None or reads_fault:
            reads = wl.reads(ops)
            if reads_fault and len(reads):
                self._blocked += self.remote.ensure(reads)  # split migration: reads page in too
            if self.access is not None:
                mark_accessed(self.access, np.concatenate([idx, reads]))
        if len(idx):
            # Marked after the write, and always: the log decides what counts.
            fresh = self.log.mark(idx, self._tick_no)
            if logging:
                emu_faults = fresh / wl.scale  # each real page stands for 1/scale emulated pages
                self.faults += emu_faults
                self._fault_ratio = emu_faults / ops if ops > 0 else 0.0
        self.log.publish(self._tick_no)
        self.throttle.count(shares, len(idx) / wl.scale * 4096, dt, self.log)
        self.ops += ops
        # Work not done is not carried over beyond one tick (an open-loop client gives up).
        return min(offered - ops, wl.ops_rate() * self.rate_factor * awake)
