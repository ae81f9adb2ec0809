"""The technique interface: what every migration technique implements, and
what it is given.

A technique runs one VM's migration on its source host. The host actor
builds its `MigrationContext` (the image, the guest's controls, the sink
that carries pages, the scaling, and the timeline's `record`) and calls
`run()` in a thread of its own; the control plane calls `abort()` to cancel
and reads `progress()` and `report()`. Which connections a technique needs
is decided before anything starts (`connections_needed`), so the control
plane can wire them. How pages move (rings, links, encodings) is the data
path's business (agents/datapath/); the technique decides which pages go
when, and when the VM switches over.

Phases and events use QEMU's names where one fits (query-migrate's
dirty-sync-count, remaining, transferred; the downtime checkpoints: the VM
stopped, the last page sent, the device state sent, the destination loaded,
the VM started).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np


class GuestControl(Protocol):
    """The guest as a migration thread on its source sees it."""

    def start_dirty_log(self) -> None: ...
    def stop_dirty_log(self) -> None: ...
    def take_io_thread(self, share: float) -> None: ...
    def set_throttle(self, pct: float) -> None: ...  # vCPUs run 1 - pct/100 of the time
    def set_dirty_limit(self, quota_bytes_s: float, period_s: float) -> None: ...  # per vCPU; 0: none
    # The dirty log since the last fetch; `at`: when the fetch began on the emulated schedule
    # (the stop-and-copy's: the pause), and `synced_at` then says when its charged work ended.
    def harvest(self, at: float | None = None) -> np.ndarray: ...
    synced_at: float
    def pause(self) -> float: ...
    def resume(self) -> float: ...
    def resume_async(self) -> None: ...  # post-copy recovery: resume, not waiting for a blocked vCPU
    # Post-copy: run on the destination's image now, lacking the pages marked in `missing`.
    def resume_on_destination(self, image_path: str, missing: np.ndarray, return_path: str) -> float: ...


class PageSink(Protocol):
    """Where pages go: the data path of this migration's connections."""

    # `at`: when the pages are ready on the emulated schedule (default: as they are queued).
    def send_pages(self, vm: int, image: np.ndarray, idx: np.ndarray, phase: str, should_stop,
                   at: float | None = None) -> int: ...
    def send_state(self, vm: int, state_bytes: int, at: float | None = None) -> None: ...
    def drain(self) -> float: ...
    def set_rate_limit(self, rate_bytes_s: float | None) -> None: ...
    # When the last pass's sending ended on the emulated schedule (monotonic s; 0: none yet).
    pass_ended_at: float


@dataclass(frozen=True)
class Trigger:
    """A scheduled event tied to a phase: fires when the migration enters
    `phase` (and, for pre-copy, iteration `iteration`, 0 meaning any)."""

    event: int  # index of the scenario's [[events]] entry
    phase: str
    iteration: int = 0
    cancel: bool = False  # a cancel is carried out on the spot, in the migration thread
    postcopy: bool = False  # migrate-start-postcopy, likewise
    link_down: object = None  # a fault (a LinkAgent handle): the link goes down on the spot, likewise
    crash: bool = False  # a fault: the migration thread crashes at its next step, likewise


@dataclass
class MigrationContext:
    """What a technique is given. `vm` tags this migration's batches on the
    wire; `image` is the source image, (pages, 4096) uint8; sizes handed to
    the sink are real, figures reported are emulated."""

    vm: int
    image: np.ndarray
    guest: GuestControl
    sink: PageSink
    memory_scale: float = 1.0
    dilation: float = 1.0
    triggers: list[Trigger] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # the timeline's events, real monotonic times
    # Where the VM goes: its image's path there, the return path's socket and the
    # link's one-way delay (real s), for a technique that moves the guest itself.
    destination: dict = field(default_factory=dict)
    postcopy_requested: bool = False  # set when a start-postcopy trigger fires
    act: object = None  # callable(Trigger): the host carries out a fault trigger on the spot
    fired: set = field(default_factory=set)  # triggers that fired (each fires once)
    # Split migration: the source's access history of this VM (agents/split/history.py), if kept.
    access_history: object = None

    def record(self, event: str, **fields) -> None:
        self.events.append({"t_real": time.monotonic(), "event": event, **fields})

    def enter(self, phase: str, iteration: int = 0) -> bool:
        """Record entering `phase`; fire its triggers. True when one of them cancels the migration."""
        self.record("phase", phase=phase, iteration=iteration)
        cancel = False
        for tr in self.triggers:
            if tr.phase == phase and tr.iteration in (0, iteration) and tr.event not in self.fired:
                self.fired.add(tr.event)
                self.record("trigger", trigger=tr.event, phase=phase, iteration=iteration)
                cancel |= tr.cancel
                self.postcopy_requested |= tr.postcopy
                if (tr.link_down is not None or tr.crash) and self.act is not None:
                    self.act(tr)
        return cancel


class Technique(Protocol):
    """One VM's migration, on its source host.

    - `connections_needed(options)`: the plan, before anything starts.
    - `from_options(ctx, options)`: build it from the scenario's options
      (physical units, the names the technique declares in agents/techniques/options.py).
    - `run()`: migrate, ending with `switch_over()`; returns when the VM runs
      on the destination (status "completed") or still on its source
      ("cancelled", "aborted", "failed").
    - `switch_over(...)`: stop the VM, send what is left and its device
      state, hand it to the destination (pre-copy: stop-and-copy; post-copy
      will switch first and keep sending after).
    - `abort(status, reason)`: ask `run()` to stop as soon as it can; the VM
      stays on its source with its memory untouched.
    - `cleanup()` (optional): called by the host once `run()` has ended, however it
      ended (an exception or a fault included): release what the technique started
      besides the pipeline (storage: cancel a disk copy still going). Idempotent.
    - `progress()`: phase, iteration, remaining bytes (emulated), for the timeline.
    - `report()`: the technique's own figures for result.json.
    """

    name: ClassVar[str]

    @classmethod
    def connections_needed(cls, options) -> int: ...

    @classmethod
    def from_options(cls, ctx: MigrationContext, options) -> "Technique": ...

    def run(self): ...

    def switch_over(self, *args): ...

    def abort(self, status: str = "cancelled", reason: str = "") -> None: ...

    def progress(self) -> dict: ...

    def report(self) -> dict: ...
