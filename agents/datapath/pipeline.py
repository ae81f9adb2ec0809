"""PMigrate's parallel source pipeline (§3.1, Figure 2).

A memory task producer checks the dirty set and cuts it into tasks (batches
of pages); each task waits for room in the stage's bounded memory pool, so a
slow consumer blocks the producer instead of growing memory (§3.2). N
consumer threads take tasks and, each on an emulated core of the host's
`CorePool`: map the guest range (mmap, foreign map; under the address-space
lock, with Table 9's costs), handle zero and unused pages, encode and send
the batch on their own connection, and unmap. Consumers are bound to
connections round-robin, so with two connections per NIC pair two consumers
share each port, as in the paper.

Getting and resetting the dirty log and sending CPU/device state stay on the
single migration thread (the paper: not worth parallelising); so does the
producer. With more than one connection, each pass ends with a barrier:
every batch is restored before the next pass starts, so a page's newer copy
can never be overtaken by its older one on another connection.

A bandwidth cap (QEMU's max-bandwidth) paces the consumers over all the
migration's connections together (agents/datapath/rate_limit.py); the
technique sets and lifts it (`set_rate_limit`).
"""
from __future__ import annotations

import queue
import time
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from agents.cpu import CoreClock, CorePool, CostModel
from agents.datapath.memory_pool import MemoryPool
from agents.datapath.range_lock import AddressSpaceLock
from agents.datapath.rate_limit import RateLimit
from agents.datapath.sender import PageSender

PAGE = 4096
# Each consumer maps its batches into its own window of the tool's address space.
_WINDOW = 1 << 40


@dataclass
class _Task:
    vm: int
    image: np.ndarray
    idx: np.ndarray
    phase: str
    nbytes: int
    call: "_Call"
    queued_at: float = 0.0  # when the producer handed it over (monotonic seconds)
    paced_to: float = 0.0  # under a cap: when its last batch left at the capped rate (0: not capped)


class _Call:
    """Completion of one `send_pages` call: tasks outstanding and bytes sent."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.wire = 0
        self.done_t = 0.0  # when its last task's charged work ended, on the emulated schedule
        self.error: BaseException | None = None
        self.stopped = False  # its caller stopped it: tasks not begun are dropped (a cancel)
        self.cv = threading.Condition()

    def done(self, wire: int, t: float = 0.0) -> None:
        with self.cv:
            self.outstanding -= 1
            self.wire += wire
            self.done_t = max(self.done_t, t)
            self.cv.notify_all()


class SourcePipeline:
    def __init__(self, connections: list[PageSender], consumers: int, cores: CorePool,
                 lock: AddressSpaceLock, costs: CostModel, real_s: Callable[[float, int], float],
                 pool: MemoryPool, task_pages: int, encoders: list | None = None, tag=None) -> None:
        """`real_s(us_per_emulated_page, real_pages)`: real seconds a step takes.
        `encoders`: one agents.encodings.encoding.BatchEncoder per consumer (None: zero pages only).
        `tag`: the cores' accounting tag of this pipeline's work (its migration)."""
        self.tag = tag
        self.encoders = encoders
        self.connections = connections
        self.cores = cores
        self.lock = lock
        self.costs = costs
        self.real_s = real_s
        self.pool = pool
        self.task_pages = task_pages
        self.consumers = consumers
        self.tasks: queue.Queue[_Task | None] = queue.Queue()
        # Every pass ends with all batches restored: needed when connections
        # could reorder a page's copies; otherwise only at stop-and-copy.
        self.barrier_each_pass = len(connections) > 1
        self.limit = RateLimit()
        self.crash: BaseException | None = None  # an injected crash, raised in the migration thread
        # Real seconds by which passes ended after their batches' emulated stamps (their last task's
        # charged work, their last restore where drained): this machine's lateness that stretched
        # the migration (in the run's saturation).
        self.drift_s = 0.0
        # The most real seconds the stop-and-copy (its last pages, the drains before the device
        # state and before the resume) came back after its stamps: made up by the stamps, as the
        # state and the resume are posted at them, so it stretches nothing; not a pass, not in drift_s.
        self.handover_late_s = 0.0
        self._stopped = False  # in the stop-and-copy: from its last pages (or the state) to the next pass
        # When the last pass's sending ended on the emulated schedule (monotonic seconds): its
        # last task's charged work, or the restore of its last batch if it was drained.
        self.pass_ended_at = 0.0
        self._drained_to = 0.0
        self._late = 0.0  # the lateness found at the last check
        self._threads = [threading.Thread(target=self._consume, args=(i,), daemon=True, name=f"consumer-{i}")
                         for i in range(consumers)]
        for t in self._threads:
            t.start()

    # --- the producer (the migration thread) -------------------------------
    def send_pages(self, vm: int, image: np.ndarray, idx: np.ndarray, phase: str,
                   should_stop: Callable[[], bool] = lambda: False, at: float | None = None) -> int:
        """Send pages `idx` of `image` through the consumers; returns wire bytes (real).
        Once `should_stop()` is true no more tasks are queued and those not begun are dropped.
        `at`: when the pages were ready on the emulated schedule (monotonic seconds; e.g. the
        stop-and-copy's, once the last dirty-log sync's charge ended): the tasks are scheduled
        from then, not from when this thread queued them, so this machine's delay in between
        is made up by the charges after it, as between batches. Default: as each is queued."""
        self._crash_point()
        call = _Call()
        self._stopped = phase == "downtime"
        self._late = 0.0  # its tasks are scheduled from now (their queueing time) on
        ready = lambda: time.monotonic() if at is None else min(at, time.monotonic())  # noqa: E731
        for start in range(0, len(idx), self.task_pages):
            self._crash_point()
            if should_stop():
                call.stopped = True
                break
            chunk = idx[start:start + self.task_pages]
            nbytes = len(chunk) * PAGE
            self.pool.acquire(nbytes)  # blocks while the consumers are behind
            with call.cv:
                call.outstanding += 1
            self.tasks.put(_Task(vm, image, chunk, phase, nbytes, call, ready()))
        with call.cv:
            while call.outstanding:
                call.cv.wait(0.5)
        self._behind(call.done_t)  # the next tasks are queued from now: count how late this is
        self.pass_ended_at = max(self.pass_ended_at, call.done_t)
        if call.error is not None:
            raise call.error
        if self.barrier_each_pass:
            self.drain()
        return call.wire

    @property
    def pages_sent(self) -> int:
        """Real pages handed to the wire so far, unchanged ones included (for query-migrate's `remaining`)."""
        cs = [c.counters for c in self.connections]
        return sum(c.pages_normal + c.pages_zero + c.pages_compressed + c.pages_delta + c.pages_unchanged for c in cs)

    def _crash_point(self) -> None:
        if self.crash is not None:
            raise self.crash

    def send_state(self, vm: int, state_bytes: int, at: float | None = None) -> None:
        """CPU and device state, once all memory is restored. `at`: when the state was ready on
        the emulated schedule (monotonic seconds): it is then posted once that and the last
        batch's restore (its emulated stamp) are past, not when this thread heard of them (the
        acknowledgements' round trip through threads is this machine's, not the network's).
        Default: posted now."""
        self._stopped = True
        restored = self.drain()  # all memory first, then the state, then resume
        self.limit.pace(state_bytes)
        self.connections[0].send_state(vm, state_bytes, at=None if at is None else max(at, restored))

    def set_rate_limit(self, rate_bytes_s: float | None) -> None:
        """Cap this migration's sending at `rate_bytes_s` real bytes/s over all its connections; None: no cap."""
        self.limit.set_rate(rate_bytes_s)

    def drain(self) -> float:
        """Wait until every batch is restored; returns when the last was, on the emulated schedule.
        How much later than that this really happened adds to `drift_s` when it ends a pass, and
        is `handover_late_s` in the stop-and-copy."""
        self._crash_point()
        last = max(c.drain() for c in self.connections)
        if last > self._drained_to:
            self._behind(last)
            self._drained_to = last
        self.pass_ended_at = max(self.pass_ended_at, last)
        return last

    def _behind(self, scheduled: float) -> None:
        """Work scheduled to end at `scheduled` (emulated schedule) really ended now: what follows
        starts from now, so the lateness stays in the run's times; add it to `drift_s` (only what
        is new since the last check, whose lateness the batches after it carried on)."""
        if scheduled <= 0:
            return
        late = max(0.0, time.monotonic() - scheduled)
        if self._stopped:  # the hand-over, not a pass: the stamps make it up (see handover_late_s)
            self.handover_late_s = max(self.handover_late_s, late)
            return
        self.drift_s += max(0.0, late - self._late)
        self._late = late

    def reset(self) -> None:
        """The connections broke: drop what they still hold at the link (post-copy recovery)."""
        for c in self.connections:
            c.reset()

    def close(self) -> None:
        for _ in self._threads:
            self.tasks.put(None)
        for c in self.connections:
            c.close()

    # --- the consumers -----------------------------------------------------
    def _consume(self, me: int) -> None:
        conn = self.connections[me % len(self.connections)]
        clock = CoreClock()  # its place in emulated CPU time, from one task to the next
        while True:
            task = self.tasks.get()
            if task is None:
                return
            wire = 0
            if task.call.stopped:  # cancelled while queued: dropped, as a cancel shuts the channel
                self.pool.release(task.nbytes)
                task.call.done(0, clock.t)
                continue
            try:
                wire = self._task(me, conn, clock, task)
            except BaseException as exc:  # surfaced by send_pages
                task.call.error = exc
            finally:
                self.pool.release(task.nbytes)
                # Its end on the schedule: its charged work, or under a cap its last paced batch.
                task.call.done(wire, max(clock.t, task.paced_to))

    def _task(self, me: int, conn: PageSender, clock: CoreClock, task: _Task) -> int:
        """Map `task`'s pages, encode and send them slot by slot, unmap them; returns its wire bytes.

        The task is the paper's unit (Xen maps and unmaps a batch at a time: how long the
        address-space lock is held, and so how consumers contend for it); a slot is only this
        machine's, so a task larger than a slot goes out as several batches, back to back."""
        n = len(task.idx)
        length, base, c = n * PAGE, me * _WINDOW, self.costs
        slot_pages = conn.layout.batch_pages
        slot = conn.acquire_slot()  # waiting for the wire takes no core
        # The task starts on the emulated schedule: once this consumer's last one ended,
        # the task was queued and its slot came back, not when this thread got to it.
        clock.busy, clock.not_before = True, max(task.queued_at, conn.freed_at[slot])
        capped = self.limit.active
        held: list = []  # (slot, stats) packed under a cap, posted once paced
        # One core for the whole task: fewer hand-overs between threads,
        # so per-task overhead stays inside the charged time. A consumer
        # waiting for the address-space lock keeps its core, as a thread
        # spinning on mmap_sem's wait queue would.
        with self.cores.core(self.tag, clock) as core:
            self._locked_step(core, base, length, "mmap", c.mmap_us, n)
            self._locked_step(core, base, length, "map", c.map_us, n)
            for start in range(0, n, slot_pages):
                if start:
                    slot = conn.acquire_slot()
                stats = self._send_slot(me, conn, core, task, slot, task.idx[start:start + slot_pages], capped)
                held.append((slot, stats))
            self._locked_step(core, base, length, "munmap", c.munmap_us + c.shootdown_us * (self.consumers - 1), n)
        if capped:
            for slot, stats in held:
                # Paced to the cap after leaving the core: a rate-limited sender sleeps.
                task.paced_to = self.limit.pace(stats.wire_bytes)
                conn.post(slot, task.vm, stats.pages, stats)
        return sum(stats.wire_bytes for _, stats in held)

    def _send_slot(self, me: int, conn: PageSender, core, task: _Task, slot: int, idx: np.ndarray, capped: bool):
        """Encode pages `idx` into `slot` on `core`, charge it, and post it unless a cap holds it back."""
        n = len(idx)
        c = self.costs
        stats = conn.pack(slot, task.image, idx, self.encoders and self.encoders[me], task.vm,
                          task.phase == "downtime", bulk=task.phase == "bulk")
        # Every page is checked; only pages with contents are transferred.
        # Compression costs what the codec cost model says for these pages
        # (not their measured time, whose per-call part 1/memory_scale would
        # magnify), scaled like a per-page cost. Its bytes stream out as they are
        # encoded (`began`): the link need not wait for the whole batch.
        began = core.t
        core.charge(self.real_s(c.handle_us, n) + self.real_s(c.send_us, stats.pages - stats.zero)
                    + self.real_s(stats.model_us, 1))
        if not capped:  # sent when its charged work ended, however late this thread is
            conn.post(slot, task.vm, stats.pages, stats, at=core.t, began=began)
        return stats

    def _locked_step(self, core, start: int, length: int, mode: str, us_per_page: float, n: int) -> None:
        """A modelled address-space operation: hold the lock for its cost, on `core`."""
        if us_per_page <= 0:
            return
        asked = time.monotonic()
        with self.lock.hold(start, length, mode):
            core.hold(self.real_s(us_per_page, n), time.monotonic() - asked)
