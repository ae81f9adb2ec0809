"""Pre-copy live migration (Clark et al.; PMigrate §2.1 Figure 1; S-memV §II).

The first iteration sends every page; each later one sends the pages dirtied
during the previous one, the dirty log being fetched and reset atomically at
its start. Iterating stops when the expected downtime (what remains over the
bandwidth measured in the last iteration) is within the limit, when the
remaining set stopped shrinking, when too much was sent, or at the iteration
cap. Then stop-and-copy: pause the guest, send what remains and the CPU and
device state, and resume on the destination.

Two iteration strategies (PMigrate §5):
- image-oriented (the default, PMigrate's): one iteration is one pass over
  the dirty part of the image;
- time-sliced (vanilla kvm-qemu 0.14): each iteration fetches the dirty log
  and then sends only a slice of the dirty pages (e.g. 2 MByte), so that the
  I/O thread can serve the guest in between. That makes thousands of
  iterations, each paying for a fetch of the whole dirty log.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agents.datapath.clock import sleep_until


@dataclass(frozen=True)
class StopPolicy:
    downtime_limit_s: float
    max_iterations: int
    stall_iterations: int
    max_sent_bytes: float


def stop_reason(policy: StopPolicy, iteration: int, remaining_bytes: float, bandwidth: float,
                remaining_history: list[float], sent_bytes: float) -> str | None:
    """Why pre-copy should stop before iteration `iteration + 1`, or None to go on.

    `iteration` iterations are done; `remaining_history` holds what remained
    at the start of each of them (emulated bytes), `bandwidth` is bytes/s.
    """
    if bandwidth > 0 and remaining_bytes / bandwidth <= policy.downtime_limit_s:
        return "converged"
    if iteration >= policy.max_iterations:
        return "max-iterations"
    if sent_bytes >= policy.max_sent_bytes:
        return "max-sent"
    k = policy.stall_iterations
    hist = remaining_history + [remaining_bytes]
    if len(hist) > k and min(hist[-k:]) >= min(hist[:-k]):
        return "stalled"
    return None


class GuestControl(Protocol):
    def start_dirty_log(self) -> None: ...
    def stop_dirty_log(self) -> None: ...
    def take_io_thread(self, share: float) -> None: ...
    def harvest(self) -> np.ndarray: ...
    def pause(self) -> float: ...
    def resume(self) -> float: ...


class PageSink(Protocol):
    def send_pages(self, vm: int, image: np.ndarray, idx: np.ndarray, phase: str, should_stop) -> int: ...
    def send_state(self, vm: int, state_bytes: int) -> None: ...
    def drain(self) -> float: ...


@dataclass
class Iteration:
    number: int
    dirty_pages: int  # emulated pages to send in this iteration
    wire_bytes: float  # emulated
    duration_s: float  # emulated
    bandwidth_bytes_s: float


@dataclass
class PrecopyResult:
    status: str = "running"
    stop_reason: str = ""
    setup_time_s: float = 0.0
    total_time_s: float = 0.0
    downtime_s: float = 0.0
    downtime_bytes: float = 0.0
    memory_bytes_sent: float = 0.0
    iterations: list[Iteration] = field(default_factory=list)
    iteration_count: int = 0  # time-sliced runs keep only the count, not a log entry per slice
    paused_at: float = 0.0  # real monotonic times, for the guest's timeline
    resumed_at: float = 0.0
    started_at: float = 0.0


class PrecopyMigration:
    """Runs one VM's pre-copy on the source. Sizes in, figures out: emulated units."""

    def __init__(self, vm: int, image: np.ndarray, guest: GuestControl, sink: PageSink,
                 policy: StopPolicy, memory_scale: float, dilation: float,
                 state_bytes: float, setup_s: float, strategy: str = "image", slice_bytes: float = 2 * 2**20,
                 resume_s: float = 0.0, io_thread_taken: float = 0.0) -> None:
        self.vm = vm
        self.image = image
        self.guest = guest
        self.sink = sink
        self.policy = policy
        self.scale = memory_scale
        self.dilation = dilation
        self.state_bytes = state_bytes
        self.setup_s = setup_s
        self.strategy = strategy
        self.resume_s = resume_s
        self.io_thread_taken = io_thread_taken
        self.slice_pages = max(1, int(round(slice_bytes * memory_scale / 4096)))
        self.result = PrecopyResult()
        self.phase = "setup"
        self.remaining_bytes = float(len(image) * 4096) / memory_scale
        self.abort_requested = False

    def _emu(self, real_s: float) -> float:
        return real_s / self.dilation

    def run(self) -> PrecopyResult:
        r = self.result
        t0 = r.started_at = time.monotonic()
        time.sleep(self.setup_s * self.dilation)  # connection set-up, destination VM creation
        r.setup_time_s = self._emu(time.monotonic() - t0)
        self.guest.start_dirty_log()
        if self.strategy == "time-sliced":
            # Vanilla KVM migrates from the guest's I/O thread.
            self.guest.take_io_thread(self.io_thread_taken)
            try:
                todo = self._time_sliced()
            finally:
                self.guest.take_io_thread(0.0)
        else:
            todo = self._image_oriented()
        if todo is None:
            return self._abort()
        return self._stop_and_copy(todo)

    def _image_oriented(self) -> np.ndarray | None:
        """Passes over the dirty image; returns what is left for stop-and-copy (None: aborted)."""
        r = self.result
        todo = np.arange(len(self.image))
        history: list[float] = []
        bandwidth = 0.0
        page_bytes = 4096 / self.scale
        while True:
            if self.abort_requested:
                return None
            remaining = len(todo) * page_bytes
            self.remaining_bytes = remaining
            if r.iterations:
                why = stop_reason(self.policy, len(r.iterations), remaining, bandwidth, history, r.memory_bytes_sent)
                if why:
                    r.stop_reason = why
                    return todo
            history.append(remaining)
            self.phase = "precopy"
            t_it = time.monotonic()
            wire = self.sink.send_pages(self.vm, self.image, todo, "precopy", lambda: self.abort_requested)
            # A pass ends when its pages have arrived: the bandwidth measured is
            # the link's, and nothing of this pass is left in flight at stop-and-copy.
            self.sink.drain()
            dt = self._emu(time.monotonic() - t_it)
            wire_emu = wire / self.scale
            bandwidth = wire_emu / dt if dt > 0 else float("inf")
            r.memory_bytes_sent += wire_emu
            r.iterations.append(Iteration(len(r.iterations) + 1, int(round(len(todo) / self.scale)), wire_emu, dt, bandwidth))
            r.iteration_count = len(r.iterations)
            todo = self.guest.harvest()

    def _time_sliced(self) -> np.ndarray | None:
        """Slices of the dirty set, one per iteration, in address order; QEMU 0.14's stage 2.

        A slice ends when it has put `slice_bytes` on the wire (QEMU's rate
        limit counts bytes sent, so a slice of zero pages covers many pages).
        """
        r = self.result
        pending = np.ones(len(self.image), dtype=bool)
        cursor = 0
        page_bytes = 4096 / self.scale
        slice_wire = self.slice_pages * 4096
        self.phase = "precopy"
        no_stall = StopPolicy(self.policy.downtime_limit_s, self.policy.max_iterations, 1 << 30,
                              self.policy.max_sent_bytes)
        while True:
            if self.abort_requested:
                return None
            t_it = time.monotonic()
            pending[self.guest.harvest()] = True
            wire = 0
            while wire < slice_wire:
                dirty = np.flatnonzero(pending)
                if not len(dirty):
                    break
                # Continue where the last slice stopped, wrapping around.
                first = np.searchsorted(dirty, cursor)
                chosen = np.concatenate([dirty[first:], dirty[:first]])[: self.slice_pages]
                pending[chosen] = False
                cursor = int(chosen[-1]) + 1
                wire += self.sink.send_pages(self.vm, self.image, chosen, "precopy", lambda: False)
            dt = self._emu(time.monotonic() - t_it)
            wire_emu = wire / self.scale
            r.memory_bytes_sent += wire_emu
            r.iteration_count += 1
            bandwidth = wire_emu / dt if dt > 0 else float("inf")
            remaining = int(np.count_nonzero(pending)) * page_bytes
            self.remaining_bytes = remaining
            why = stop_reason(no_stall, r.iteration_count, remaining, bandwidth, [], r.memory_bytes_sent)
            if why:
                r.stop_reason = why
                return np.flatnonzero(pending)

    def _stop_and_copy(self, todo: np.ndarray) -> PrecopyResult:
        """`todo`: pages harvested but not sent; the last harvest adds what the guest dirtied since."""
        r = self.result
        self.phase = "stop-and-copy"
        r.paused_at = self.guest.pause()
        # A mask, not np.union1d: that one loads lazily, costing ~10 ms of downtime on first use.
        mask = np.zeros(len(self.image), dtype=bool)
        mask[todo] = True
        mask[self.guest.harvest()] = True
        todo = np.flatnonzero(mask)
        self.guest.stop_dirty_log()
        wire = self.sink.send_pages(self.vm, self.image, todo, "downtime", lambda: False)
        self.sink.send_state(self.vm, max(1, int(self.state_bytes * self.scale)))
        # The destination restores devices and resumes: a fixed cost of the platform.
        r.resumed_at = self.sink.drain() + self.resume_s * self.dilation
        sleep_until(r.resumed_at)
        self.remaining_bytes = 0.0
        r.downtime_bytes = wire / self.scale + self.state_bytes
        r.memory_bytes_sent += wire / self.scale
        r.downtime_s = self._emu(r.resumed_at - r.paused_at)
        r.total_time_s = self._emu(r.resumed_at - r.started_at)
        r.status = "completed"
        self.phase = "switchover"
        return r

    def _abort(self) -> PrecopyResult:
        """Abandon the migration: the guest keeps running on the source."""
        r = self.result
        self.sink.drain()
        self.guest.stop_dirty_log()  # no more write-protection faults for the guest
        r.status = "aborted"
        r.stop_reason = "aborted by request"
        r.total_time_s = self._emu(time.monotonic() - r.started_at)
        self.phase = "aborted"
        return r
