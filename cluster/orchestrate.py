"""Orchestrating migrations: start each on time, watch them all, switch over.

The guests run a warm-up first (`[emulation] warmup_s`), so their throughput
before migration is measured, and the run goes on `after_s` after the last
switch-over, for their throughput after it. Then each migration starts at its `start_s` (a VM's migrations one
after the other), scheduled events fire at their time or when a migration
reaches their phase, and every interval the orchestrator samples each
migration, link, host and guest into the timeline (cluster/timeline.py).
When a migration ends it is verified page for page and its VM resumes on the
destination; a cancelled or failed one leaves the VM running on its source
and the destination's partial copy is discarded. Ctrl-C aborts every
migration the same way. Faults (link down, a corrupted batch, a killed
destination, a crashed migration thread) are events too, carried out and
judged by cluster/faults.py; every call to an actor has a deadline and a
dead actor is a fault's outcome, not a hang. Figures are computed afterwards, from the timeline
(cluster/collect.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from cluster import crossnode, split_run
from cluster.build import RunOptions, Slice, splits, swaps
from cluster.faults import ACTOR_CALL_S, FAULT_KINDS, FaultInjector
from cluster.scenario import GIB, MIB
from cluster.timeline import Timeline

PAGE = 4096
LOST = "(lost)"  # where a VM lost in post-copy runs: nowhere (result.json's final hosts)
VERIFY_S = 600.0  # real seconds two hosts may take to digest their images (a TiB at 2 GB/s)
FINISHED = ("completed", "cancelled", "aborted", "failed")
MIN_SAMPLE_REAL_S = 0.1


@dataclass
class MigrationState:
    """The driver's view of one migration (also what a progress display shows)."""

    index: int
    vm: str
    vm_index: int
    plan: object  # cluster.scenario.MigrationPlan
    status: str = "pending"  # running, then one of FINISHED
    phase: str = "pending"
    iteration: int = 0
    memory_bytes: float = 0.0
    remaining_bytes: float = 0.0
    sent_bytes: float = 0.0
    throughput_bytes_s: float = 0.0
    reason: str = ""
    t_start: float = 0.0  # real monotonic
    t_end: float = 0.0
    events_seen: int = 0
    counters: dict = field(default_factory=dict)  # last cumulative counters, emulated units
    # (real monotonic t, delivered bytes so far) back to a sampling period ago: the transfer rate's window
    delivered_window: list = field(default_factory=list)
    last_iteration: dict = field(default_factory=dict)  # the latest `iteration` event
    usage_after: dict = field(default_factory=dict)  # host name -> CorePool.usage() when it ended
    receiver: dict = field(default_factory=dict)  # the destination's receivers, when it ended
    links_before: dict = field(default_factory=dict)  # link index -> LinkAgent.stats()
    links_after: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)  # the last poll
    report: dict = field(default_factory=dict)
    verified: bool = False
    mismatched: list = field(default_factory=list)
    misplaced: int = 0  # split migration: pages not on exactly one host
    src_key: str = ""  # split migration: the source's image key (its copy stays as it was at the switch-over)
    split: dict = field(default_factory=dict)  # split migration: remote paging's figures (filled in at the end)
    swap_during: dict = field(default_factory=dict)  # swap-assisted: the destination's paging while it migrated
    guest_resumed_at: float | None = None
    guest_faults: float = 0.0  # the guest's dirty-tracking faults (filled in at the end)
    vm_lost: bool = False  # a post-copy that could not finish: neither side holds the whole VM (or a split VM's pages)
    lost: dict = field(default_factory=dict)  # split migration: what a killed memory server took with it
    remote_faults: dict = field(default_factory=dict)  # post-copy: the guest's faults on the destination
    ref: object = None  # the pending HostAgent.wait call


def verify_images(src, dst, src_key: str, dst_key: str, npages: int, excused=None) -> list[int]:
    """Page numbers whose contents differ between the two hosts' images, but for
    those `excused()` returns (pages the guest wrote on the destination after a post-copy
    switch; asked after the digests, so a page written while they were taken is among them)."""
    import ray

    from agents.verify import chunk_pages, mismatched
    bad_chunks = mismatched(*ray.get([src.digests.remote(src_key), dst.digests.remote(dst_key)], timeout=VERIFY_S))
    if len(bad_chunks) == 0:
        return []
    idx = chunk_pages(bad_chunks, npages)
    bad = idx[mismatched(*ray.get([src.page_digests.remote(src_key, idx), dst.page_digests.remote(dst_key, idx)],
                                  timeout=VERIFY_S))]
    if excused is not None and len(bad):
        bad = np.setdiff1d(bad, excused())
    return bad.tolist()


_NO_USAGE = {"charged_s": 0.0, "held_s": 0.0, "overrun_s": 0.0, "charged_by": {}, "held_by": {}}  # a dead host's


def _unlink(path: str) -> None:
    import os
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_NO_RECEIVER = {"pages_restored": 0, "errors": [], "decode_s": 0.0, "decode_model_us": 0.0}


def _merged_receivers(orch: "Orchestrator", m: MigrationState, conns: list[int]) -> dict:
    """The receivers of every host of a split migration, added up (a dead host's: nothing)."""
    parts = [orch.call(orch.sl.hosts[h.name].receiver_status.remote(conns)) or _NO_RECEIVER
             for h in m.plan.destinations]
    return {"pages_restored": sum(p["pages_restored"] for p in parts), "errors": [e for p in parts for e in p["errors"]],
            "decode_s": sum(p["decode_s"] for p in parts), "decode_model_us": sum(p["decode_model_us"] for p in parts)}


class Orchestrator:
    def __init__(self, sl: Slice, timeline: Timeline, opts: RunOptions) -> None:
        self.sl, self.tl, self.opts = sl, timeline, opts
        self.scale = sl.scale
        self.migs = [MigrationState(mp.index, mp.vm.name, mp.vm_index, mp, memory_bytes=mp.vm.memory_gib * GIB,
                                    remaining_bytes=mp.vm.memory_gib * GIB)
                     for mp in sl.scenario.migration_plans()]
        self.events = list(sl.scenario.events)
        self.fired: set[int] = set()
        self.t_run = self.t_mig = 0.0  # real: guests started; migrations' clock zero
        # The driver's clock (real, monotonic): first migration due (or the run loop's start,
        # if later), the last one seen ended, the window after it ended (the run's phase times).
        self.t_due = self.t_migrated = self.t_after = 0.0
        self._sampled_at = 0.0
        self._samples: dict = {}  # what the previous sample saw, per entity
        self.sampling_s = 0.0  # real seconds the driver spent sampling (the timeline's cost)
        self.link_caps = {lp.index: lp.rate_bytes_s for lp in sl.topo.links}  # real; set-link events change them
        self.link_rates = dict(self.link_caps)  # what each link actor was last told
        self.faults = FaultInjector(self)
        self.fault_list: list[dict] = []  # filled in at the end (cluster/faults.py)
        self.unfired: list[dict] = []  # scenario events the run ended before

    def call(self, ref, default=None, timeout: float = ACTOR_CALL_S):
        """ray.get with a deadline; `default` when the actor is dead or does not answer in time."""
        import ray
        try:
            return ray.get(ref, timeout=timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ray.exceptions.RayTaskError):
            return default

    # --- the run ----------------------------------------------------------------
    def run(self) -> list[MigrationState]:
        self.t_run = self.sl.guests_started_at  # set-up started them (cluster/build.py)
        self.tl.t0 = self.t_run
        self.tl.event(self.t_run, "guests-started")
        windows = self.sl.scenario.emulation
        self.t_mig = self.t_run + self.scale.real_seconds(windows.warmup_s)
        self.t_due = max(time.monotonic(), self.t_mig)
        try:
            self._loop(until=lambda: time.monotonic() >= self.t_mig)
            self._loop(until=lambda: all(m.status in FINISHED for m in self.migs))
        except KeyboardInterrupt:
            self._interrupt()
        self.t_migrated = time.monotonic()  # real: when the driver saw the last migration end
        # The window after is counted from the last switch-over (for post-copy, the source's release,
        # where its "after" starts), not from when the driver saw it end.
        after_s = max(windows.after_s, split_run.observe_after_s(self.sl.scenario))
        ends = [m.guest_resumed_at for m in self.migs if m.guest_resumed_at]
        ends += [self.tl.t0 + r["t"] * self.scale.dilation for r in self.tl.records
                 if r["kind"] == "event" and r["event"] == "source-released"]
        t_after = min(max(ends, default=time.monotonic()), time.monotonic()) + self.scale.real_seconds(after_s)
        self._loop(until=lambda: time.monotonic() >= t_after)
        self.t_after = time.monotonic()
        self._sample(time.monotonic(), force=True)
        self.unfired = [{"index": k, "action": ev.action} for k, ev in enumerate(self.sl.scenario.events)
                        if k not in self.fired]
        for u in self.unfired:  # a fault that never came must not read as one survived
            self.tl.event(time.monotonic(), "event-not-fired", reason="the run ended before it", **u)
        self.fault_list = self.faults.finish({m.index: {"status": m.status, "verified": m.verified,
                                                        "vm_lost": m.vm_lost} for m in self.migs})
        return self.migs

    def _loop(self, until) -> None:
        """Start, fire, finish and sample until `until()`; sleeps between checks, never blocks long."""
        import ray
        # Each sample calls every actor, which costs their processes a little CPU:
        # at least 0.1 real seconds apart (as often as the old runner polled),
        # so a low dilation gives coarser records instead of a slower emulation.
        period = self._sampling_period()
        while not until():
            now = time.monotonic()
            if now >= self.t_mig:
                self._start_due(now)
                self._fire_timed(now)
                self.faults.tick(now)
            if now - self._sampled_at >= period:
                self._sample(now)
            running = [m for m in self.migs if m.status == "running"]
            wait = max(0.0, min(0.05, self._sampled_at + period - time.monotonic()))
            if running:
                done, _ = ray.wait([m.ref for m in running], num_returns=1, timeout=wait)
                for m in running:
                    if m.ref in done:
                        self._finish(m)
            else:
                time.sleep(wait)
            self._progress()

    def _interrupt(self) -> None:
        """Ctrl-C: abort every migration; each VM stays on (or goes back to running on) its source."""
        for m in self.migs:
            if m.status == "pending":
                m.status, m.phase, m.reason = "aborted", "aborted", "interrupted before it started"
                self.tl.event(time.monotonic(), "aborted", vm=m.vm, migration=m.index, reason=m.reason)
        running = [m for m in self.migs if m.status == "running"]
        self.call([self._src(m).cancel.remote(m.index, "aborted", "interrupted (Ctrl-C)") for m in running])
        for m in running:
            self.call(m.ref, timeout=60)
            self._finish(m)

    # --- starting ----------------------------------------------------------------
    def _src(self, m: MigrationState):
        return self.sl.hosts[m.plan.source.name]

    def _dst(self, m: MigrationState):
        return self.sl.hosts[m.plan.destinations[0].name]

    def _start_due(self, now: float) -> None:
        busy = {m.vm_index for m in self.migs if m.status == "running"}
        for m in self.migs:
            if m.status != "pending" or m.vm_index in busy:
                continue
            earlier = [e for e in self.migs if e.vm_index == m.vm_index and e.index < m.index]
            if any(e.status not in FINISHED for e in earlier) or now < self.t_mig + self.scale.real_seconds(m.plan.start_s):
                continue
            self._start(m, now)
            busy.add(m.vm_index)

    def _start(self, m: MigrationState, now: float) -> None:
        import ray
        host, key = self.sl.location[m.vm_index]
        disk, why = self._disk_move(m)
        if host != m.plan.source.name or why:
            m.status = m.phase = "failed"
            m.reason = why or f"{m.vm} runs on {host}, not on {m.plan.source.name}"
            self.tl.event(now, "failed", vm=m.vm, migration=m.index, reason=m.reason)
            return
        src = self._src(m)
        m.links_before = self._link_stats(m)
        m.t_start = time.monotonic()
        m.status, m.phase = "running", "setup"
        self.tl.event(m.t_start, "migration-start", vm=m.vm, migration=m.index, technique=m.plan.technique,
                      source=m.plan.source.name, destination=m.plan.destinations[0].name,
                      destinations=[h.name for h in m.plan.destinations])
        self._share_nics()
        dst_key = self.sl.copy_key(m.vm_index, m.index)
        lps = self.sl.topo.links_of_migration(m.index)
        destination = {"image": self.sl.paths[dst_key], "return_path": f"{self.sl.cluster.sock_dir}/m{m.index}ret",
                       "one_way_s": lps[0].one_way_s if lps else 0.0,
                       "stream_bytes_s": self.sl.topo.stream_rate(m.index) if lps else 0.0}
        if disk is not None:
            destination["disk"] = disk
        elif (io := self._shared_disk_io(m)) is not None:
            destination["disk_io"] = io
        if splits(m.plan):
            destination |= split_run.destination_fields(self.sl, m)
            try:
                split_run.open_memory_servers(self.sl, m, refuse=self.opts.inject_fault == "memory-server-refuses")
            except Exception as exc:  # ray.exceptions.RayTaskError: one line of it
                m.status = m.phase = "failed"
                m.reason = f"a memory server did not start: {str(exc).strip().splitlines()[-1]}"
                split_run.discard(self.sl, m, self.faults.dead_hosts)
                self.tl.event(time.monotonic(), "stays-on-source", vm=m.vm, migration=m.index, host=host,
                              status=m.status, reason=m.reason)
                return
        ray.get(src.migrate.remote(m.index, key, self.sl.guests[m.vm_index], m.plan.technique,
                                   m.plan.options.model_dump(), self._triggers(m), destination), timeout=ACTOR_CALL_S)
        m.ref = src.wait.remote(m.index, 1e9)

    def _disk_move(self, m: MigrationState) -> tuple[dict | None, str]:
        """Migration `m`'s disk move as its VM's disk lies now, or why it cannot start: a
        move was planned from where the disk began (cluster/storage_plan.py), but whether
        an earlier migration moved it is known only now. A disk that stays where it is
        asked to be needs no move; one that would move a second time is refused (its
        first move's agent does not hold it)."""
        target = getattr(m.plan.options, "target_datastore", None)
        here = self.sl.disk_at.get(m.vm_index)
        planned = self.sl.disk_moves.get(m.index)
        if target is None or here is None or here == target:
            return None, ""
        if planned is not None and planned["source"] == here:
            return planned, ""
        return None, (f"{m.vm}'s disk is on {here} after an earlier migration; a disk moves once per run "
                      f"(to {target} it would move again)")

    def _share_nics(self) -> None:
        """Give each link its max-min fair share of the NICs it shares with the
        links of the other running migrations (cluster/fair_share.py)."""

        from cluster.fair_share import max_min_rates
        topo = self.sl.topo
        busy = {lp.index for m in self.migs if m.status == "running" for lp in topo.links_of_migration(m.index)}
        rates = dict(self.link_caps)
        if topo.shared_nics and busy:
            rates |= max_min_rates({lp.index: (self.link_caps[lp.index], lp.nics) for lp in topo.links
                                    if lp.index in busy}, topo.shared_nics)
        rates |= self._split_nic_shares(rates)
        changed = {i: r for i, r in rates.items() if abs(r - self.link_rates[i]) > 1e-6 * max(1.0, r)}
        self._gather([self.sl.links[i].set_bandwidth.remote(r) for i, r in changed.items()])
        self.link_rates |= changed

    def _split_nic_shares(self, rates: dict) -> dict:
        """A split migration's links share the source's NIC dynamically, not by halves:
        each may run up to what they got together, and the source paces them together
        at that (agents/techniques/split.py SplitSink)."""
        import ray
        out, calls = {}, []
        for m in self.migs:
            if m.status != "running" or not splits(m.plan):
                continue
            mine = [lp.index for lp in self.sl.topo.links_of_migration(m.index)]
            together = sum(rates[i] for i in mine)
            out |= {i: min(self.link_caps[i], together) for i in mine}
            calls.append(self._src(m).set_split_nic_rate.remote(m.index, together if len(mine) > 1 else None))
        ray.get(calls)
        return out

    def _triggers(self, m: MigrationState) -> list[dict]:
        """The phase-triggered events of this VM that have not fired yet."""
        out = []
        for k, ev in enumerate(self.events):
            on = getattr(ev, "on", None)
            if on is not None and on.vm == m.vm and k not in self.fired:
                out.append({"event": k, "phase": on.phase, "iteration": on.iteration or 0,
                            "cancel": ev.action == "cancel", "postcopy": ev.action == "start-postcopy",
                            "link_down": self.faults.link_actor(ev.link) if ev.action == "link-down" else None,
                            "crash": ev.action == "crash-migration-thread"})
        return out

    # --- scheduled events --------------------------------------------------------
    def _fire_timed(self, now: float) -> None:
        for k, ev in enumerate(self.events):
            at = getattr(ev, "at_s", None)
            if k in self.fired or at is None or now < self.t_mig + self.scale.real_seconds(at):
                continue
            self._fire(k, now)

    def _fire(self, k: int, now: float, m: MigrationState | None = None) -> None:
        """Carry out event `k`; `m`: the migration whose phase triggered it (a fault on the spot)."""
        ev, scale = self.events[k], self.scale
        self.fired.add(k)
        self.tl.event(now, "scheduled", index=k, action=ev.action, **ev.model_dump(exclude={"action", "on", "at_s"}))
        if ev.action in ("set-link", "set-background"):
            planned = [lp for lp in self.sl.topo.links if lp.name == ev.link]
            if not planned:
                self.tl.event(now, "ignored", index=k, reason=f"no migration uses link {ev.link}")
                return
            link = self.sl.links[planned[0].index]
            calls = []
            if ev.action == "set-background":
                calls.append(link.set_background.remote(scale.real_rate(ev.mbytes_s * MIB)))
            if getattr(ev, "bandwidth_gbps", None) is not None:
                self.link_caps[planned[0].index] = scale.real_rate(ev.bandwidth_gbps * 1e9 / 8)
            if getattr(ev, "rtt_ms", None) is not None:
                calls.append(link.set_one_way.remote(scale.real_seconds(ev.rtt_ms / 2000)))
            self._gather(calls)
            self._share_nics()
        elif ev.action == "set-workload":
            vm = next(i for i, v in enumerate(self.sl.scenario.vms) if v.name == ev.vm)
            self.call(self.sl.guests[vm].set_rate_factor.remote(ev.rate_factor))
        elif ev.action == "cancel":
            self._cancel_vm(ev.vm, now)
        elif ev.action in FAULT_KINDS or ev.action == "link-up":
            self.faults.fire(k, ev, now, m)
        elif ev.action == "start-postcopy":
            running = [m for m in self.migs if m.vm == ev.vm and m.status == "running"]
            if not running or not self.call(self._src(running[0]).start_postcopy.remote(running[0].index), False):
                self.tl.event(now, "ignored", index=k, reason=f"no post-copy migration of {ev.vm} is running")

    def _cancel_vm(self, vm: str, now: float) -> None:
        """Cancel the VM's running migration, or else its next pending one."""
        mine = [m for m in self.migs if m.vm == vm]
        running = [m for m in mine if m.status == "running"]
        if running:
            self.call(self._src(running[0]).cancel.remote(running[0].index, "cancelled", "cancelled by a scheduled event"))
            return
        pending = [m for m in mine if m.status == "pending"]
        if pending:
            m = pending[0]
            m.status, m.phase, m.reason = "cancelled", "cancelled", "cancelled by a scheduled event before it started"
            self.tl.event(now, "cancelled", vm=vm, migration=m.index, reason=m.reason)

    # --- finishing -----------------------------------------------------------------
    def _finish(self, m: MigrationState) -> None:
        """Verify and switch over, or leave the VM on its source and discard the copy.
        A dead destination (a fault) answers nothing: its figures stay empty."""
        import ray
        src, dst = self._src(m), self._dst(m)
        polled = self.call(src.poll.remote(m.index, m.events_seen))
        if polled is not None:
            self._sample_migration(m, polled, time.monotonic(), final=True)
        m.report = self.call(src.report.remote(m.index), {})
        conns = [c.index for c in self.sl.topo.connections_of_migration(m.index)]
        names = (m.plan.source.name, m.plan.destinations[0].name)
        m.usage_after = {n: self.call(self.sl.hosts[n].usage.remote()) or _NO_USAGE for n in names}
        m.receiver = self.call(dst.receiver_status.remote(conns)) or _NO_RECEIVER
        m.status, m.reason = m.report.get("status", "failed"), m.report.get("stop_reason", "")
        if m.final.get("error"):
            m.status, m.reason = "failed", m.final["error"].strip().splitlines()[-1]
        host, src_key = self.sl.location[m.vm_index]
        dst_key = self.sl.copy_key(m.vm_index, m.index)
        guest = self.sl.guests[m.vm_index]
        # A technique that moved the guest itself (post-copy) says so; the guest
        # wrote its destination image since, and those pages are excused.
        moved = bool(m.report.get("guest_on_destination"))
        if splits(m.plan):
            m.receiver = _merged_receivers(self, m, conns)
            m.guest_resumed_at = split_run.finish(self, m, src, src_key)
            self._resume_shared_disk(m)
            m.t_end = time.monotonic()
            m.links_after = self._link_stats(m)
            m.phase = m.status
            self._share_nics()
            return
        if moved:
            m.remote_faults = self.call(guest.postcopy_status.remote(), {})
        if swaps(m.plan):
            m.swap_during = ray.get(dst.swap_done.remote(m.index), timeout=ACTOR_CALL_S)
        if m.status == "completed":
            written = (lambda: ray.get(guest.written_on_destination.remote(), timeout=ACTOR_CALL_S)) if moved else None
            self._verify(m, src, dst, src_key, dst_key, written)
        now = time.monotonic()
        disk = m.report.get("disk") or {}
        if m.status == "completed" and disk.get("verified"):
            self.sl.disk_at[m.vm_index] = disk["target_datastore"]
        if moved and m.status != "completed":
            m.vm_lost, m.guest_resumed_at = True, None
            self.sl.location[m.vm_index] = (LOST, dst_key)  # on no host: a later migration of it fails at once
            sides = {k: v for k, v in m.report.get("postcopy", {}).get("lost", {}).items() if k != "reason"}
            self.tl.event(now, "vm-lost", vm=m.vm, migration=m.index, reason=m.reason, **sides)
        elif moved:
            m.guest_resumed_at = m.report.get("resumed_at") or now
            self.sl.location[m.vm_index] = (m.plan.destinations[0].name, dst_key)
            # The guest switched before verification (post-copy): the `verification` event after it says.
            self.tl.event(m.guest_resumed_at, "switched-over", vm=m.vm, migration=m.index,
                          host=m.plan.destinations[0].name, by="technique")
        elif m.verified and m.index in self.sl.standby:  # to another Ray node: a guest there runs on
            m.guest_resumed_at = crossnode.hand_over(self.sl, m.index, m.vm_index, m.plan.destinations[0].name,
                                                     ACTOR_CALL_S)
            self.sl.location[m.vm_index] = (m.plan.destinations[0].name, dst_key)
            self.tl.event(m.guest_resumed_at, "switched-over", vm=m.vm, migration=m.index,
                          host=m.plan.destinations[0].name, by="hand-off")
        elif m.verified:
            paging = {"host": dst, "migration": m.index} if swaps(m.plan) else None
            m.guest_resumed_at = ray.get(guest.resume_on.remote(self.sl.paths[dst_key], None, None, paging),
                                         timeout=ACTOR_CALL_S)
            self.sl.location[m.vm_index] = (m.plan.destinations[0].name, dst_key)
            self.tl.event(m.guest_resumed_at, "switched-over", vm=m.vm, migration=m.index,
                          host=m.plan.destinations[0].name)
        else:
            m.guest_resumed_at = self.call(guest.resume.remote())  # a no-op unless verification failed
            self._discard(m, dst, dst_key)
            self.tl.event(now, "stays-on-source", vm=m.vm, migration=m.index, host=host, status=m.status,
                          reason=m.reason)
        if not m.vm_lost:
            self._resume_shared_disk(m)
        m.t_end = now
        m.links_after = self._link_stats(m)
        m.phase = m.status
        self._share_nics()

    def _shared_disk_io(self, m: MigrationState) -> dict | None:
        """A VM whose disk stays where it is and does I/O: its DiskAgent, to hold that I/O
        through the downtime (agents/techniques/storage.py HoldsSharedDisk)."""
        vm = self.sl.scenario.vms[m.vm_index]
        f = vm.disk_workload.figures()
        if vm.disk_gib <= 0 or f["read_iops"] + f["write_iops"] <= 0:
            return None
        return {"agent": self.sl.datastores[vm.datastore], "vm": vm.name}

    def _resume_shared_disk(self, m: MigrationState) -> None:
        """The guest runs again (on its destination, or on its source): so does its held disk I/O."""
        if (io := self._shared_disk_io(m)) is not None:  # idempotent: a moved disk's mirror resumed it already
            self.call(io["agent"].resume_workload.remote(io["vm"]))

    def _discard(self, m: MigrationState, dst, dst_key: str) -> None:
        """Discard the destination's partial copy; a dead host's, from here (its files in shared memory)."""
        if m.plan.destinations[0].name not in self.faults.dead_hosts:
            self.call(dst.release_image.remote(dst_key))
            return
        path = self.sl.paths[dst_key]
        for p in (path, path + "-log", path + "-recv"):
            _unlink(p)

    def _verify(self, m: MigrationState, src, dst, src_key: str, dst_key: str, excused=None) -> None:
        m.phase = "verifying"
        bad = verify_images(src, dst, src_key, dst_key, self.sl.npages[m.vm_index], excused)
        errors = m.receiver["errors"]
        m.verified, m.mismatched = not bad and not errors, bad
        self.tl.event(time.monotonic(), "verification", vm=m.vm, migration=m.index, verified=m.verified,
                      mismatched_pages=len(bad))
        if not m.verified:
            m.status = "failed"
            m.reason = (f"verification failed: {len(bad)} page(s) differ" if bad
                        else f"destination could not restore: {errors[0]}")

    # --- sampling --------------------------------------------------------------------
    def _link_stats(self, m: MigrationState) -> dict:
        lps = self.sl.topo.links_of_migration(m.index)
        return dict(zip([lp.index for lp in lps], self._gather([self.sl.links[lp.index].stats.remote() for lp in lps])))

    def _sample(self, now: float, force: bool = False) -> None:
        """One record per running migration, link, host and guest: one call per actor."""
        self._sampled_at = now
        t_begin = time.monotonic()
        running = [m for m in self.migs if m.status == "running"]
        asks = {name: {m.index: m.events_seen for m in running if m.plan.source.name == name} for name in self.sl.hosts
                if name not in self.faults.dead_hosts}
        hosts = [self.sl.hosts[name].sample.remote(since) for name, since in asks.items()]
        links = [a.stats.remote() for a in self.sl.links.values()]
        guests = [g.progress.remote() for g in self.sl.guests]
        got_hosts, got_links, got_guests = (self._gather(refs) for refs in (hosts, links, guests))
        # Each record is dated when its actor read it, on the driver's clock: when replies come back
        # at different times, a driver-side time would squeeze one interval and stretch the next.
        for name, got in zip(asks, got_hosts):
            if got is None:
                continue  # a dead host: its migrations end through their own wait
            t = crossnode.to_driver_clock(self.sl, name, got["t_read"])
            for m in running:
                if m.index in got["polls"]:
                    self._sample_migration(m, got["polls"][m.index], t)
            self._sample_host(name, got["usage"], t)
        for idx, stats in zip(self.sl.links, got_links):
            if stats is not None:
                self._sample_link(idx, stats, crossnode.to_driver_clock(self.sl, self.sl.topo.links[idx].source,
                                                                          stats["t_read"]))
        for i, (vm, got) in enumerate(zip(self.sl.scenario.vms, got_guests)):
            if got is not None:
                t_guest, ops, extra = got
                t_guest = crossnode.to_driver_clock(self.sl, self.sl.guest_host[i], t_guest)
                self._sample_guest(vm.name, t_guest, ops, extra)
                split_run.check_paging_lost(self, i, extra, t_guest)
        self.sampling_s += time.monotonic() - t_begin

    def _gather(self, refs: list) -> list:
        """Every answer, None for an actor that is dead or does not answer in time."""
        import ray
        try:
            return ray.get(refs, timeout=ACTOR_CALL_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ray.exceptions.RayTaskError):
            return [self.call(r) for r in refs]

    def _sampling_period(self) -> float:
        """Real seconds between samples: the timeline's interval, at least MIN_SAMPLE_REAL_S."""
        return max(MIN_SAMPLE_REAL_S, self.scale.real_seconds(self.opts.interval_s))

    def _transfer_rate(self, m: MigrationState, t: float) -> float:
        """Bytes the destination acknowledged per emulated second over the last sampling period at
        least: a sample closer to the one before it (the one at switch-over, milliseconds after)
        would divide acknowledgements that came bunched by a few milliseconds."""
        w = m.delivered_window
        if not w:
            w.append((m.t_start, 0.0))
        w.append((t, m.counters["delivered_bytes"]))
        while len(w) > 2 and t - w[1][0] >= self._sampling_period():
            w.pop(0)
        dt = self.scale.emulated_seconds(t - w[0][0])
        return (w[-1][1] - w[0][1]) / dt if dt > 0 else 0.0

    def _sample_migration(self, m: MigrationState, polled: dict, t: float, final: bool = False) -> None:
        """The migration's events so far, then its interval record: what moved since the last one."""
        from cluster.collect import counters_of
        for ev in polled.pop("events"):  # read on the source host's node
            t_ev = crossnode.to_driver_clock(self.sl, m.plan.source.name, ev.pop("t_real"))
            self.tl.event(t_ev, ev.pop("event"), vm=m.vm, migration=m.index, **ev)
            m.events_seen += 1
            rec = self.tl.records[-1]
            if rec["event"] == "iteration":
                m.last_iteration = rec
            self._on_technique_event(m, rec, t)
        m.final = polled
        now_c = counters_of(polled, self.scale.memory_scale)
        prev = m.counters or {k: 0 for k in now_c}
        delta = {k: now_c[k] - prev.get(k, 0) for k in now_c}
        m.counters = now_c
        m.phase, m.iteration = polled.get("phase", m.phase), polled.get("iteration", m.iteration)
        m.remaining_bytes = polled.get("remaining_bytes", m.remaining_bytes)
        m.sent_bytes = now_c["transferred_bytes"]
        # What the link carried (acknowledged), not what the sender posted into its ring ahead of it.
        m.throughput_bytes_s = self._transfer_rate(m, t)
        last = m.last_iteration
        # QEMU's expected-downtime: what remains over the bandwidth its last iteration measured.
        bandwidth = last["bytes"] / last["duration_s"] if last.get("duration_s") else 0.0
        self.tl.sample("migration", t, vm=m.vm, migration=m.index, phase=m.phase, iteration=m.iteration,
                       remaining=m.remaining_bytes, dirty_sync_count=polled.get("dirty_sync_count", 0),
                       transfer_rate=m.throughput_bytes_s, dirty_pages_rate=last.get("dirty_pages_rate"),
                       expected_downtime_s=m.remaining_bytes / bandwidth if bandwidth else None,
                       final=final, **delta)

    def _on_technique_event(self, m: MigrationState, rec: dict, now: float) -> None:
        """A phase trigger fired in the migration thread: carry out what it asks of the control plane."""
        if rec["event"] == "trigger" and rec["trigger"] not in self.fired:
            k = rec["trigger"]
            if self.events[k].action == "cancel":
                self.fired.add(k)  # already carried out in the migration thread
            else:  # at the trigger's time: a fault was carried out then, on the spot
                self._fire(k, min(now, self.tl.t0 + rec["t"] * self.scale.dilation), m)

    def _sample_link(self, idx: int, stats: dict, t: float) -> None:
        prev = self._samples.get(("l", idx))
        background = stats.get("background_seen", (0.0, 0.0))[1]
        self._samples[("l", idx)] = (t, stats["bytes"], background)
        if prev is None:
            return
        dt = self.scale.emulated_seconds(t - prev[0])
        moved = (stats["bytes"] - prev[1]) / self.scale.memory_scale
        lp = self.sl.topo.links[idx]
        cap = stats.get("capacity_bytes_s", lp.rate_bytes_s) * self.scale.dilation / self.scale.memory_scale
        self.tl.sample("link", t, link=lp.name, throughput_bytes_s=moved / dt if dt > 0 else 0.0,
                       capacity_bytes_s=cap, bytes=moved, background_bytes=(background - prev[2]) / self.scale.memory_scale)

    def _sample_host(self, name: str, usage: dict, t: float) -> None:
        """Emulated cores kept busy, by stage (send, receive, sync), since the last sample."""
        prev = self._samples.get(("h", name))
        self._samples[("h", name)] = (t, usage)
        if prev is None:
            return
        dt = t - prev[0]
        stages: dict[str, float] = {}
        for tag, s in usage["charged_by"].items():
            stage = tag[1] if isinstance(tag, tuple) else "other"
            stages[stage] = stages.get(stage, 0.0) + s - prev[1]["charged_by"].get(tag, 0.0)
        self.tl.sample("host", t, host=name, cpu_cores={k: v / dt for k, v in stages.items()} if dt > 0 else {},
                       cpu_seconds={k: v / self.scale.dilation for k, v in stages.items()})

    def _sample_guest(self, vm: str, t: float, ops: float, throttle: dict | None = None) -> None:
        """Operations per second since the last sample; while migrating, the
        vCPUs' throttle and dirty rates too (agents/guest/throttle.py)."""
        prev = self._samples.get(("g", vm))
        self._samples[("g", vm)] = (t, ops)
        if prev is None or t <= prev[0]:
            return
        self.tl.sample("guest", t, vm=vm, ops_per_s=(ops - prev[1]) / self.scale.emulated_seconds(t - prev[0]),
                       operations=ops - prev[1], **(throttle or {}))

    def _progress(self) -> None:
        if self.opts.progress:
            self.opts.progress(self.migs)
