"""Charged CPU: what each pipeline stage costs, and the emulated cores that pay.

A `CostModel` gives the CPU cost of every step of a migration per emulated
4 KiB page, in microseconds. Profiles:

- "modern": a current x86 host running QEMU/KVM over plain TCP. Guest memory
  stays mapped (no per-page map cost); about 2.5 GB/s of page handling per
  core on the source, 3 GB/s on the destination.
- "xen-4.1": PMigrate's Xen 4.1.2 (Table 2, single-threaded: 37.7 MByte/s at
  95.4% of a core, i.e. 98.8 us per page). Mapping guest memory is mmap +
  foreign map + munmap, whose costs under each address-space lock are Table 9's
  (idle column): 26.8 us per page without optimisation. Handling unused and
  page-table pages is 44.8 s over 58.6 GByte (2.9 us per page). Transfer over
  SSH (encryption, checksum, TCP) is the rest: 69.1 us per page.
- "kvm-0.14": PMigrate's kvm-qemu 0.14 (Tables 6-8: vanilla sends 82.4
  MByte/s from one I/O thread; memory mapped once, so no map cost).

With several consumers, every munmap shoots down the TLB of every other core
the migration process runs on. `shootdown_us` per page per other consumer is
calibrated so that PMigrate-Xen's 8 consumers cost 8.2% more CPU per page than
vanilla's one (Table 3: 409.9 against 378.9 CPU-seconds).

A `CorePool` is the set of emulated cores a host lends the migration (its CPU
rate control): a stage holds a core while it works and for as long as its
charge says, so N consumers on C < N cores queue as real threads would.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

from agents.datapath.clock import sleep_until

# Table 9 (idle column), us per page, by address-space lock.
TABLE9 = {
    "global": {"mmap": 1.39, "map": 18.1, "munmap": 7.27},
    "rwlock": {"mmap": 1.80, "map": 16.3, "munmap": 6.22},
    "range": {"mmap": 0.05, "map": 14.8, "munmap": 0.75},
}


@dataclass(frozen=True)
class CostModel:
    """Microseconds of CPU per emulated page, by step."""
    mmap_us: float = 0.0
    map_us: float = 0.0
    munmap_us: float = 0.0
    handle_us: float = 0.0
    send_us: float = 1.6
    receive_us: float = 1.0
    restore_us: float = 0.3
    shootdown_us: float = 0.0  # per page, per other consumer (TLB shootdown IPIs)
    dirty_sync_ns: float = 2.0  # per page of memory, each time the dirty log is fetched
    guest_fault_us: float = 3.0  # a guest's first write to a page after each fetch

    def source_us(self, consumers: int = 1) -> float:
        return (self.mmap_us + self.map_us + self.munmap_us + self.handle_us + self.send_us
                + self.shootdown_us * max(0, consumers - 1))

    def destination_us(self) -> float:
        return self.receive_us + self.restore_us


def profile(name: str, lock: str = "global") -> CostModel:
    if name == "modern":
        return CostModel()
    if name == "xen-4.1":
        t = TABLE9[lock]
        # Table 2: 98.8 us per page in all; the SSH transfer is what is left
        # after Table 9's unoptimised map (26.8) and the handling (2.9).
        return CostModel(mmap_us=t["mmap"], map_us=t["map"], munmap_us=t["munmap"], handle_us=2.9,
                         send_us=69.1, receive_us=60.0, restore_us=2.1, shootdown_us=2.76,
                         dirty_sync_ns=3.0, guest_fault_us=5.0)
    if name == "kvm-0.14":
        # 82.4 MByte/s from one thread: 47.4 us per page, TCP included.
        return CostModel(handle_us=2.0, send_us=45.4, receive_us=30.0, restore_us=1.5, shootdown_us=0.0,
                         dirty_sync_ns=1.0, guest_fault_us=4.0)
    raise ValueError(f"unknown CPU profile {name!r}; known: modern, xen-4.1, kvm-0.14")


def resolve(name: str, lock: str, overrides: dict[str, float | None]) -> CostModel:
    """A profile with the scenario's explicit values laid over it."""
    return replace(profile(name, lock), **{k: v for k, v in overrides.items() if v is not None})


class CorePool:
    """Emulated cores lent to the migration on one host.

    `with pool.core() as c:` waits for a free core; `c.charge(real_s)` then
    keeps it busy until `real_s` after the work began (the real work itself
    runs inside that time). Overrun is recorded when real work took longer.

    CPU rate control (PMigrate §3.2, §6.3): `shared` of the cores are also
    run by co-located VMs' vCPUs. On those the migration gets only its
    `priority` share (0-1), so its work there takes 1/priority longer, and
    the VMs lose that share of the core while the migration is busy on it.
    Free unshared cores are taken first.

    Several migrations share a host's cores. Each use of a core carries a
    `tag` (a migration and a stage, e.g. `(2, "send")`), and what was charged
    and held is also kept per tag, so each migration's CPU and saturation
    can be told apart.
    """

    def __init__(self, cores: float, shared: int = 0, priority: float = 1.0) -> None:
        self.cores = max(1, int(round(cores)))
        self.shared = min(shared, self.cores)
        self.priority = priority
        self._free = list(range(self.cores))  # ids below `shared` are the shared cores
        self._cv = threading.Condition()
        self._waiters = 0  # threads waiting for a free core
        self._lock = threading.Lock()
        self.charged_s = 0.0
        self.overrun_s = 0.0
        # Real time cores were held. Held beyond what was charged (and beyond
        # modelled waits such as an address-space lock) is this machine's
        # overhead leaking into emulated time: the run's saturation.
        self.held_s = 0.0
        self.shared_busy_s = 0.0  # real time the migration held shared cores
        self.charged_by: dict = {}  # tag -> real seconds charged
        self.held_by: dict = {}  # tag -> real seconds held

    @contextmanager
    def core(self, tag=None, clock: "CoreClock | None" = None):
        """A free core for one piece of work. With a `clock` (a thread's, see CoreClock) whose
        work runs back to back, the work begins where the thread's previous work ended in
        emulated time, not when this thread got round to it: real lateness (a late wake-up, a
        socket send) is made up by the next charges instead of piling up batch after batch."""
        waited = False
        with self._cv:
            while not self._free:
                waited = True
                self._waiters += 1
                self._cv.wait()
                self._waiters -= 1
            self._free.sort()
            cid = self._free.pop()  # the highest id: unshared cores first
        now = time.monotonic()
        carried = clock is not None and clock.busy and not waited
        start = min(now, max(clock.t, clock.not_before)) if carried else now
        c = _Core(self, start, self.priority if cid < self.shared else 1.0, tag)
        try:
            yield c
        finally:
            end = time.monotonic()
            with self._cv:
                # Past its emulated end, a thread that had caught up with its schedule (it slept to
                # its last deadline) only woke up and handed over: no thread waited for its core,
                # and its own next work continues from that end, so the lateness is not counted.
                tail = max(0.0, end - c.t) if clock is not None and c.on_time and not self._waiters else 0.0
            # Held from when it really began; never less than charged (lateness made up is not credit).
            held = max(end - now - tail, c.charged)
            if clock is not None:
                clock.t, clock.busy = c.t, False
            with self._cv:
                self._free.append(cid)
                self._cv.notify()
            with self._lock:
                self.held_s += held
                self.held_by[tag] = self.held_by.get(tag, 0.0) + held
                if cid < self.shared:
                    self.shared_busy_s += held

    def _account(self, charged: float, overrun: float, tag=None) -> None:
        with self._lock:
            self.charged_s += charged
            self.overrun_s += overrun
            self.charged_by[tag] = self.charged_by.get(tag, 0.0) + charged

    def usage(self) -> dict:
        """Real seconds charged and held so far, in all and by tag (a snapshot)."""
        with self._lock:
            return {"charged_s": self.charged_s, "held_s": self.held_s, "overrun_s": self.overrun_s,
                    "charged_by": dict(self.charged_by), "held_by": dict(self.held_by)}


class CoreClock:
    """One thread's place in emulated CPU time, kept from one use of a core to the next.

    The thread sets `busy` when its next work was already waiting as it finished the last
    (a task queued, a batch arrived): the work then starts at `t`, where the last one ended
    in emulated time (or at `not_before`, when its input came later than that). A thread
    that had to wait for work starts afresh (CorePool.core)."""

    def __init__(self) -> None:
        self.t = 0.0  # where its last work ended on the emulated schedule (monotonic seconds)
        self.busy = False
        self.not_before = 0.0  # when the next work became available on the emulated schedule (0: no later than t)


class _Core:
    def __init__(self, pool: CorePool, started: float, speed: float = 1.0, tag=None) -> None:
        self.pool = pool
        self.tag = tag
        self.t = started
        self.speed = speed  # below 1 on a core shared with co-located VMs
        self.charged = 0.0  # real seconds charged on it so far
        self.on_time = False  # whether its last charge found it on schedule (it slept to the deadline)

    def charge(self, real_s: float) -> None:
        """Busy until `real_s` (stretched on a shared core) after the previous charge ended.
        Work that ran late does not move the schedule: later charges make it up, if they can."""
        real_s /= self.speed
        deadline = self.t + real_s
        late = time.monotonic() - deadline
        self.on_time = late <= 0  # it caught up with its schedule: what follows is wake-up and hand-over
        if self.on_time:
            sleep_until(deadline)
        self.pool._account(real_s, max(0.0, late), self.tag)
        self.charged += real_s
        self.t = deadline

    def hold(self, real_s: float, waited: float = 0.0) -> None:
        """Spend `real_s` on this core doing nothing real (a modelled step), after `waited`
        real seconds spent waiting for it (e.g. for the address-space lock), which move
        the schedule on as they happened."""
        self.t += waited
        self.charge(real_s)
