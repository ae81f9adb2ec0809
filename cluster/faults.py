"""Fault injection by the control plane, and the outcome of every fault.

A scenario's `[[events]]` may inject faults, at an emulated time or when a
migration enters a phase (the phases of post-copy included):

- `link-down` (`duration_s`, or for good): nothing crosses the link. Batches
  wait, as TCP keeps unacknowledged data; pre-copy waits and resumes when it
  comes back. A connection whose batches stay unacknowledged for
  `tcp_user_timeout_ms` gives up (agents/faults.py): pre-copy aborts, the VM
  keeps running on its source, the destination's partial copy is discarded;
  post-copy pauses (QEMU's postcopy-paused) until a `link-up`, then recovers
  over a new connection (agents/techniques/postcopy.py). A paused post-copy
  whose link has no `link-up` (nor a duration) left to come gives up: the VM
  is lost, and the result says how many pages each side held. After a
  split migration, a fault over a main<->sub paging link waits the same
  way: back in time, the VM runs on (`survived`); not back within
  `tcp_user_timeout_ms`, the VM is lost, with the pages on each host
  (agents/guest/split_memory.py).
- `link-up`: the link comes back; each paused post-copy over it recovers.
- `corrupt-batch` (`count`): the next batches entering the link are damaged;
  each is caught by its checksum at the receiver, sent again and counted.
  A storage migration's disk copy crossing the link (network path) has its
  next `count` entries damaged too, caught by their checksum at the disk
  writer and sent again (result `disk.batches_corrupted`, `batches_resent`).
- `kill-destination`: the destination host's actor of the VM's running
  migration is killed (ray.kill). The source hears its connections close and
  aborts at once; the copy there is discarded; the VM stays on its source.
- `crash-migration-thread`: the source's migration thread crashes at its
  next step: the migration aborts, the VM stays on its source.
- `kill-memory-server` (`host`): a sub-host's actor, with the memory server
  of each split migration to it, is killed (ray.kill). During a split
  migration the source hears its connections to that host close and aborts:
  the VM stays on its source, every copy is discarded (S-memV §IV-A: a
  failed split migration runs on at the source). After one, the VM on the
  main host has lost the pages that server held: S-memV has no fault
  tolerance (its §VII leaves MemX's RAID-like recovery to future work), so
  the VM cannot go on: it is stopped where it is and reported `vm-lost`
  with the pages lost (cluster/split_run.py `memory_server_lost`).

Each fault is judged once the run is over, from the migrations it hit
(those running when it fired, over its link or of its VM):
`survived` (each completed and verified), `aborted-vm-safe` (each that did
not complete left the VM running on its source), `vm-lost` (a post-copy
could not finish: neither side held the whole VM; or a split VM lost a
memory server's pages), `no-effect` (it hit no
migration). The list goes to result.json (`faults`), the timeline (`fault`
events) and the metrics (livemig_faults_total by kind and outcome).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

FAULT_KINDS = ("link-down", "corrupt-batch", "kill-destination", "crash-migration-thread", "kill-memory-server")
OUTCOMES = ("survived", "aborted-vm-safe", "vm-lost", "no-effect", "pending")
ACTOR_CALL_S = 10.0  # the longest any control-plane call to an actor may take before it counts as dead


@dataclass
class Fault:
    """One injected fault, at two emulated times: `at_s` on the scenario's clock (seconds after
    the warm-up, as an event's at_s is written) and `run_at_s` on the run's clock (seconds since
    the guests started, as the timeline and a migration's started_at_s count)."""

    kind: str
    at_s: float
    target: str  # a link's name or a VM's
    event: int  # its index in [[events]]
    migrations: list[int] = field(default_factory=list)  # those running that it hit
    detail: dict = field(default_factory=dict)
    outcome: str = "pending"
    run_at_s: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def judge(fault: Fault, migrations: dict[int, dict]) -> str:
    """A fault's outcome from the end of each migration it hit: `migrations` maps a
    migration's number to {"status", "verified", "vm_lost"}."""
    hit = [migrations[i] for i in fault.migrations if i in migrations]
    if not hit:
        return "no-effect"
    if any(m.get("vm_lost") for m in hit):
        return "vm-lost"
    if all(m["status"] == "completed" and m["verified"] for m in hit):
        return "survived"
    return "aborted-vm-safe"


def counts(faults: list[Fault]) -> dict[str, dict[str, int]]:
    """Faults by kind, then by outcome (what the README's table and the metrics show)."""
    out: dict[str, dict[str, int]] = {}
    for f in faults:
        by = out.setdefault(f.kind, {})
        by[f.outcome] = by.get(f.outcome, 0) + 1
    return out


class FaultInjector:
    """Carries out fault events for the orchestrator (cluster/orchestrate.py) and keeps the faults.

    `orch` is the Orchestrator: its slice (actors), timeline, scale and migrations."""

    def __init__(self, orch) -> None:
        self.o = orch
        self.faults: list[Fault] = []
        self.dead_hosts: set[str] = set()
        self.ups_due: list[tuple[float, str, Fault]] = []  # (real time, link name, its link-down)
        self.down_links: dict[str, Fault] = {}

    # --- firing --------------------------------------------------------------
    def fire(self, k: int, ev, now: float, m=None) -> None:
        """Carry out fault event `k`; `m`: the migration whose phase triggered it, when the
        migration thread has carried it out already (a crash) or is still to be hit by it."""
        link = getattr(ev, "link", None)
        if link is not None and not any(lp.name == link for lp in self.o.sl.topo.links):
            self.o.tl.event(now, "ignored", index=k, reason=f"no migration uses link {link}")
            return
        if ev.action == "link-up":
            self.link_up(k, ev.link, now)
            return
        if ev.action == "crash-migration-thread" and m is not None:
            self._new("crash-migration-thread", k, ev.vm, now, [m], on_the_spot=True)
            return
        handler = {"link-down": self._link_down, "corrupt-batch": self._corrupt,
                   "kill-destination": self._kill_destination, "crash-migration-thread": self._crash,
                   "kill-memory-server": self._kill_memory_server}[ev.action]
        handler(k, ev, now)

    def _new(self, kind: str, k: int, target: str, now: float, migrations: list, **detail) -> Fault:
        f = Fault(kind, self.o.scale.emulated_seconds(now - self.o.t_mig), target, k,
                  [m.index for m in migrations], detail, run_at_s=self.o.scale.emulated_seconds(now - self.o.t_run))
        self.faults.append(f)
        self.o.tl.event(now, "fault", fault=kind, target=target, index=len(self.faults) - 1,
                        migrations=f.migrations, **detail)
        return f

    def _link(self, name: str):
        lp = next(lp for lp in self.o.sl.topo.links if lp.name == name)
        return lp, self.o.sl.links[lp.index]

    def link_actor(self, name: str):
        """The LinkAgent of link `name` (a phase-triggered link-down is carried out on the spot by
        the migration thread, so that it lands in the phase it names; the event then records it)."""
        return self._link(name)[1]

    def _over_link(self, lp) -> list:
        topo = self.o.sl.topo
        return [m for m in self.o.migs if m.status == "running"
                and lp.index in {x.index for x in topo.links_of_migration(m.index)}]

    def _hit_by_link(self, lp) -> list:
        """What a fault on link `lp` hits: the migrations over it, and the VMs paging over it
        after a split migration (their faults wait; agents/guest/split_memory.py)."""
        from cluster.split_run import paging_over
        return self._over_link(lp) + paging_over(self.o.sl, self.o.migs, lp.index)

    def _link_down(self, k: int, ev, now: float) -> None:
        import ray
        lp, link = self._link(ev.link)
        ray.get(link.set_down.remote(True), timeout=ACTOR_CALL_S)
        f = self._new("link-down", k, ev.link, now, self._hit_by_link(lp),
                      duration_s=ev.duration_s, for_good=ev.duration_s is None)
        self.down_links[ev.link] = f
        if ev.duration_s is not None:
            self.ups_due.append((now + self.o.scale.real_seconds(ev.duration_s), ev.link, f))

    def link_up(self, k: int | None, ev_link: str, now: float, by: str = "event") -> None:
        import ray
        lp, link = self._link(ev_link)
        ray.get(link.set_down.remote(False), timeout=ACTOR_CALL_S)
        down = self.down_links.pop(ev_link, None)
        if down is not None:
            down.detail["up_after_s"] = self.o.scale.emulated_seconds(now) - self.o.scale.emulated_seconds(
                self.o.t_mig) - down.at_s
            down.migrations = sorted(set(down.migrations) | {m.index for m in self._hit_by_link(lp)})
        self.o.tl.event(now, "link-up", link=ev_link, by=by, index=k)
        for m in self._over_link(lp):  # QEMU's migrate-recover + migrate resume=true, for a paused post-copy
            if self.o.call(self.o._src(m).recover_postcopy.remote(m.index), False):
                self.o.tl.event(now, "postcopy-recover-requested", vm=m.vm, migration=m.index)

    def _corrupt(self, k: int, ev, now: float) -> None:
        import ray

        from agents.datapath.shm import region_path
        lp, link = self._link(ev.link)
        topo = self.o.sl.topo
        rings = {c.index: (region_path(self.o.sl.cluster.run_id, f"ring{c.index}"), c.batch_pages)
                 for c in topo.connections_of(lp.index)}
        ray.get(link.corrupt.remote(rings, ev.count), timeout=ACTOR_CALL_S)
        disks = self._corrupt_disks(lp, ev.count)
        self._new("corrupt-batch", k, ev.link, now, self._over_link(lp), count=ev.count,
                  **({"disk_copies": disks} if disks else {}))

    def _corrupt_disks(self, lp, count: int) -> list[str]:
        """A disk copy crossing the link (network path) has its next `count` entries damaged
        too; each is caught by its checksum at the destination and sent again. The VMs hit."""
        hit = []
        for m in self._over_link(lp):
            mv = self.o.sl.disk_moves.get(m.index)
            if mv is not None and mv["path"]["kind"] == "network" and \
                    self.o.call(mv["agent"].corrupt_disk.remote(mv["vm"], count), False):
                hit.append(mv["vm"])
        return hit

    def _running_of(self, vm: str) -> list:
        return [m for m in self.o.migs if m.vm == vm and m.status == "running"]

    def _kill_destination(self, k: int, ev, now: float) -> None:
        import ray
        running = self._running_of(ev.vm)
        if not running:
            self._new("kill-destination", k, ev.vm, now, [], reason="no migration of the VM was running")
            return
        m = running[0]
        host = m.plan.destinations[0].name
        ray.kill(self.o.sl.hosts[host], no_restart=True)
        self.dead_hosts.add(host)
        self._new("kill-destination", k, ev.vm, now, [m], host=host)

    def _kill_memory_server(self, k: int, ev, now: float) -> None:
        """Kill sub-host `ev.host`: the split migrations to it that run abort; the VMs that
        run on their main host with pages there are lost (stopped first, their pages counted)."""
        import ray

        from cluster import split_run
        mine = [m for m in self.o.migs if ev.host in {h.name for h in m.plan.destinations[1:]}
                and (m.status == "running" or split_run.paging_from(self.o.sl, m))]
        after = [m for m in mine if m.status != "running"]
        counted = {m.index: split_run.stop_for_loss(self.o.sl, m, ev.host) for m in after}
        ray.kill(self.o.sl.hosts[ev.host], no_restart=True)
        self.dead_hosts.add(ev.host)
        for m in after:
            split_run.memory_server_lost(self.o, m, ev.host, counted[m.index], now)
        detail = {"host": ev.host} | ({} if mine else {"reason": "no split migration to it ran or had switched over"})
        self._new("kill-memory-server", k, ev.host, now, mine, **detail)

    def _crash(self, k: int, ev, now: float) -> None:
        running = self._running_of(ev.vm)
        hit = [m for m in running if self.o.call(self.o._src(m).crash_migration.remote(m.index), False)]
        self._new("crash-migration-thread", k, ev.vm, now, hit,
                  **({} if hit else {"reason": "no migration of the VM was running"}))

    # --- as time goes by ----------------------------------------------------------
    def tick(self, now: float) -> None:
        """Bring back links whose outage is over; give up paused post-copies whose link will not return."""
        for item in [u for u in self.ups_due if u[0] <= now]:
            self.ups_due.remove(item)
            self.link_up(item[2].event, item[1], now, by="duration")
        for m in [m for m in self.o.migs if m.status == "running" and m.phase == "postcopy-paused"]:
            src = self.o._src(m)
            if not self._links_down(m):  # back before it paused (a race with the link-up): recover now
                self.o.call(src.recover_postcopy.remote(m.index), False)
            elif not self._link_may_return(m) and self.o.call(src.give_up_postcopy.remote(m.index), False):
                self.o.tl.event(now, "postcopy-given-up", vm=m.vm, migration=m.index,
                                reason="its link is down for good (no link-up scheduled)")

    def _links_down(self, m) -> set[str]:
        return {lp.name for lp in self.o.sl.topo.links_of_migration(m.index)} & set(self.down_links)

    def _link_may_return(self, m) -> bool:
        """Is a down link of `m` due back (a duration, or a timed link-up not fired yet)? A link
        that is up again counts as back; an `on`-phase link-up cannot fire while it is paused."""
        down = self._links_down(m)
        if not down:
            return True
        due = {u[1] for u in self.ups_due}
        timed_ups = {ev.link for k, ev in enumerate(self.o.events)
                     if ev.action == "link-up" and k not in self.o.fired and getattr(ev, "at_s", None) is not None}
        return all(name in due or name in timed_ups for name in down)

    # --- the end ---------------------------------------------------------------------
    def finish(self, migrations: dict[int, dict]) -> list[dict]:
        """Judge every fault (see `judge`); record each outcome in the timeline."""
        now = time.monotonic()
        for i, f in enumerate(self.faults):
            f.outcome = judge(f, migrations)
            self.o.tl.event(now, "fault-outcome", fault=f.kind, index=i, outcome=f.outcome, target=f.target)
        return [f.as_dict() for f in self.faults]

    def counts(self) -> dict[str, dict[str, int]]:
        return counts(self.faults)
