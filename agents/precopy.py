"""Pre-copy live migration (Clark et al.; PMigrate §2.1 Figure 1; S-memV §II).

The first iteration sends every page; each later one sends the pages dirtied
during the previous one, the dirty log being fetched and reset atomically at
its start. Iterating stops when the expected downtime (what remains over the
bandwidth measured in the last iteration) is within the limit, when the
remaining set stopped shrinking, when too much was sent, or at the iteration
cap. Then stop-and-copy: pause the guest, send what remains and the CPU and
device state, and resume on the destination.

This is the image-oriented strategy (PMigrate §5): one iteration is one pass
over the dirty part of the image, not a bandwidth-limited time slice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


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
    paused_at: float = 0.0  # real monotonic times, for the guest's timeline
    resumed_at: float = 0.0
    started_at: float = 0.0


class PrecopyMigration:
    """Runs one VM's pre-copy on the source. Sizes in, figures out: emulated units."""

    def __init__(self, vm: int, image: np.ndarray, guest: GuestControl, sink: PageSink,
                 policy: StopPolicy, memory_scale: float, dilation: float,
                 state_bytes: float, setup_s: float) -> None:
        self.vm = vm
        self.image = image
        self.guest = guest
        self.sink = sink
        self.policy = policy
        self.scale = memory_scale
        self.dilation = dilation
        self.state_bytes = state_bytes
        self.setup_s = setup_s
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
        todo = np.arange(len(self.image))
        history: list[float] = []
        bandwidth = 0.0
        page_bytes = 4096 / self.scale
        while True:
            if self.abort_requested:
                return self._abort()
            remaining = len(todo) * page_bytes
            self.remaining_bytes = remaining
            if r.iterations:
                why = stop_reason(self.policy, len(r.iterations), remaining, bandwidth, history, r.memory_bytes_sent)
                if why:
                    r.stop_reason = why
                    break
            history.append(remaining)
            self.phase = "precopy"
            t_it = time.monotonic()
            wire = self.sink.send_pages(self.vm, self.image, todo, "precopy", lambda: self.abort_requested)
            dt = self._emu(time.monotonic() - t_it)
            wire_emu = wire / self.scale
            bandwidth = wire_emu / dt if dt > 0 else float("inf")
            r.memory_bytes_sent += wire_emu
            r.iterations.append(Iteration(len(r.iterations) + 1, int(round(len(todo) / self.scale)), wire_emu, dt, bandwidth))
            todo = self.guest.harvest()
        return self._stop_and_copy(todo)

    def _stop_and_copy(self, todo: np.ndarray) -> PrecopyResult:
        """`todo`: pages harvested but not sent; the last harvest adds what the guest dirtied since."""
        r = self.result
        self.phase = "stop-and-copy"
        r.paused_at = self.guest.pause()
        todo = np.union1d(todo, self.guest.harvest())
        wire = self.sink.send_pages(self.vm, self.image, todo, "downtime", lambda: False)
        self.sink.send_state(self.vm, max(1, int(self.state_bytes * self.scale)))
        r.resumed_at = self.sink.drain()
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
