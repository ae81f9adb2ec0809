"""The dirty log: which pages the guest wrote since the migration last looked.

It lives in shared memory next to the guest image, as the hypervisor's log
does, so the migration can fetch it thousands of times a second (the
time-sliced strategy does) without a call to the guest. Instead of one bit
per page it keeps, per page, the number of the guest tick that last wrote
it, and the guest publishes each tick's number once its writes and marks are
done. A harvest takes every page marked after the previous harvest's tick
and remembers the last completed tick. A page written in a tick still in
progress is either taken now and again next time (harmless) or next time:
never lost, with no lock between two processes.
"""
from __future__ import annotations

import time

import numpy as np

_DONE_TICK, _HARVESTED, _LOGGING, _PAUSE_REQUESTED, _PAUSED_AT, _IO_TAKEN, _CPU_TAKEN = 0, 1, 2, 3, 4, 5, 6
# Convergence control (agents/techniques/convergence.py): a CPU throttle in
# percent, and a dirty-rate quota per vCPU (emulated bytes/s) with its period.
_CPU_THROTTLE, _DIRTY_LIMIT, _DIRTY_LIMIT_PERIOD = 7, 8, 9
HEADER = 128  # bytes of control fields before the per-page ticks


class DirtyLog:
    def __init__(self, buf: np.ndarray, npages: int) -> None:
        """`buf`: a shared uint8 buffer of at least `nbytes(npages)` bytes."""
        self.ctrl = buf[:HEADER].view(np.int64)
        self.times = buf[:HEADER].view(np.float64)
        self.tick = buf[HEADER: HEADER + 8 * npages].view(np.int64)

    @staticmethod
    def nbytes(npages: int) -> int:
        return HEADER + 8 * npages

    # --- the guest's side ---
    @property
    def logging(self) -> bool:
        return bool(self.ctrl[_LOGGING])

    def mark(self, idx: np.ndarray, tick: int) -> int:
        """Mark pages written in `tick` (after writing them); returns how many were clean.

        Nothing is recorded while logging is off: the first pass of a
        migration reads every page after logging starts anyway.
        """
        if not self.ctrl[_LOGGING]:
            return 0
        fresh = int(np.count_nonzero(self.tick[idx] <= self.ctrl[_HARVESTED]))
        self.tick[idx] = tick
        return fresh

    def publish(self, tick: int) -> None:
        """Every write and mark of `tick` is done."""
        self.ctrl[_DONE_TICK] = tick

    def pause_requested(self) -> bool:
        return bool(self.ctrl[_PAUSE_REQUESTED])

    def acknowledge_pause(self, t: float) -> None:
        self.times[_PAUSED_AT] = t
        self.ctrl[_PAUSE_REQUESTED] = 2

    @property
    def io_taken(self) -> float:
        """Share of the hypervisor's I/O thread the migration takes from the guest (0 to 1)."""
        return float(self.times[_IO_TAKEN])

    @property
    def cpu_taken(self) -> float:
        """vCPUs' worth of cores the migration currently takes from this guest."""
        return float(self.times[_CPU_TAKEN])

    def take_cpu(self, vcpus: float) -> None:
        self.times[_CPU_TAKEN] = vcpus

    @property
    def cpu_throttle(self) -> float:
        """Percent of the time the migration makes every vCPU sleep (0: none)."""
        return float(self.times[_CPU_THROTTLE])

    @property
    def dirty_limit(self) -> tuple[float, float]:
        """(quota per vCPU in emulated bytes/s, enforcement period in emulated s); quota 0: none."""
        return float(self.times[_DIRTY_LIMIT]), float(self.times[_DIRTY_LIMIT_PERIOD])

    # --- the migration's side ---
    def take_io_thread(self, share: float) -> None:
        """Vanilla kvm-qemu migrates from the I/O thread that also serves the
        guest's network and disk requests: while it does, the guest gets only
        `1 - share` of it."""
        self.times[_IO_TAKEN] = share

    def request_pause(self, timeout: float = 10.0) -> float:
        """Ask the vCPUs to stop (as the hypervisor would, without a round trip
        through the control plane) and wait until they have; returns when they stopped."""
        self.ctrl[_PAUSE_REQUESTED] = 1
        deadline = time.monotonic() + timeout
        while self.ctrl[_PAUSE_REQUESTED] != 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the guest did not pause")
            time.sleep(0.0001)
        return float(self.times[_PAUSED_AT])

    def ask_pause(self) -> None:
        """Ask the vCPUs to stop at their next tick, without waiting (one blocked on a
        missing post-copy page stops once it has it): post-copy's paused state."""
        self.ctrl[_PAUSE_REQUESTED] = 1

    def set_throttle(self, pct: float) -> None:
        """Throttle the vCPUs to run 1 - pct/100 of the time (QEMU's cpu_throttle_set)."""
        self.times[_CPU_THROTTLE] = pct

    def set_dirty_limit(self, quota_bytes_s: float, period_s: float) -> None:
        """Cap each vCPU's dirty rate, enforced by the guest every `period_s` (QEMU's dirty-limit)."""
        self.times[_DIRTY_LIMIT_PERIOD] = period_s
        self.times[_DIRTY_LIMIT] = quota_bytes_s

    def clear_pause(self) -> None:
        self.ctrl[_PAUSE_REQUESTED] = 0

    def start(self) -> None:
        """Start logging; everything before counts as already harvested."""
        self.ctrl[_HARVESTED] = self.ctrl[_DONE_TICK]
        self.ctrl[_LOGGING] = 1

    def stop(self) -> None:
        """Logging off: the migration is over, and with it every throttle it set."""
        self.ctrl[_LOGGING] = 0
        self.set_throttle(0.0)
        self.set_dirty_limit(0.0, 0.0)

    def harvest(self) -> np.ndarray:
        """Pages written since the last harvest (sorted); resets the log."""
        done = int(self.ctrl[_DONE_TICK])
        if not self.ctrl[_LOGGING]:
            self.ctrl[_HARVESTED] = done
            return np.empty(0, dtype=np.int64)
        idx = np.flatnonzero(self.tick > self.ctrl[_HARVESTED])
        self.ctrl[_HARVESTED] = done
        return idx
