"""Resource guard: what a scenario will take from this machine, checked before
anything starts (issue 14, item 4).

A run's real footprint is shared memory (every VM image on its first host and
an empty copy on each migration's destination, each with its dirty log and
received-page map, and a ring per connection), private memory (each
migration's memory pool and XBZRLE cache, and an actor process per host, link
and guest on top of Ray's own) and processes. Images, rings, pools and caches
scale with memory_scale; processes do not. When the footprint does not fit
the machine's free shared memory or available memory, the run is refused in
one line naming the largest memory_scale that would fit, instead of filling
/dev/shm or swapping half-way through. Disk images (sparse files in the run
directory) are checked against that file system's free space, and the wall
clock the analytic model predicts (emulated time times dilation) against a
day, so that values that each look sane do not start a run that lasts for days.

It also measures what a run really takes (result.json's
`emulation.peak_memory_bytes`, the soak bench): the processes started for a
driver and their private memory (the shared memory a run allocated is
agents/datapath/shm.py's `run_bytes`).
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agents.datapath.shm import SHM_DIR
from cluster.scaling import Scale, vm_real_pages
from cluster.scenario import Scenario

MIB = 1 << 20
PAGE = 4096
# Per real page of every image: the page, its dirty-log word (agents/guest/dirty_log.py)
# and its received flag (post-copy's map).
IMAGE_BYTES_PER_PAGE = PAGE + 8 + 1
# Measured (ps -o rss, this 2-core machine, Ray 2.x): an actor process is 100-220 MB
# resident (HostAgent the largest), Ray's own processes (gcs_server, raylet,
# dashboard and runtime-env agents) about 400 MB together.
ACTOR_RSS_BYTES = 160 * MIB
RAY_BASE_BYTES = 450 * MIB
# Leave this share of available memory to the rest of the machine.
HEADROOM = 0.8
# The longest run the guard lets start, in real seconds (predicted emulated time x dilation).
MAX_WALL_S = 24 * 3600
GIB = 1 << 30


@dataclass(frozen=True)
class Footprint:
    """Real bytes and processes a run needs. `scaled_bytes` moves with memory_scale."""

    shm_bytes: int
    private_scaled_bytes: int
    processes: int

    @property
    def fixed_bytes(self) -> int:
        return RAY_BASE_BYTES + self.processes * ACTOR_RSS_BYTES

    @property
    def memory_bytes(self) -> int:
        """Everything that lands in RAM (tmpfs shared memory counts too)."""
        return self.shm_bytes + self.private_scaled_bytes + self.fixed_bytes


def footprint(scenario: Scenario, scale: Scale) -> Footprint:
    """The real footprint of `scenario` at `scale` (no Ray, no allocation)."""
    from agents.datapath.wire_format import SlotLayout
    from cluster.topology import plan

    topo = plan(scenario, scale)
    plans = scenario.migration_plans()
    pages = {i: vm_real_pages(scale, vm) for i, vm in enumerate(scenario.vms)}
    images = sum(pages.values()) + sum(pages[mp.vm_index] for mp in plans)
    rings = sum(c.slots * SlotLayout(c.batch_pages).slot_bytes for c in topo.connections)
    private = sum((mp.options.memory_pool_mib + mp.options.xbzrle_cache_mib) * MIB * scale.memory_scale
                  for mp in plans)
    # A split migration's memory servers hold page frames in their sub-hosts' actors.
    private += sum(pages[mp.vm_index] * PAGE * (len(mp.destinations) - 1) for mp in plans)
    # An actor per host, link, guest and datastore (DiskAgent).
    processes = len(scenario.hosts) + len(topo.links) + len(scenario.vms) + len(scenario.datastores)
    return Footprint(images * IMAGE_BYTES_PER_PAGE + rings, int(private), processes)


@dataclass(frozen=True)
class Machine:
    """What this machine offers now: free shared memory and available memory (bytes)."""

    shm_free: int
    memory_available: int


def this_machine() -> Machine:
    st = os.statvfs(SHM_DIR)
    avail = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    return Machine(st.f_bavail * st.f_frsize, avail)


def refusal(fp: Footprint, machine: Machine, scale: Scale) -> str | None:
    """One line saying what does not fit and the memory_scale that would; None when it fits."""
    shm_budget = machine.shm_free * HEADROOM
    mem_budget = machine.memory_available * HEADROOM
    scaled = fp.shm_bytes + fp.private_scaled_bytes
    if fp.shm_bytes <= shm_budget and fp.memory_bytes <= mem_budget:
        return None
    # Images, rings, pools and caches shrink with memory_scale; the processes do not.
    room = min(shm_budget / fp.shm_bytes if fp.shm_bytes else math.inf,
               (mem_budget - fp.fixed_bytes) / scaled if scaled else math.inf)
    what = (f"{fp.shm_bytes / 2**30:.1f} GiB of shared memory ({SHM_DIR} has {machine.shm_free / 2**30:.1f} GiB free)"
            if fp.shm_bytes > shm_budget else
            f"{fp.memory_bytes / 2**30:.1f} GiB of memory with {fp.processes} actor processes "
            f"({machine.memory_available / 2**30:.1f} GiB available)")
    if room <= 0:
        return f"emulation.memory_scale: the run needs {what}; its {fp.processes} processes alone do not fit"
    fit = 2.0 ** math.floor(math.log2(scale.memory_scale * room))
    return (f"emulation.memory_scale: at {scale.memory_scale:g} the run needs {what}; "
            f"memory_scale = {fit!r} (1/{1 / fit:g}) would fit")


def disk_refusal(need: int, free: int) -> str | None:
    """One line when `need` bytes of disk images do not fit `free` bytes of the run directory."""
    if need <= free * HEADROOM:
        return None
    return (f"emulation.memory_scale: the disk images need {need / GIB:.1f} GiB and the run directory's "
            f"file system has {free / GIB:.1f} GiB free; lower memory_scale or free some space")


def predicted_wall_s(scenario: Scenario, scale: Scale) -> float:
    """Real seconds the migrations should take, from the analytic model
    (cluster/predict.py): the last one's start plus its predicted time, dilated."""
    from cluster.predict import predict_migration
    from cluster.scenario import ScenarioError
    end = 0.0
    for mp in scenario.migration_plans():
        try:
            end = max(end, mp.start_s + predict_migration(scenario, mp)["total_time_s"])
        except (ScenarioError, KeyError, ValueError, ZeroDivisionError, OverflowError):
            continue  # a technique the model does not cover: nothing to say about it
    return end * scale.dilation


def wall_refusal(wall_s: float, scale: Scale) -> str | None:
    """One line when the run would last more than MAX_WALL_S of wall clock."""
    if not wall_s > MAX_WALL_S:  # NaN counts as too long
        return None
    emulated = wall_s / scale.dilation
    fits = MAX_WALL_S / emulated if emulated > 0 else 0.0
    hint = (f"dilation = {fits:.3g} would take a day" if fits >= 1e-3 else
            "no dilation brings that under a day: check the link speeds and the VM's size")
    return (f"emulation.dilation: at {scale.dilation:g} the migrations would take about {wall_s / 3600:,.0f} h "
            f"of wall clock ({emulated:,.0f} emulated s predicted); at most {MAX_WALL_S // 3600} h runs; {hint}")


def guard(scenario: Scenario, scale: Scale, path: str = "", out_dir: str | None = None) -> None:
    """Refuse a run that does not fit this machine (memory, shared memory, disk
    space for `out_dir`) or would run for days: raises ScenarioError with one line."""
    from cluster.scenario import ScenarioError
    from cluster.storage_plan import real_disk_bytes
    why = (refusal(footprint(scenario, scale), this_machine(), scale)
           or disk_refusal(int(real_disk_bytes(scenario)), _free_bytes(out_dir or "."))
           or wall_refusal(predicted_wall_s(scenario, scale), scale))
    if why:
        raise ScenarioError([f"{path or scenario.name}: {why}"])


def nearest_existing(path: str | os.PathLike) -> Path:
    """`path` itself when it exists, else its nearest existing parent (a directory not made yet
    lives on that one's file system)."""
    p = Path(os.path.abspath(path))
    return next(q for q in (p, *p.parents) if q.exists())


def _free_bytes(path: str) -> int:
    """Free bytes of the file system that holds `path` (or its nearest existing parent)."""
    st = os.statvfs(nearest_existing(path))
    return st.f_bavail * st.f_frsize


# --- what a run really takes (benches, clean-up tests) ------------------------------------
def processes_of_driver(pid: int) -> set[int]:
    """Live processes started for the driver with `pid`: Ray's own (their command
    lines name the session directory, which ends in the driver's pid), the
    driver's children, and all their descendants."""
    parents, roots = {}, set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        me = int(d)
        parents[me] = int(stat.rsplit(")", 1)[1].split()[1])
        if f"_{pid}/" in cmd or f"_{pid}\x00" in cmd or parents[me] == pid:
            roots.add(me)
    found = set(roots)
    while kids := {p for p, pp in parents.items() if pp in found} - found:
        found |= kids
    return found


def anonymous_rss(pids: set[int]) -> int:
    """Private resident bytes (RssAnon) of `pids`, shared-memory images not counted."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class MemorySampler:
    """Private memory of this driver's run, sampled every `period_s` in a thread."""

    def __init__(self, period_s: float = 0.25) -> None:
        self.period_s, self.samples = period_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            pids = processes_of_driver(me) | {me}
            self.samples.append((time.monotonic(), anonymous_rss(pids)))
            self._stop.wait(self.period_s)

    def at(self, t: float) -> int | None:
        """The first sample at or after real time t."""
        return next((b for ts, b in self.samples if ts >= t), None)

