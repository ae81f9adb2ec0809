"""Storage migration's data path: bulk copy with an I/O mirror (vMotion 5.1,
Figure 1; QEMU's block mirror is its open-source twin).

Three threads and the guest move a disk from a source image to a
destination image:

- the bulk copy reads the source region by region (`region_bytes`, QEMU's
  MAX_IO_BYTES of 1 MiB by default) and enqueues each region into the
  transmit buffer; holes (unallocated extents) are skipped;
- the I/O mirror (`guest_write`) intercepts every guest write: it writes the
  source and, when the write falls behind the copy's cursor (a region
  already copied or being copied), enqueues it into the transmit buffer too;
  a write ahead of the cursor is left to the copy. Guest reads go to the
  source only and need no mirror;
- the transmitter takes the buffer's entries in order, paces them at the
  data path's rate and one-way delay (`DataPath`), and the destination
  writer writes them out through the destination datastore's device.

A guest write to the region being copied is synchronised with the copy by a
range lock (agents/datapath/range_lock.py): the copy holds its region from
the source read until the region is in the buffer, a guest write holds its
blocks from the source write until the mirrored copy is in the buffer. Both
go through one FIFO, applied in order, so no stale block can win.

The transmit buffer is bounded (`buffer_bytes`, QEMU's buf-size): the bulk
copy may fill half of it, mirrored writes all of it. Mirroring is
asynchronous ("background": a write completes once it is in the buffer) and
switches to synchronous ("write-blocking": the write completes once the
destination has it) whenever guest writes outrun the data path or the
destination datastore: mirrored bytes waiting in the buffer pass half the
buffer, or the guest's mirrored write rate over the last `window_s` exceeds
what the path and the destination actually drained over that window while
they had work (measured: a slowed link or a slow destination shows; the
planned rate stands in only until a window has been measured). It switches back once the rate has stayed below
`back_ratio` of the drain for a `window_s` (seed: "switches from
asynchronous mode to synchronous mirror mode whenever the guest write I/O
rate is faster than the network transfer rate ... or I/O throughput at the
destination datastore"). With `copy_mode = "write-blocking"` mirroring is
synchronous throughout (Storage vMotion's local mirror, QEMU's copy-mode).

On the `network` path the disk's bytes cross the migration's link: a
`LinkGate` asks the link (its LinkAgent) for line time every GATE_PERIOD_S
of real time, two looks' worth ahead, and the transmitter sends only bytes
the link granted. The link's fair queue (deficit round robin, one flow per
disk copy beside each memory connection) admits the asks as it admits page
batches, and grants nothing while it is down (a `link-down` fault, however
short); so a memory copy running at the same time (pre-copy while the
mirror goes on) and the disk copy share the link as its queue says, and a
`set-link` bandwidth change or background traffic slow both.

QEMU's job vocabulary in `status()`: offset and len (the job's length grows
as the guest rewrites copied blocks), ready (the bulk copy is done), and
actively_synced (ready and nothing left in flight).
"""
from __future__ import annotations

import math
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from agents.datapath.clock import sleep_until
from agents.datapath.datastore import Device
from agents.datapath.range_lock import RangeLock
from agents.datapath.token_bucket import TokenBucket
from agents.guest.disk import BLOCK, EXTENT, DiskImage

BACKGROUND, WRITE_BLOCKING = "background", "write-blocking"
# The copy's threads may run this far (real seconds) ahead of the devices and
# the path they are paced by: their completion times are booked exactly
# (FIFO arithmetic), so the rates hold, and a thread sleeps only when it
# gets further ahead, instead of spinning towards every region's deadline.
PACE_SLACK_S = 0.002
GATE_PERIOD_S = 0.02  # real seconds between two looks at the link's state (network path)
IDLE = object()  # TransmitBuffer.get: nothing came in time


def pace(deadline: float) -> None:
    """Wait until `deadline` is no more than PACE_SLACK_S away."""
    if deadline - time.monotonic() > PACE_SLACK_S:
        sleep_until(deadline - PACE_SLACK_S)


class Behind:
    """Real seconds a copy thread's own work kept it behind its schedule: its overrun.

    A thread that paces itself to a schedule (the source device's completion of its last
    read, the path's line time) should be ready for its next step as the last one ends;
    how much later it comes, less what it spent waiting for others (room in the buffer,
    a guest write's lock, an empty buffer), is this machine's overhead, which stretches
    the copy's emulated time as a late pipeline stage does (cluster/collect.py saturation)."""

    def __init__(self) -> None:
        self.s = 0.0
        self.due: float | None = None  # when the next step was due (None: no schedule to keep yet)
        self.waited = 0.0  # real seconds waited for others since the last step

    def wait(self, since: float) -> None:
        """The thread waited for others from `since` until now."""
        self.waited += time.monotonic() - since

    def step(self, now: float, due_next: float) -> None:
        """A step begins at `now`; the next is due at `due_next` (real monotonic seconds)."""
        if self.due is not None:
            self.s += max(0.0, now - self.due - self.waited)
        self.due, self.waited = due_next, 0.0

    def restart(self) -> None:
        """A pause the schedule has (between a dirty bitmap's passes): no lateness across it."""
        self.due = None


@dataclass(frozen=True)
class DataPath:
    """How the disk's bytes travel, in physical units: `kind` is network (the
    migration network), storage-interface (the source host's HBA reaches the
    destination datastore) or array-offload (the array copies, VAAI XCOPY);
    `rate_bytes_s` is its capacity, `delay_s` its one-way delay."""

    kind: str
    rate_bytes_s: float
    delay_s: float = 0.0

    @property
    def network_bytes(self) -> bool:
        return self.kind == "network"


class LinkGate:
    """The link a disk copy on the `network` path crosses, as its transmitter sees it.

    `ask(nbytes, need, wait_s) -> (down, rate_bytes_s, granted)` asks the link for the line time of
    `nbytes` more (negative: withdraw what is still asked) and returns its state (real
    bytes/s; rate None: unchanged) and the bytes it granted since the last call: the
    link's fair queue admits the copy's asks beside the memory batches
    (agents/datapath/link.py `ask_disk`), and the copy sends only what was granted.
    Asked at most every `period_s` real seconds; `down_s` is how long it has been down (0: up)."""

    def __init__(self, ask, period_s: float = GATE_PERIOD_S) -> None:
        self.ask, self.period = ask, period_s
        self.down, self.rate = False, None
        self.credit = 0  # bytes granted and not yet sent
        self.asked = 0  # bytes asked and not yet granted
        self.ask_s = 0.0  # how long the last ask took (real s; a Ray round trip to the links)
        self.down_since: float | None = None
        self._t = -1e18

    def poll(self, now: float, want: int = 0, need: int = 0) -> None:
        """Look at the link (at most every period unless `need` > the credit in hand), asking for
        enough line time that `want` bytes are granted or asked; waiting up to a quarter
        period for `need` (the copy has an entry to send and not the credit for it)."""
        short = max(0, need - self.credit)
        if not short and now - self._t < self.period:
            return
        self._t = now
        more = max(0, want - self.asked - self.credit)
        self.down, self.rate, granted = self.ask(more, short, self.period / 4 if short else 0.0)
        self.ask_s = time.monotonic() - now
        self.asked += more - granted
        self.credit += granted
        self.down_since = (self.down_since or now) if self.down else None

    def take(self, nbytes: int) -> None:
        self.credit -= nbytes

    def withdraw(self) -> None:
        """The copy is over: what it asked and was not granted leaves the link's queue, and
        what was granted and not sent is taken off the link's count."""
        if self.asked > 0 or self.credit > 0:
            self.ask(-1 - self.credit)
            self.asked = self.credit = 0
            self._t = -1e18  # the next entry asks at once

    def down_s(self) -> float:
        return time.monotonic() - self.down_since if self.down_since is not None else 0.0


@dataclass
class Entry:
    seq: int
    offset: int
    data: bytes
    mirrored: bool  # a guest write (True) or a bulk-copy region (False)
    crc: int = 0  # its checksum when enqueued; the destination writer checks it

    def __post_init__(self) -> None:
        self.crc = zlib.crc32(self.data)


class TransmitBuffer:
    """The bounded FIFO between the copy and mirror and the destination writer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.fill = 0  # bytes enqueued and not yet written at the destination
        self.mirror_fill = 0  # of which mirrored guest writes
        self.high_water = 0
        self.applied = 0  # highest sequence number written at the destination
        self.closed = False
        self._seq = 0
        self._q: deque[Entry] = deque()
        self._cond = threading.Condition()

    def put(self, offset: int, data: bytes, mirrored: bool, limit: int) -> int:
        """Enqueue; wait while the buffer holds more than `limit - len(data)`. Its sequence number, 0 if closed."""
        n = len(data)
        with self._cond:
            self._cond.wait_for(lambda: self.closed or self.fill == 0 or self.fill + n <= limit)
            if self.closed:
                return 0
            self._seq += 1
            self._q.append(Entry(self._seq, offset, data, mirrored))
            self.fill += n
            self.mirror_fill += n if mirrored else 0
            self.high_water = max(self.high_water, self.fill)
            self._cond.notify_all()
            return self._seq

    def get(self, timeout: float | None = None) -> Entry | None:
        """The next entry; None once closed; IDLE when none came within `timeout`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.closed or self._q, timeout):
                return IDLE
            return None if self.closed else self._q.popleft()

    def done(self, entry: Entry) -> None:
        with self._cond:
            self.fill -= len(entry.data)
            self.mirror_fill -= len(entry.data) if entry.mirrored else 0
            self.applied = entry.seq
            self._cond.notify_all()

    def wait_applied(self, seq: int, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.closed or self.applied >= seq, timeout)

    def wait_empty(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.closed or self.fill == 0, timeout) and not self.closed

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class ModeSwitch:
    """When mirroring goes synchronous and back (pure: times are given in emulated s).

    `observe(t, mirrored_bytes, mirror_fill, buffer_fill)` is told of every mirrored
    write (and may be told of none, to let time pass); it returns the mode now.
    `drained(t, nbytes)` is told of every entry the destination has written.

    The drain it judges against is measured, not planned: the bytes the path and
    the destination datastore actually took over the last window, per second in
    which the buffer held something for them (a link slowed by a `set-link` or
    by other traffic, a destination datastore slower than its figures, all
    show). Until a window has been measured, `drain_bytes_s` (the planned
    rate) stands in for it.
    """

    def __init__(self, capacity: int, drain_bytes_s: float, window_s: float, back_ratio: float = 0.8,
                 mode: str = BACKGROUND) -> None:
        self.capacity, self.planned, self.window, self.back = capacity, drain_bytes_s, window_s, back_ratio
        self.mode = mode
        self.fixed = mode == WRITE_BLOCKING
        self.since = 0.0  # when the current mode began
        self._writes: deque[tuple[float, int]] = deque()
        self._in_window = 0
        self._drains: deque[tuple[float, int, float]] = deque()  # (t, bytes written, busy s since the last)
        self._drained, self._busy = 0, 0.0
        self._last_t, self._backlog = 0.0, False

    def rate(self, t: float) -> float:
        """Mirrored bytes per emulated second over the last window."""
        while self._writes and self._writes[0][0] < t - self.window:
            self._in_window -= self._writes.popleft()[1]
        return self._in_window / self.window

    def drain(self, t: float) -> float:
        """Bytes per emulated second the destination took while it had work, over the last window;
        the planned rate until it has been busy a tenth of a window."""
        while self._drains and self._drains[0][0] < t - self.window:
            _, n, busy = self._drains.popleft()
            self._drained -= n
            self._busy -= busy
        return self._drained / self._busy if self._busy >= self.window / 10 else self.planned

    def _tick(self, t: float, buffer_fill: int) -> float:
        """Time passes: the busy time since the last look (the buffer held something)."""
        busy = max(0.0, t - self._last_t) if self._backlog else 0.0
        self._last_t, self._backlog = t, buffer_fill > 0
        return busy

    def drained(self, t: float, nbytes: int, buffer_fill: int) -> None:
        busy = self._tick(t, buffer_fill + nbytes)  # it held this entry until now
        self._drains.append((t, nbytes, busy))
        self._drained += nbytes
        self._busy += busy
        self._backlog = buffer_fill > 0

    def observe(self, t: float, nbytes: int, mirror_fill: int, buffer_fill: int | None = None) -> str:
        if nbytes:
            self._writes.append((t, nbytes))
            self._in_window += nbytes
        busy = self._tick(t, mirror_fill if buffer_fill is None else buffer_fill)
        if busy:
            self._drains.append((t, 0, busy))
            self._busy += busy
        if self.fixed:
            return self.mode
        rate, drain = self.rate(t), self.drain(t)
        if self.mode == BACKGROUND and (mirror_fill >= self.capacity // 2 or rate > drain):
            self.mode, self.since = WRITE_BLOCKING, t
        elif (self.mode == WRITE_BLOCKING and t - self.since >= self.window and rate <= self.back * drain
              and mirror_fill < self.capacity // 4):
            self.mode, self.since = BACKGROUND, t
        return self.mode


@dataclass
class MirrorStats:
    """A mirror job's figures (real bytes; times in emulated seconds)."""

    copied_bytes: int = 0  # bulk copy regions written at the destination
    mirrored_bytes: int = 0  # guest writes written at the destination
    mirrored_writes: int = 0
    guest_writes: int = 0
    switches: list = field(default_factory=list)  # (t, mode, buffer fill bytes)
    mode_s: dict = field(default_factory=lambda: {BACKGROUND: 0.0, WRITE_BLOCKING: 0.0})
    write_latency_s: dict = field(default_factory=lambda: {BACKGROUND: [0, 0.0], WRITE_BLOCKING: [0, 0.0]})
    copy_done_t: float | None = None
    batches_corrupted: int = 0  # entries damaged on the way (a `corrupt-batch` fault), caught by their checksum
    batches_resent: int = 0


class MirrorJob:
    """Bulk copy plus I/O mirror from `src` to `dst` (see the module's docstring).

    `src_dev`/`dst_dev` are the datastores' devices (None: unpaced); `path`
    the data path (None: unpaced). Sizes are real bytes; `path`'s rate is
    physical and scaled here by memory_scale / dilation.
    """

    def __init__(self, src: DiskImage, dst: DiskImage, src_dev: Device | None, dst_dev: Device | None,
                 path: DataPath | None, region_bytes: int = 1 << 20, buffer_bytes: int = 16 << 20,
                 copy_mode: str = BACKGROUND, window_s: float = 0.5, memory_scale: float = 1.0,
                 dilation: float = 1.0, gate: LinkGate | None = None) -> None:
        if region_bytes <= 0 or region_bytes % BLOCK or buffer_bytes < 2 * region_bytes:
            raise ValueError(f"region_bytes must be a positive multiple of {BLOCK} and buffer_bytes at least "
                             f"twice it; got {region_bytes}, {buffer_bytes}")
        if src.nbytes != dst.nbytes:
            raise ValueError(f"source and destination disks differ in size: {src.nbytes} vs {dst.nbytes}")
        self.src, self.dst, self.src_dev, self.dst_dev, self.path = src, dst, src_dev, dst_dev, path
        self.region, self.scale, self.dilation = region_bytes, memory_scale, dilation
        self.buffer = TransmitBuffer(buffer_bytes)
        self.lock = RangeLock()
        self.stats = MirrorStats()
        self.cursor = 0  # the copy's position: bytes below it are copied or being copied
        self.length = src.allocated_bytes()  # QEMU's len: grows with writes to copied blocks
        self.switch = ModeSwitch(buffer_bytes, self._drain_rate(), window_s, mode=copy_mode)
        self._mode_lock = threading.Lock()
        self._bucket = TokenBucket(path.rate_bytes_s * memory_scale / dilation, 0.0) if path else None
        self.gate = gate if self._bucket is not None else None
        self._arrivals: deque[tuple[float, Entry, bytes]] = deque()  # (arrival, entry, bytes as they arrive)
        self._booked: dict[int, float] = {}  # a mirrored write's booked completion at the destination
        self._corrupt_left = 0  # fault injection: entries to damage on the way
        self._gate_lock = threading.Lock()  # the transmitter and a resend (the writer's) ask the link in turn
        self._arrived = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.error: str | None = None
        self.t0 = 0.0
        self.t_end: float | None = None  # when finish() stopped the threads (real)
        # Overrun (real s) of the copy's reads and of the path's sends against their schedules,
        # and how late the destination writer ran behind its entries' arrivals (`_writer_behind`).
        self.read_behind, self.send_behind = Behind(), Behind()
        self.write_overrun_s, self._write_late = 0.0, 0.0

    # --- life cycle --------------------------------------------------------
    def start(self) -> None:
        self.t0 = time.monotonic()
        for name, fn in (("bulk-copy", self._copy), ("transmit", self._transmit), ("disk-writer", self._write)):
            t = threading.Thread(target=self._guard(fn), daemon=True, name=name)
            t.start()
            self._threads.append(t)

    def _guard(self, fn):
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # reported by status(); the job can then only be cancelled
                self.error = f"{type(exc).__name__}: {exc}"
                self.buffer.close()
        return run

    def now(self) -> float:
        """Emulated seconds since the job started."""
        return (time.monotonic() - self.t0) / self.dilation

    def ready(self) -> bool:
        """QEMU's BLOCK_JOB_READY: the bulk copy has been through the whole disk."""
        return self.stats.copy_done_t is not None

    def wait_synced(self, timeout: float) -> bool:
        """Wait until ready and nothing is in flight (the switch-over's condition)."""
        deadline = time.monotonic() + timeout
        while not self.ready() and self.error is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.ready() and self.buffer.wait_empty(max(0.0, deadline - time.monotonic()))

    def quiesce(self) -> None:
        """The VM has stopped (the mirror needs nothing more: its writes are already in flight)."""

    def finish(self) -> None:
        """Stop the threads (after wait_synced, or to cancel)."""
        self.buffer.close()
        with self._arrived:
            self._arrived.notify_all()
        for t in self._threads:
            t.join(timeout=10)
        self.t_end = self.t_end or time.monotonic()
        self._account_mode(self.now())

    def saturation(self) -> float:
        """The share of the job's real time by which its slowest thread ran behind its schedule
        (this machine's overhead in the copy, the mirror and the destination writer: their
        work took longer than the devices and the path allow it). Above 0.05, raise dilation."""
        elapsed = (self.t_end or time.monotonic()) - self.t0
        worst = max(self.read_behind.s, self.send_behind.s, self.write_overrun_s)
        return worst / elapsed if elapsed > 0 and self.t0 > 0 else 0.0

    def cancel(self) -> None:
        """Stop and remove the destination's partial disk; the source is left as the guest wrote it."""
        self.finish()
        self.dst.unlink()

    # --- the guest's writes (the I/O mirror) ---------------------------------
    def guest_write(self, offset: int, data) -> float:
        """A guest write: to the source, and mirrored when behind the copy's cursor.
        Returns the real seconds one of the emulated writes it stands for (agents/guest/disk.py)
        waits for the mirror: in write-blocking mode until the destination has it, as booked
        on the path and the destination's device, less its own batch's booking there beyond a
        single write's; in background mode the wait for room in the buffer."""
        t0 = time.monotonic()
        seq = 0
        with self.lock.hold(offset, len(data), "map"):
            self.src.pwrite(offset, data)
            self.stats.guest_writes += 1
            if offset < self.cursor and not self.buffer.closed:
                seq = self.buffer.put(offset, bytes(data), True, self.buffer.capacity)
                self.length += len(data)
        mode = self._observe(len(data) if seq else 0)
        waited = time.monotonic() - t0
        if seq and mode == WRITE_BLOCKING:
            self.buffer.wait_applied(seq)
            booked = self._booked.pop(seq, time.monotonic())
            waited = max(waited, booked - t0 - self._batch_beyond_one_s(len(data)))
        self._booked.pop(seq, None)
        lat = self.stats.write_latency_s[mode]
        lat[0] += 1
        lat[1] += waited / self.dilation
        return waited

    def _batch_beyond_one_s(self, nbytes: int) -> float:
        """Real seconds a mirrored write of `nbytes` real bytes occupies the path and the
        destination datastore beyond what one emulated write of that size would."""
        beyond = 0.0
        if self._bucket is not None:
            beyond += nbytes / self._bucket.rate * (1 - self.scale)
        if self.dst_dev is not None:
            one = self.dst_dev.model.service_s(True, 1, nbytes, True) * self.dilation
            beyond += self.dst_dev.real_service_s(True, 1, nbytes, True) - one
        return beyond

    def _observe(self, nbytes: int) -> str:
        with self._mode_lock:
            t = self.now()
            before = self.switch.mode
            mode = self.switch.observe(t, nbytes, self.buffer.mirror_fill, self.buffer.fill)
            if mode != before:
                self._account_mode(t, before)
                self.stats.switches.append((round(t, 4), mode, self.buffer.fill))
            return mode

    def _account_mode(self, t: float, mode: str | None = None) -> None:
        mode = mode or self.switch.mode
        self.stats.mode_s[mode] += t - self._mode_t()
        self._last_mode_t = t

    def _mode_t(self) -> float:
        return getattr(self, "_last_mode_t", 0.0)

    # --- the threads ----------------------------------------------------------
    def _drain_rate(self) -> float:
        """Real bytes per emulated second the path and the destination can take."""
        rates = [self.path.rate_bytes_s] if self.path else []
        if self.dst_dev is not None:
            rates.append(self.dst_dev.model.write_mbytes_s * 1e6)
        return min(rates) * self.scale if rates else float("inf")

    def _copy(self) -> None:
        half, last = self.buffer.capacity // 2, 0
        for start in range(0, self.src.nbytes, self.region):
            if self.buffer.closed:
                return
            n = min(self.region, self.src.nbytes - start)
            asked = time.monotonic()
            with self.lock.hold(start, n, "map"):
                self.read_behind.wait(asked)  # a guest write held the region
                self.cursor = start + n  # writes to this region now wait, then are mirrored
                for a, b in self._allocated_runs(start, n):
                    self._paced_read(b - a, random=False)
                    last = self._enqueue(a, self.src.pread(a, b - a), half) or last
        self.buffer.wait_applied(last)  # the copy is done once its last region is written
        self.stats.copy_done_t = self.now()

    def _paced_read(self, nbytes: int, random: bool) -> None:
        """Book a read of `nbytes` on the source device and wait for it; count how late this
        thread came to it against the completion of its previous read (`read_behind`)."""
        if self.src_dev is None:
            return
        now = time.monotonic()
        done = self.src_dev.reserve(False, nbytes, random=random, t=now)
        self.read_behind.step(now, done)
        pace(done)

    def _enqueue(self, offset: int, data: bytes, limit: int) -> int:
        """A region into the transmit buffer (its sequence number); waiting for room is not overrun."""
        t = time.monotonic()
        seq = self.buffer.put(offset, data, False, limit)
        self.read_behind.wait(t)
        return seq

    def _allocated_runs(self, start: int, n: int) -> list[tuple[int, int]]:
        """Byte ranges [a, b) of the region [start, start + n) that hold allocated extents (holes are skipped)."""
        first, last = start // EXTENT, (start + n - 1) // EXTENT + 1
        alloc = np.concatenate([[False], self.src.allocated[first:last], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(alloc))
        runs = (edges.reshape(-1, 2) + first) * EXTENT
        return [(max(int(a), start), min(int(b), start + n)) for a, b in runs]

    def _transmit(self) -> None:
        try:
            while True:
                asked = time.monotonic()
                entry = self.buffer.get(2 * self.gate.period if self.gate is not None else None)
                if entry is IDLE:  # nothing to send for two looks: no line time held from the memory copy
                    self._withdraw()
                    entry = self.buffer.get()
                if entry is None:
                    break
                self.send_behind.wait(asked)  # nothing to send meanwhile
                self._follow_link(len(entry.data))
                self._send(entry)
        finally:
            if self.gate is not None:
                self._withdraw()

    def _withdraw(self) -> None:
        with self._gate_lock:
            self.gate.withdraw()

    def _follow_link(self, nbytes: int) -> None:
        """The network path: wait until the link has granted `nbytes` of line time (none is
        granted while it is down, and the link's fair queue shares it with the memory
        batches); take the rate the link allows now."""
        if self.gate is None:
            return
        with self._gate_lock:
            self._granted(nbytes)

    def _granted(self, nbytes: int) -> None:
        """_follow_link's wait, under the gate's lock."""
        g = self.gate

        def want() -> int:  # asked ahead: two looks and two of the asks' round trips
            return max(nbytes, int((2 * g.period + 2 * g.ask_s) * min(self._bucket.rate, g.rate or math.inf)))
        g.poll(time.monotonic(), want(), nbytes)
        while (g.down or g.credit < nbytes) and not self.buffer.closed:
            if g.down:
                time.sleep(g.period / 4)
            g.poll(time.monotonic(), want(), nbytes)
        g.take(nbytes)
        if g.rate and g.rate != self._bucket.rate:
            self._bucket.set_rate(g.rate, time.monotonic())

    def _send(self, entry: Entry) -> None:
        """Onto the path: paced at its rate; on the network path the link's grant paced it already."""
        t = time.monotonic()
        if self._bucket is not None and self.gate is None:
            now, t = t, self._bucket.departure(len(entry.data), t)
            self.send_behind.step(now, t)
            pace(t)
        with self._arrived:
            self._arrivals.append((t + self._delay(), entry, self._on_the_way(entry.data)))
            self._arrived.notify()

    def _delay(self) -> float:
        return self.path.delay_s * self.dilation if self.path else 0.0

    def corrupt(self, count: int) -> None:
        """Fault injection (`corrupt-batch`): damage one byte of each of the next `count` entries sent."""
        self._corrupt_left += count

    def _on_the_way(self, data: bytes) -> bytes:
        """What arrives: the entry's bytes, one of them flipped while a corrupt-batch fault lasts."""
        if self._corrupt_left <= 0 or not data:
            return data
        self._corrupt_left -= 1
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0xFF
        return bytes(damaged)

    def _received(self, entry: Entry, payload: bytes, arrival: float) -> float:
        """The destination checks the entry's checksum; a damaged one is NACKed and sent again
        (one more pass over the path); the real time its good copy arrived."""
        while zlib.crc32(payload) != entry.crc:
            self.stats.batches_corrupted += 1
            self.stats.batches_resent += 1
            t = arrival + self._delay()  # the NACK goes back
            if self.gate is not None:  # the network path: the resend asks the link for its line time, as any bytes
                pace(t)
                self._follow_link(len(entry.data))
                t = max(t, time.monotonic())
            elif self._bucket is not None:
                t = self._bucket.departure(len(entry.data), t)
            arrival, payload = t + self._delay(), self._on_the_way(entry.data)
        return arrival

    def _write(self) -> None:
        while True:
            with self._arrived:
                self._arrived.wait_for(lambda: self.buffer.closed or self._arrivals)
                if self.buffer.closed:
                    return
                arrival, entry, payload = self._arrivals.popleft()
            arrival = self._received(entry, payload, arrival)
            if self.dst_dev is not None:
                arrival = self.dst_dev.reserve(True, len(entry.data), random=entry.mirrored, t=arrival)
            pace(arrival)
            self._writer_behind(arrival)
            self.dst.pwrite(entry.offset, entry.data)
            if entry.mirrored:
                self._booked[entry.seq] = arrival
                self.stats.mirrored_bytes += len(entry.data)
                self.stats.mirrored_writes += 1
            else:
                self.stats.copied_bytes += len(entry.data)
            self.buffer.done(entry)
            with self._mode_lock:
                self.switch.drained(self.now(), len(entry.data), self.buffer.fill)
            self._observe(0)

    def _writer_behind(self, due: float) -> None:
        """The destination writer got to an entry due at `due` (real); what it fell further behind
        its entries' schedule since the last one is overrun (a writer that catches up again
        does not give it back: the entries it held late held the buffer, and the copy, too)."""
        late = time.monotonic() - due
        self.write_overrun_s += max(0.0, late - self._write_late)
        self._write_late = max(0.0, late)

    # --- figures ------------------------------------------------------------
    def status(self) -> dict:
        """QEMU query-block-jobs-like figures (real bytes) and the mirror's mode."""
        return {"offset": self.stats.copied_bytes + self.stats.mirrored_bytes, "len": self.length,
                "ready": self.ready(), "actively_synced": self.ready() and self.buffer.fill == 0,
                "mode": self.switch.mode, "buffer_fill": self.buffer.fill, "error": self.error,
                "link_down_s": self.gate.down_s() if self.gate is not None else 0.0}

    def verify(self) -> np.ndarray:
        """Digest runs (of 16 blocks) where the destination differs from the source."""
        a, b = self.src.digests(), self.dst.digests()
        return np.flatnonzero((a != b).any(axis=1))
