"""Pre-copy live migration (Clark et al.; PMigrate §2.1 Figure 1; S-memV §II): the
`precopy` technique.

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

Two stop rules for the image-oriented strategy, each named after its source:
- pass (PMigrate's image-oriented iteration): the rule is checked after each
  whole pass, against the bandwidth that pass measured;
- qemu (QEMU's migration_iteration_run): about every 100 ms (BUFFER_DELAY)
  the bandwidth of the last window gives threshold = bandwidth x downtime
  limit; once what is left of the pass is below it, the dirty log is synced
  mid-pass (ram_state_pending_exact), the rest of the pass joins the newly
  dirtied pages, and the migration completes if that total is below the
  threshold. The walk goes on from where it stopped (QEMU's bitmap cursor).
  At a high dirty rate this gives more, shorter iterations.

A bandwidth cap is QEMU's max-bandwidth: it paces the iterations, and is
lifted when the VM stops (the rest leaves at the link's speed) unless
switchover_bandwidth is "capped".

XBZRLE starts as QEMU's does (ram.c, xbzrle_started): only once the walk
has completed its first round over the image. Until then pages go whole and
nothing is cached; the data path is told by the phase "bulk".

Convergence control (auto-converge, dirty-limit, SDPS) lives in
agents/techniques/convergence.py; this module only calls its `Governor` at
each dirty-log sync, lets it keep pre-copy going past a stop other than
convergence while it can still slow the guest, and lifts its throttle at the end.

A management-layer policy (agents/techniques/policy.py: Nova's or
KubeVirt's timeouts, Nova's downtime steps, a hard maximum downtime) watches
from its own thread, every `policy_monitor_period_s` emulated seconds (Nova's
libvirt driver polls the job in `_live_migration_monitor` every 0.5 s): it
raises the downtime limit when a step begins and, on a timeout, cancels (the
pass under way ends at once) or forces the switch-over (post-copy where the
technique has it, else the VM is paused now, Nova's force_complete, and the
pass finishes with the guest stopped). It is asked again at each stop-rule
check, after the stop rule and convergence control (`_stop_check`), where it
may also refuse a stop-and-copy; each decision is a `policy` event at the
time it was taken.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

import numpy as np

from agents.datapath.clock import sleep_until
from agents.techniques.base import MigrationContext
from agents.techniques.convergence import Governor, SyncPeriod, policy_from_options
from agents.techniques.policy import Policy, settings_from_options

GIB = 1 << 30
_ABORTED = object()  # _before_pass: the migration was cancelled or aborted
WINDOW_S = 0.1  # QEMU's BUFFER_DELAY: how often the qemu stop rule looks (emulated seconds)
MONITORED_PHASES = ("disk-copy", "setup", "precopy")  # where the management policy's monitor loop looks


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


@dataclass
class Iteration:
    number: int
    dirty_pages: int  # emulated pages to send in this iteration
    wire_bytes: float  # emulated
    duration_s: float  # emulated
    bandwidth_bytes_s: float


@dataclass
class PrecopyResult:
    status: str = "running"  # then completed | cancelled | aborted | failed
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
    """Runs one VM's pre-copy on the source. Sizes in, figures out: emulated units.

    Events recorded in the context (QEMU's names where one fits): `setup`,
    `iteration` (its number, dirty-sync-count, transferred so far, remaining,
    dirty-pages-rate, expected-downtime, and its own bytes), `stop` (the stop
    rule's reason), `rate-limit` (the cap set or lifted), `policy` (a management policy's decision),
    then the downtime checkpoints `vm-stopped`, `last-page-sent`,
    `device-state-sent`, `destination-loaded`, `vm-started`; or `cancelled`.
    """

    name: ClassVar[str] = "precopy"

    def __init__(self, ctx: MigrationContext, policy: StopPolicy, state_bytes: float, setup_s: float,
                 strategy: str = "image", slice_bytes: float = 2 * 2**20, resume_s: float = 0.0,
                 io_thread_taken: float = 0.0, stop_rule: str = "pass", cap_bytes_s: float | None = None,
                 switchover_bandwidth: str = "link", convergence=None) -> None:
        self.ctx = ctx
        self.vm = ctx.vm
        self.image = ctx.image
        self.guest = ctx.guest
        self.sink = ctx.sink
        self.policy = policy
        self.scale = ctx.memory_scale
        self.dilation = ctx.dilation
        self.state_bytes = state_bytes
        self.setup_s = setup_s
        self.strategy = strategy
        self.resume_s = resume_s
        self.io_thread_taken = io_thread_taken
        self.stop_rule = stop_rule
        self.cap_bytes_s = cap_bytes_s  # emulated bytes/s; None: no cap
        self.switchover_bandwidth = switchover_bandwidth
        self.slice_pages = max(1, int(round(slice_bytes * self.scale / 4096)))
        self.result = PrecopyResult()
        self.phase = "setup"
        self.remaining_bytes = float(len(self.image) * 4096) / self.scale
        self.dirty_syncs = 0
        self._pass_pages = 0  # pages of the pass under way, and the sink's count when it began
        self._pass_started_at = 0
        self.abort_requested = False
        self._abort_as = ("cancelled", "cancelled")
        # `convergence`: a policy of agents/techniques/convergence.py, or None.
        self.governor = Governor(convergence, ctx.guest, ctx.record) if convergence else None
        self._sync_at = (0.0, 0.0)  # real time and bytes sent (emulated) at the last sync
        self.mgmt: Policy | None = None  # the management layer's policy (agents/techniques/policy.py)
        self.mgmt_period_s = 0.5  # how often it looks (emulated seconds)
        self.job_started_at: float | None = None  # real: the whole job's start (a disk copy first), as Nova times it
        self._monitoring = False
        self._policy_said: set = set()
        self._policy_lock = threading.Lock()  # the policy's state: asked by its monitor and at stop checks
        self._bandwidth = 0.0  # the last measured bandwidth (emulated bytes/s), for the monitor
        self._forced_at: float | None = None  # when a forced completion paused the VM (real)

    # --- the technique interface ------------------------------------------
    @classmethod
    def connections_needed(cls, options) -> int:
        return options.consumers

    @classmethod
    def from_options(cls, ctx: MigrationContext, o) -> "PrecopyMigration":
        """`o`: the scenario's migration options (cluster/scenario.py `Migration`), physical units."""
        memory_bytes = len(ctx.image) * 4096 / ctx.memory_scale
        policy = StopPolicy(o.downtime_limit_ms / 1000, o.max_iterations, o.stall_iterations,
                            o.max_sent_ratio * memory_bytes)
        cap = o.bandwidth_cap_gbps * 1e9 / 8 if o.bandwidth_cap_gbps else None
        return cls(ctx, policy, o.device_state_kib * 1024, o.setup_ms / 1000, o.strategy, o.slice_mib * 2**20,
                   o.resume_ms / 1000, o.io_thread_taken, getattr(o, "stop_rule", "pass"), cap,
                   getattr(o, "switchover_bandwidth", "link"), policy_from_options(o))._with_policy(o)

    def _with_policy(self, o) -> "PrecopyMigration":
        """Attach the management policy the options name (`policy` and its settings), if any."""
        settings = settings_from_options(o)
        if settings is not None:
            memory_bytes = len(self.image) * 4096 / self.scale
            self.mgmt = Policy(settings, memory_bytes, self.policy.downtime_limit_s, postcopy=self.name == "postcopy")
            self.mgmt_period_s = getattr(o, "policy_monitor_period_s", self.mgmt_period_s)
            self.policy = replace(self.policy, downtime_limit_s=self.mgmt.downtime_limit_s(0.0))
        return self

    def abort(self, status: str = "cancelled", reason: str = "cancelled") -> None:
        self._abort_as = (status, reason)
        self.abort_requested = True

    def progress(self) -> dict:
        """QEMU's query-migrate view: `remaining_bytes` falls as this pass's pages go out."""
        r = self.result
        sent = getattr(self.sink, "pages_sent", 0) - self._pass_started_at
        remaining = self.remaining_bytes
        if self.phase == "precopy" and self._pass_pages:
            remaining = max(0.0, self.remaining_bytes - min(sent, self._pass_pages) * 4096 / self.scale)
        return {"phase": self.phase, "status": r.status, "remaining_bytes": remaining,
                "iteration": r.iteration_count + (1 if self.phase == "precopy" else 0),
                "dirty_sync_count": self.dirty_syncs}

    def report(self) -> dict:
        return asdict(self.result) | {"dirty_sync_count": self.dirty_syncs}

    # --- the mechanism -------------------------------------------------------
    def _emu(self, real_s: float) -> float:
        return real_s / self.dilation

    def _control_hop(self, t_call: float, t_returned: float, busy_real_s: float = 0.0) -> None:
        """A Ray call made while the VM is stopped (resuming the guest elsewhere, holding
        its disk): its round trip, less `busy_real_s` of emulated work done inside it, is
        the emulator's, not the hypervisor's, and is left out of the downtime (DESIGN.md:
        no control-plane round trip inside a downtime). Recorded as `control-plane-hop`."""
        hop = max(0.0, (t_returned - t_call) - busy_real_s)
        self.ctx.events.append({"t_real": t_returned, "event": "control-plane-hop", "excluded_s": self._emu(hop)})

    def _enter(self, phase: str, iteration: int = 0) -> None:
        self.phase = phase
        if phase in MONITORED_PHASES and self.mgmt is not None and not self._monitoring:
            self._monitoring = True
            threading.Thread(target=self._policy_monitor, daemon=True, name="policy-monitor").start()
        if self.ctx.enter(phase, iteration):
            self.abort("cancelled", f"cancelled by a scheduled event on entering {phase}")

    def _rate_limit(self, emulated_bytes_s: float | None) -> None:
        """Ask the data path to pace this migration (None: as fast as the links go)."""
        real = None if emulated_bytes_s is None else emulated_bytes_s * self.scale / self.dilation
        self.sink.set_rate_limit(real)
        self.ctx.record("rate-limit", bytes_s=emulated_bytes_s)

    def _harvest(self, at: float | None = None) -> np.ndarray:
        """A dirty-log sync; `at`: when it began on the emulated schedule (see GuestControl.harvest;
        default: after a forced pause, `_sync_due()`; otherwise when it is made)."""
        self.dirty_syncs += 1
        at = self._sync_due() if at is None else at
        idx = self.guest.harvest() if at is None else self.guest.harvest(at=at)
        if self.governor is not None:
            self._convergence_sync(len(idx))
        return idx

    # --- convergence control hooks (agents/techniques/convergence.py) ----------
    def _convergence_sync(self, dirty_pages: int) -> None:
        """After a dirty-log sync: tell the governor what the period since the last one saw."""
        now, sent = time.monotonic(), self.result.memory_bytes_sent
        t0, sent0 = self._sync_at
        self._sync_at = (now, sent)
        dirtied = dirty_pages * 4096 / self.scale
        self.governor.on_sync(self.dirty_syncs, SyncPeriod(self._emu(now - t0), dirtied, sent - sent0,
                                                           self.remaining_bytes, dirtied))

    def _converging(self, why: str | None) -> bool:
        """True when the governor keeps pre-copy going past the stop rule's `why`."""
        return self.governor is not None and self.governor.overrides(why, self.dirty_syncs)

    # --- the management policy (agents/techniques/policy.py) ----------------------------
    def _stop_check(self, iteration: int, remaining: float, bandwidth: float, history: list[float],
                    stall: bool = True) -> str | None:
        """Why pre-copy stops now, or None: the stop rule, then convergence control, then the
        policy, which may change the downtime limit, cancel (abort_requested is then set),
        force a switch ("policy-force") or refuse a stop-and-copy."""
        elapsed = self._policy_elapsed()
        self._bandwidth = bandwidth
        if self.mgmt is not None:
            with self._policy_lock:
                self._policy_limit(elapsed)
        rule = self.policy if stall else replace(self.policy, stall_iterations=1 << 30)
        why = stop_reason(rule, iteration, remaining, bandwidth, history, self.result.memory_bytes_sent)
        why = None if self._converging(why) else why
        if self._forced_at is not None:
            return "policy-force"  # the monitor forced it: the VM is paused already
        if self.mgmt is None:
            return why
        with self._policy_lock:
            d = self.mgmt.decide(elapsed, remaining, bandwidth, why)
        if d.action == "go-on":
            return why
        self._policy_record(d, elapsed, remaining)
        if d.action == "cancel":
            self.abort("cancelled", f"policy: {d.reason}")
            return None
        return "policy-force" if d.action == "force" else None

    def _policy_record(self, d, elapsed: float, remaining: float) -> None:
        if (d.action, d.reason) not in self._policy_said:
            self._policy_said.add((d.action, d.reason))
            self.ctx.record("policy", decision=d.action, reason=d.reason, elapsed_s=elapsed, remaining=remaining,
                            downtime_limit_ms=self.policy.downtime_limit_s * 1000)

    def _policy_monitor(self) -> None:
        """The management layer's monitor loop: every `mgmt_period_s` (emulated) while
        pre-copy runs, the downtime step under way and the timeouts, against query-migrate."""
        period = self.mgmt_period_s * self.dilation
        due = time.monotonic() + period
        while self.phase in MONITORED_PHASES and not self.abort_requested:
            sleep_until(due)
            due += period
            if self.phase not in MONITORED_PHASES or self.abort_requested or self._forced_at is not None:
                return
            elapsed = self._policy_elapsed()
            remaining = self.progress()["remaining_bytes"]
            with self._policy_lock:
                self._policy_limit(elapsed)
                d = self.mgmt.decide(elapsed, remaining, self._bandwidth, None)
            if d.action in ("cancel", "force"):
                self._policy_record(d, elapsed, remaining)
                if d.action == "cancel":
                    self.abort("cancelled", f"policy: {d.reason}")
                else:
                    self._force(d.reason)

    def _policy_elapsed(self) -> float:
        """Emulated seconds since the job started: Nova's timeouts and downtime steps count the
        whole job, a storage migration's disk copy included."""
        return self._emu(time.monotonic() - (self.job_started_at or self.result.started_at))

    def _force(self, reason: str) -> None:
        """A timeout's force_complete without post-copy: pause the VM now (Nova: guest.pause());
        the pass under way finishes with nothing dirtied, then the stop-and-copy."""
        self._forced_at = self.guest.pause()
        self.ctx.record("vm-stopped", t_real=self._forced_at, by=f"policy-force: {reason}")

    def _policy_limit(self, elapsed: float) -> None:
        """Apply the downtime limit of the policy's step under way."""
        limit = self.mgmt.downtime_limit_s(elapsed)
        if limit == self.policy.downtime_limit_s and not self.mgmt.schedule():
            return
        if ("limit", limit) not in self._policy_said:
            self._policy_said.add(("limit", limit))
            self.policy = replace(self.policy, downtime_limit_s=limit)
            self.ctx.record("policy", decision="downtime-limit", reason="downtime step", elapsed_s=elapsed,
                            downtime_limit_ms=limit * 1000)

    def _convergence_stop(self) -> None:
        if self.governor is not None:
            self.governor.stop()
            self.governor = None

    def run(self) -> PrecopyResult:
        r = self.result
        t0 = r.started_at = time.monotonic()
        self.ctx.record("setup")
        self._enter("setup")
        if not self.abort_requested:
            time.sleep(self.setup_s * self.dilation)  # connection set-up, destination VM creation
        r.setup_time_s = self._emu(time.monotonic() - t0)
        self.guest.start_dirty_log()
        self.dirty_syncs += 1  # QEMU counts the sync that starts dirty logging
        self._sync_at = (time.monotonic(), 0.0)
        if self.cap_bytes_s:
            self._rate_limit(self.cap_bytes_s)
        if self.strategy == "time-sliced":
            # Vanilla KVM migrates from the guest's I/O thread.
            self.guest.take_io_thread(self.io_thread_taken)
            try:
                todo = self._time_sliced()
            finally:
                self.guest.take_io_thread(0.0)
        elif self.stop_rule == "qemu":
            todo = self._qemu_rule()
        else:
            todo = self._image_oriented()
        if todo is None:
            return self._cancel()
        return self.switch_over(todo)

    def _iteration_done(self, number: int, pages: int, wire_emu: float, dt: float, remaining: float,
                        dirtied: float | None = None) -> None:
        """Record an iteration with query-migrate's meanings: `transferred` is the
        bytes sent so far (all iterations), `remaining` the dirty bytes after this
        sync, `expected_downtime_s` those over this iteration's bandwidth (QEMU's
        dirty_bytes_last_sync / bandwidth); `bytes` is this iteration's own,
        `dirty_pages_rate` the pages the sync found dirtied, per second."""
        bandwidth = wire_emu / dt if dt > 0 else float("inf")
        dirtied = remaining if dirtied is None else dirtied
        self.ctx.record("iteration", iteration=number, dirty_sync_count=self.dirty_syncs, pages=pages,
                        bytes=wire_emu, transferred=self.result.memory_bytes_sent, duration_s=dt,
                        remaining=remaining, dirty_pages_rate=dirtied / 4096 / dt
                        if dt > 0 else 0.0,
                        expected_downtime_s=remaining / bandwidth if bandwidth > 0 else None)

    def _image_oriented(self) -> np.ndarray | None:
        """Passes over the dirty image; returns what is left for stop-and-copy (None: aborted)."""
        r = self.result
        todo = np.arange(len(self.image))
        history: list[float] = []
        bandwidth = 0.0
        page_bytes = 4096 / self.scale
        while True:
            gate = self._before_pass(todo, bandwidth, history)
            if gate is not None:
                return None if gate is _ABORTED else todo
            t_it = time.monotonic()
            self._pass_pages, self._pass_started_at = len(todo), getattr(self.sink, "pages_sent", 0)
            # The first pass is QEMU's first round: no XBZRLE yet.
            phase = "bulk" if not r.iterations else "precopy"
            wire = self.sink.send_pages(self.vm, self.image, todo, phase, lambda: self.abort_requested)
            # A pass ends when its pages have arrived: the bandwidth measured is
            # the link's, and nothing of this pass is left in flight at stop-and-copy.
            self.sink.drain()
            dt = self._emu(time.monotonic() - t_it)
            wire_emu = wire / self.scale
            bandwidth = wire_emu / dt if dt > 0 else float("inf")
            r.memory_bytes_sent += wire_emu
            r.iterations.append(Iteration(len(r.iterations) + 1, int(round(len(todo) / self.scale)), wire_emu, dt, bandwidth))
            r.iteration_count = len(r.iterations)
            todo = self._harvest()
            self._iteration_done(r.iteration_count, r.iterations[-1].dirty_pages, wire_emu, dt, len(todo) * page_bytes)

    def _before_pass(self, todo: np.ndarray, bandwidth: float, history: list[float]):
        """Checked before every pass over `todo`: _ABORTED, the stop rule's
        reason (stop-and-copy next), or None (run the pass)."""
        r = self.result
        if self.abort_requested:
            return _ABORTED
        remaining = len(todo) * 4096 / self.scale
        self.remaining_bytes = remaining
        if r.iterations:
            why = self._stop_check(len(r.iterations), remaining, bandwidth, history)
            if self.abort_requested:
                return _ABORTED
            if why:
                r.stop_reason = why
                self.ctx.record("stop", reason=why)
                return why
        history.append(remaining)
        self._enter("precopy", len(r.iterations) + 1)
        return _ABORTED if self.abort_requested else None

    def _qemu_rule(self) -> np.ndarray | None:
        """QEMU's iterations: windows of ~100 ms, a mid-pass sync once the rest
        of the pass fits in the threshold; returns what is left for
        stop-and-copy (None: aborted)."""
        r = self.result
        todo = np.arange(len(self.image))
        page_bytes = 4096 / self.scale
        history: list[float] = []
        cursor, started = 0, False
        bandwidth = 0.0  # emulated bytes/s of the last window
        while True:
            gate = self._before_pass(todo, bandwidth, history)
            if gate is not None:
                return None if gate is _ABORTED else todo
            t_it = time.monotonic()
            # The walk goes on from the cursor and wraps; XBZRLE starts at the first wrap.
            first = int(np.searchsorted(todo, cursor))
            order = np.concatenate([todo[first:], todo[:first]])
            wire, pos, bandwidth, wrapped = self._windows(order, len(todo) - first, started, bandwidth)
            started |= wrapped
            if pos:
                cursor = int(order[pos - 1]) + 1
            if self.abort_requested:
                return None
            dt = self._emu(time.monotonic() - t_it)
            r.memory_bytes_sent += wire
            r.iterations.append(Iteration(len(r.iterations) + 1, int(round(pos / self.scale)), wire, dt,
                                          wire / dt if dt > 0 else float("inf")))
            r.iteration_count = len(r.iterations)
            # The sync: the rest of the pass joins what the guest dirtied meanwhile.
            mask = np.zeros(len(self.image), dtype=bool)
            mask[order[pos:]] = True
            dirtied = self._harvest()
            mask[dirtied] = True
            todo = np.flatnonzero(mask)
            self._iteration_done(r.iteration_count, r.iterations[-1].dirty_pages, wire, dt, len(todo) * page_bytes,
                                 len(dirtied) * page_bytes)

    def _windows(self, order: np.ndarray, to_wrap: int, started: bool, bandwidth: float):
        """Send `order` in windows of ~WINDOW_S until what is left of it fits in
        bandwidth x downtime limit. Returns (emulated wire bytes, pages sent,
        the last window's bandwidth, whether the walk wrapped)."""
        page_bytes = 4096 / self.scale
        wire = 0.0
        pos = 0
        wrapped = to_wrap == 0  # nothing left before the end of the image: the walk wraps at once
        while pos < len(order) and not self.abort_requested:
            want = bandwidth * WINDOW_S / page_bytes if bandwidth > 0 else 256
            n = min(max(16, int(want)), len(order) - pos)
            if pos < to_wrap:
                n = min(n, to_wrap - pos)  # a window does not straddle the wrap: XBZRLE may start there
            phase = "precopy" if started or wrapped else "bulk"
            t0 = time.monotonic()
            sent = self.sink.send_pages(self.vm, self.image, order[pos:pos + n], phase, lambda: self.abort_requested)
            dt = self._emu(time.monotonic() - t0)
            pos += n
            wrapped |= pos == to_wrap
            wire += sent / self.scale
            bandwidth = sent / self.scale / dt if dt > 0 else bandwidth
            if (len(order) - pos) * page_bytes <= bandwidth * self.policy.downtime_limit_s:
                break  # QEMU: pending below the threshold, sync now
        return wire, pos, bandwidth, wrapped

    def _time_sliced(self) -> np.ndarray | None:
        """Slices of the dirty set, one per iteration, in address order; QEMU 0.14's stage 2.

        A slice ends when it has put `slice_bytes` on the wire (QEMU's rate
        limit counts bytes sent, so a slice of zero pages covers many pages).
        """
        r = self.result
        pending = np.ones(len(self.image), dtype=bool)
        cursor = 0
        started = False  # XBZRLE starts once the walk has wrapped (QEMU's xbzrle_started)
        page_bytes = 4096 / self.scale
        slice_wire = self.slice_pages * 4096
        self._enter("precopy", 1)
        while True:
            if self.abort_requested:
                return None
            t_it = time.monotonic()
            pending[self._harvest()] = True
            wire = sent_pages = 0
            while wire < slice_wire:
                dirty = np.flatnonzero(pending)
                if not len(dirty):
                    break
                # Continue where the last slice stopped, wrapping around.
                first = np.searchsorted(dirty, cursor)
                chosen = np.concatenate([dirty[first:], dirty[:first]])[: self.slice_pages]
                pending[chosen] = False
                phase = "precopy" if started else "bulk"
                started |= bool(chosen[-1] < chosen[0]) or int(chosen[-1]) + 1 >= len(self.image)
                cursor = int(chosen[-1]) + 1
                sent_pages += len(chosen)
                wire += self.sink.send_pages(self.vm, self.image, chosen, phase, lambda: False)
            # A slice ends when its bytes have crossed the link, as a pass does: QEMU 0.14
            # measured what its buffered file wrote out, and a socket holds ~nothing of an
            # emulated slice; what the ring holds is real bytes (a fixed number of real
            # batches), so a backlog left in it would be emulated seconds that shrink with
            # memory_scale and batch size, and would be sent during the downtime.
            self.sink.drain()
            dt = self._emu(time.monotonic() - t_it)
            wire_emu = wire / self.scale
            r.memory_bytes_sent += wire_emu
            r.iteration_count += 1
            bandwidth = wire_emu / dt if dt > 0 else float("inf")
            remaining = int(np.count_nonzero(pending)) * page_bytes
            self.remaining_bytes = remaining
            self._iteration_done(r.iteration_count, int(round(sent_pages / self.scale)), wire_emu, dt, remaining)
            why = self._stop_check(r.iteration_count, remaining, bandwidth, [], stall=False)
            if self.abort_requested:
                return None
            if why:
                r.stop_reason = why
                self.ctx.record("stop", reason=why)
                return np.flatnonzero(pending)

    def switch_over(self, todo: np.ndarray) -> PrecopyResult:
        """Stop-and-copy. `todo`: pages harvested but not sent; the last
        harvest adds what the guest dirtied since. A cancel that arrives while
        the VM is stopped resumes it on the source."""
        r = self.result
        self._enter("stop-and-copy")
        if self.abort_requested:  # cancelled on entering: the VM is not stopped at all
            return self._cancel()
        r.paused_at = self._forced_at  # a policy's force paused it mid-pass: that pass sent on after it
        if r.paused_at is None:
            r.paused_at = self.guest.pause()
            self.ctx.record("vm-stopped", t_real=r.paused_at)
        self._convergence_stop()  # the final sync belongs to no throttling period
        # A mask, not np.union1d: that one loads lazily, costing ~10 ms of downtime on first use.
        mask = np.zeros(len(self.image), dtype=bool)
        mask[todo] = True
        # The last sync is charged from the pause on (after a forced pause, from where the pass
        # and the sync after it ended: `_sync_due`), and the last pages are ready when its
        # charge ended: this machine's delay in harvesting and handing over (1-17 ms under
        # load) is made up by the batches' charges, not added to the downtime at dilation 1.
        mask[self._harvest(at=self._stopped_at(self._sync_due() or r.paused_at))] = True
        ready = self.guest.synced_at
        todo = np.flatnonzero(mask)
        self.guest.stop_dirty_log()
        if self.abort_requested:
            return self._cancel(paused=True)
        if self.cap_bytes_s and self.switchover_bandwidth == "link":
            self._rate_limit(None)  # QEMU lifts max-bandwidth for the last stage
        wire = self.sink.send_pages(self.vm, self.image, todo, "downtime", lambda: self.abort_requested, at=ready)
        self.ctx.record("last-page-sent", bytes=wire / self.scale)
        if self.abort_requested:
            return self._cancel(paused=True)
        self.sink.send_state(self.vm, max(1, int(self.state_bytes * self.scale)), at=ready)
        self.ctx.record("device-state-sent", bytes=self.state_bytes)
        loaded = self.sink.drain()
        self.ctx.record("destination-loaded", t_real=loaded)
        # The destination restores devices and resumes: a fixed cost of the platform.
        r.resumed_at = loaded + self.resume_s * self.dilation
        sleep_until(r.resumed_at)
        self.ctx.record("vm-started", t_real=r.resumed_at)
        self.remaining_bytes = 0.0
        r.downtime_bytes = wire / self.scale + self.state_bytes
        r.memory_bytes_sent += wire / self.scale
        r.downtime_s = self._emu(r.resumed_at - r.paused_at)
        r.total_time_s = self._emu(r.resumed_at - r.started_at)
        r.status = "completed"
        self.phase = "switchover"
        return r

    def _sync_due(self) -> float | None:
        """When the next dirty-log sync begins on the emulated schedule (real monotonic s); None
        while the guest runs (when it is made). After a policy's forced pause the pass under way
        went on sending with the VM stopped, and every moment from the pause on is downtime: the
        syncs follow that pass's own schedule (where its sending ended on its batches' stamps,
        then where the sync before ended), as the stop-and-copy's follows the pause, not this
        machine's lateness in getting to them (QEMU's migration_bitmap_sync, `dirty_sync_ns`)."""
        if self._forced_at is None:
            return None
        return max(self._forced_at, self.sink.pass_ended_at, self.guest.synced_at)

    def _stopped_at(self, paused_at: float) -> float:
        """When the stop-and-copy's own work begins on the emulated schedule (real monotonic s):
        at the pause. A technique with work of its own while the VM is stopped, before the last
        sync (storage: the mirror's last writes), says when that ended."""
        return paused_at

    def _cancel(self, paused: bool = False) -> PrecopyResult:
        """Abandon the migration: the guest keeps running on the source, whose
        memory the migration only ever read."""
        r = self.result
        self.sink.drain()
        self._convergence_stop()
        self.guest.stop_dirty_log()  # no more write-protection faults for the guest
        if paused or self._forced_at is not None:
            self.guest.resume()
        r.status, r.stop_reason = self._abort_as
        r.total_time_s = self._emu(time.monotonic() - r.started_at)
        self.ctx.record(r.status, reason=r.stop_reason, during=self.phase)
        self.phase = r.status
        return r
