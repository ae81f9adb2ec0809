"""A link: one NIC pair, shaped to its bandwidth and latency.

Several connections share a link (PMigrate runs two consumers per NIC port;
several migrations may cross one link at once). Descriptors of batches
arrive from the senders and wait in their connection's queue; whenever the
link can take the next batch, a fair queue (deficit round robin by bytes,
agents/datapath/fair_queue.py) picks the connection, so backlogged
connections get equal shares (max-min) and each keeps its own order. One
token bucket per link gives the time that batch has finished leaving the
NIC (bandwidth): bytes serialize at line rate, with no idle credit (see
agents/datapath/token_bucket.py). Batches cut through: a batch whose encoding
began at its descriptor's t_first starts to leave then, and its last page
no earlier than the encoding's end plus that page's line time; it is handed
to its connection's receiver as its first page arrives, one one-way latency
later, stamped with when its first and last pages arrive, and the receiver
restores pages as they come. Bytes stay in shared memory; only descriptors
pass through here.

A storage migration's disk copy on the network path is one more flow of
the fair queue: it asks for line time (`ask_disk`), its asks wait in the
queue beside the batches, and the bytes admitted are granted to it; it
sends only what was granted (agents/datapath/mirror.py `LinkGate`), so a
disk copy and a memory copy on one link share it as the queue says.

Background traffic of a co-located VM (e.g. a web server) shares the NIC.
Each emulated second a monitor measures both NICs' use and sets the
migration's share: without rate control the two flows split the link fairly
(max-min, as TCP flows would); with PMigrate's network rate control
(§3.2) the migration takes only the spare bandwidth, but never less than its
reserved minimum.

The control plane may change bandwidth, latency and background traffic at
run time (from another thread); a change applies to batches not yet
admitted into the bucket.

Faults: a link that is down (`set_down`) admits and delivers nothing;
batches wait in their queues, as TCP keeps unacknowledged data, and what was
on the wire goes again one latency after the link comes back. A sender whose
connection broke sends RESET: its queued and in-flight batches are dropped,
each handed to its receiver at once as DROPPED (only so its slot comes back:
no bytes are restored). A fault hook (`corrupt_next`) may damage a batch as
it enters the link.

One thread does admission, pacing and delivery, waiting in `select` and
spinning only the last stretch: two threads spinning in one process would
fight over the GIL and blur the latency by milliseconds.

Urgent batches (KIND_URGENT: post-copy's requested pages) do not queue:
each leaves at once at line rate, its frames interleaved with those of the
batch leaving (a NIC's frames are 1.5 KiB, so the wait for the frame on the
wire is left out), and the batches after it leave that much later. A real
page stands for 1/memory_scale emulated ones, faulted one after the other
(agents/guest/remote_memory.py): the first arrives after its own line time,
memory_scale of the real page's, while the link is taken for all of them. Whatever
wait the requested page had behind the stream's own backlog is the
sender's to add (agents/techniques/postcopy.py), in emulated bytes.
"""
from __future__ import annotations

import collections
import math
import select
import socket
import threading
import time
from dataclasses import dataclass

from agents.datapath.channel import (
    DESCRIPTOR,
    KIND_CLOSE,
    KIND_DROPPED,
    KIND_RESET,
    KIND_URGENT,
    Channel,
)
from agents.datapath.clock import fine_timer_slack
from agents.datapath.fair_queue import DeficitRoundRobin
from agents.datapath.token_bucket import TokenBucket

# Spin only this last stretch before an event: with 1 MiB batches at 10 Gbit/s an event comes
# every 0.84 ms, and a 1 ms spin kept one of this machine's two cores busy for the whole
# migration (the consumer and the receiver ran late for it). A select with a fine timer slack
# wakes within ~0.03-0.1 ms of its timeout, which the spin absorbs.
_SPIN_S = 0.0002
DISK_PIECE_BYTES = 64 * 1024  # a disk copy's ask joins the fair queue in pieces of this size at most
_CLOSE = (KIND_CLOSE, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0)


def migration_share(capacity: float, background: float, rate_control: bool, reserved: float) -> float:
    """The migration's rate on a link of `capacity` whose background flow wants `background`."""
    if background <= 0:
        return capacity
    if rate_control:
        return min(capacity, max(reserved, capacity - background))
    # Max-min fairness between two greedy-enough flows.
    return capacity - min(background, capacity / 2)


def _later(arrival: float, conn, d: tuple, by: float) -> tuple:
    """A batch on the wire delayed `by` seconds (the link went down): its arrival and its stamps."""
    if by <= 0 or d[0] == KIND_CLOSE:
        return arrival + by, conn, d
    return arrival + by, conn, (*d[:7], *(t + by if t > 0 else t for t in d[7:9]))  # unstamped stays so


@dataclass
class _Connection:
    conn_id: int
    inbound: Channel
    outbound: Channel
    closing: bool = False  # its close arrived while batches still waited


class LinkShaper:
    def __init__(self, rate_bytes_s: float, one_way_s: float,
                 background_bytes_s: float = 0.0, rate_control: bool = False, reserved_bytes_s: float = 0.0,
                 monitor_period_s: float = 1.0, memory_scale: float = 1.0) -> None:
        self.capacity = rate_bytes_s
        self.memory_scale = memory_scale  # real bytes per emulated byte (urgent batches' own line time)
        self.background = background_bytes_s
        self.rate_control = rate_control
        self.reserved = reserved_bytes_s
        self.monitor_period_s = monitor_period_s  # one emulated second, in real seconds
        self.one_way_s = one_way_s
        self.bytes_forwarded = 0
        self.batches_forwarded = 0
        self.bytes_by_connection: dict[int, int] = {}
        # Bytes paced outside the shaper that crossed this link (a storage migration's
        # disk copy on the network path, agents/datapath/mirror.py `LinkGate`), by connection.
        self.disk_bytes = 0
        self.disk_by_connection: dict[int, int] = {}
        # Background throughput the monitor saw: (real seconds observed, bytes moved).
        self.background_seen = [0.0, 0.0]
        self.corrupt_next = None  # fault injection: callable(conn_id, descriptor)
        self.down = False
        self._down_changed = False
        self.batches_dropped = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._rate_changed_at: float | None = None  # a setter changed the share; the loop applies it
        self._disk_debt = 0  # disk bytes whose line time the loop has not booked yet
        # A storage migration's disk copy asks for line time (`ask_disk`): its requests wait in
        # the fair queue as flow ("disk", connection) beside the batches, and what the queue
        # admits is granted to it (the copy sends only bytes granted).
        self._disk_asks: list[tuple[int, int]] = []  # (connection, bytes) for the loop to queue
        self._disk_granted: dict[int, int] = {}  # bytes admitted, not yet collected by the copy
        self._disk_withdrawn: set[int] = set()  # copies that withdrew their asks
        self._granted = threading.Condition(self._lock)  # a grant came
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        # The loop's state, touched by its thread only.
        self._bucket: TokenBucket | None = None
        self._queue = DeficitRoundRobin()  # batches received, not yet admitted into the bucket
        self._line: collections.deque = collections.deque()  # (arrival, connection, descriptor) on the wire
        self._urgent: collections.deque = collections.deque()  # the same, for urgent batches (their own order)
        self._open: dict = {}  # inbound socket -> connection, until its close

    @property
    def migration_rate(self) -> float:
        """The migration's rate while it is sending (the monitor's setting)."""
        return migration_share(self.capacity, self.background, self.rate_control, self.reserved)

    # -- run-time changes (any thread) --

    def set_bandwidth(self, rate_bytes_s: float) -> None:
        """The link's capacity; the migration's share is recomputed at once."""
        if rate_bytes_s <= 0:
            raise ValueError("bandwidth must be positive")
        with self._lock:
            self.capacity = rate_bytes_s
            self._rate_changed_at = time.monotonic()

    def set_background(self, background_bytes_s: float) -> None:
        """What the co-located background flow wants; the migration's share is recomputed at once."""
        if background_bytes_s < 0:
            raise ValueError("background traffic must not be negative")
        with self._lock:
            self.background = background_bytes_s
            self._rate_changed_at = time.monotonic()

    def set_down(self, down: bool) -> None:
        """Take the link down (nothing admitted or delivered) or bring it back up."""
        with self._lock:
            self._down_changed = self.down != down
            self.down = down

    def add_disk_bytes(self, conn_id: int, nbytes: int) -> None:
        """`nbytes` of a disk copy crossed the link for connection `conn_id`'s migration: counted, and
        their line time is taken from the batches (the disk copy paces itself at the link's rate,
        agents/datapath/mirror.py `LinkGate`; a memory copy at the same time gets what is left)."""
        with self._lock:
            self.disk_bytes += nbytes
            self.disk_by_connection[conn_id] = self.disk_by_connection.get(conn_id, 0) + nbytes
            self._disk_debt += nbytes  # line time the batches give up to them (the loop books it)

    def counted_until(self, now: float) -> float:
        """The time up to which the byte counters are exact: `now`, unless the loop is behind its
        schedule (a batch due to arrive, or free to leave, before `now` is not counted yet); then
        that batch's time. A sample dated by it shows the emulated schedule, not the loop's lateness
        (a late loop catches up in a burst, which read at `now` looked like several times the line
        rate)."""
        if self.down:
            return now  # nothing crosses: the counters are exact
        try:
            due = self._line[0][0] if self._line else now
            if self._urgent:
                due = min(due, self._urgent[0][0])
            if self._queue:
                due = min(due, self._bucket.free_at + self.one_way_s)
        except (IndexError, AttributeError):  # the loop moved on, or has not started
            due = now
        # Never before an earlier answer: a batch admitted late can be due before it.
        self._counted_until = max(min(now, due), getattr(self, "_counted_until", -math.inf))
        return self._counted_until

    def ask_disk(self, conn_id: int, nbytes: int, need: int = 0, wait_s: float = 0.0) -> int:
        """A disk copy on the network path for connection `conn_id`'s migration asks for the line
        time of `nbytes` more (agents/datapath/mirror.py `LinkGate`); nbytes = -(1 + unused)
        withdraws what it asked and was not granted, and the `unused` bytes granted that it
        never sent. Returns the bytes granted since its last call: they crossed the link,
        fair-queued with the batches (deficit round robin, one flow per disk copy); waits up to
        `wait_s` for `need` bytes to be granted (a copy with nothing in hand)."""
        with self._lock:
            if nbytes:
                self._disk_asks.append((conn_id, nbytes))
            got = self._disk_granted.pop(conn_id, 0)
            if nbytes < 0:  # granted and never sent: not carried after all
                unused = -nbytes - 1 + got
                self.disk_bytes -= unused
                self.disk_by_connection[conn_id] = self.disk_by_connection.get(conn_id, 0) - unused
                self._disk_withdrawn.add(conn_id)  # nothing more is granted to it until it asks again
                got = 0
            elif nbytes > 0:
                self._disk_withdrawn.discard(conn_id)
        if nbytes:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if need > got and wait_s > 0:
            with self._granted:
                self._granted.wait_for(lambda: got + self._disk_granted.get(conn_id, 0) >= need, wait_s)
                got += self._disk_granted.pop(conn_id, 0)
        return got

    def _queue_disk_asks(self, now: float) -> None:
        """The loop: disk copies' asks join the fair queue (a withdrawal empties their flow)."""
        with self._lock:
            asks, self._disk_asks = self._disk_asks, []
        for cid, n in asks:
            if n < 0:
                self._queue.remove(("disk", cid))
            else:  # in pieces no larger than a batch, so that a turn of the queue is not one big ask
                piece = max(1, min(n, DISK_PIECE_BYTES))
                for k in range(0, n, piece):
                    self._queue.offer(("disk", cid), min(piece, n - k), (None, now, (cid, min(piece, n - k))))

    def _grant_disk(self, cid: int, n: int, offered: float) -> None:
        """The fair queue admitted `n` disk bytes: their line time is booked, they are counted
        (unless the copy withdrew its asks meanwhile)."""
        with self._lock:
            if cid in self._disk_withdrawn:
                return
        self._bucket.departure(n, offered)
        with self._lock:
            self._disk_granted[cid] = self._disk_granted.get(cid, 0) + n
            self._granted.notify_all()
            self.disk_bytes += n
            self.disk_by_connection[cid] = self.disk_by_connection.get(cid, 0) + n

    @property
    def bytes_carried(self) -> int:
        """All bytes that crossed the link: batches forwarded and disk bytes."""
        return self.bytes_forwarded + self.disk_bytes

    def set_one_way(self, one_way_s: float) -> None:
        if one_way_s < 0:
            raise ValueError("one-way latency must not be negative")
        self.one_way_s = one_way_s  # read at each admission

    # -- the loop --

    def run(self, pairs: list[tuple[int, Channel, Channel]]) -> None:
        """Shape descriptors from each (conn_id, inbound, outbound) connection, in a thread."""
        conns = [_Connection(cid, inbound, outbound) for cid, inbound, outbound in pairs]
        # Every key exists before the loop starts, so readers may copy the dict any time.
        self.bytes_by_connection.update({c.conn_id: 0 for c in conns if c.conn_id not in self.bytes_by_connection})
        self._open = {c.inbound.sock: c for c in conns}
        self._thread = threading.Thread(target=self._loop, daemon=True, name="link")
        self._thread.start()

    def _loop(self) -> None:
        fine_timer_slack()
        rate = max(1.0, self.migration_rate)
        now = time.monotonic()
        self._bucket = TokenBucket(rate, now)
        window = [now, self.bytes_carried]
        while self._open or self._queue or self._line or self._urgent:
            now = time.monotonic()
            self._apply_rate_change()
            if self.down:
                self._receive(0.01)  # resets and new batches still come in; nothing leaves
                continue
            self._monitor(now, window)
            due = self._next_event()
            wait = due - now
            if wait > _SPIN_S:
                self._receive(min(wait - _SPIN_S, self.monitor_period_s))
                continue
            while time.monotonic() < due:
                pass  # the last fraction of a millisecond: spin for precision
            self._receive(0.0)  # what came in while spinning competes for this turn too
            self._admit(time.monotonic())
            self._deliver(time.monotonic())
        self._wake_r.close()
        self._wake_w.close()

    def _next_event(self) -> float:
        """The next time the loop must act: a delivery, or the link free for a waiting batch."""
        due = self._line[0][0] if self._line else math.inf
        if self._urgent:
            due = min(due, self._urgent[0][0])
        if self._queue:
            due = min(due, self._bucket.free_at)
        return due

    def _apply_rate_change(self) -> None:
        with self._lock:
            t, self._rate_changed_at = self._rate_changed_at, None
            rate = max(1.0, self.migration_rate)
            back_up, self._down_changed = self._down_changed and not self.down, False
            debt, self._disk_debt = self._disk_debt, 0
        if self._disk_asks:  # (read without the lock: a late one is queued at the next turn)
            self._queue_disk_asks(time.monotonic())
        if t is not None:
            self._bucket.set_rate(rate, t)
        if debt:
            self._bucket.departure(debt, time.monotonic())
        if back_up:  # what was on the wire when it went down goes again
            now = time.monotonic()
            self._line = collections.deque(_later(a, c, d, max(0.0, now + self.one_way_s - a)) for a, c, d in self._line)
            self._urgent = collections.deque(_later(a, c, d, max(0.0, now + self.one_way_s - a))
                                             for a, c, d in self._urgent)
            self._bucket.t = max(self._bucket.t, now)  # no credit for the time it was down

    def _monitor(self, now: float, window: list) -> None:
        """Each period: what did the background get, and what may the migration take next."""
        t0, sent0 = window
        dt = now - t0
        if dt < self.monitor_period_s:
            return
        used = (self.bytes_carried - sent0) / dt
        bg = min(self.background, max(0.0, self.capacity - used))
        self.background_seen[0] += dt
        self.background_seen[1] += bg * dt
        self._bucket.set_rate(max(1.0, self.migration_rate), now)
        window[:] = [now, self.bytes_carried]

    def _receive(self, timeout: float) -> None:
        """Queue the descriptors that arrive within `timeout` (or just sleep, when all are closed)."""
        if not self._open:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([*self._open, self._wake_r], [], [], timeout)
        while ready:  # every descriptor waiting now: an urgent one must not wait behind the others unread
            for sock in ready:
                if sock is self._wake_r:  # a disk copy asked for line time
                    self._wake_r.recv(4096)
                    self._queue_disk_asks(time.monotonic())
                    continue
                self._take(sock)
            ready, _, _ = select.select([*self._open, self._wake_r], [], [], 0) if self._open else ([], [], [])

    def _take(self, sock) -> None:
        """One descriptor from `sock`: queued, interleaved (urgent), or acted on (close, reset)."""
        conn = self._open[sock]
        d = conn.inbound.recv()
        if d is None or d[0] == KIND_CLOSE:
            del self._open[sock]
            self._close(conn)
            return
        if d[0] == KIND_RESET:
            self._drop(conn)
            return
        if self.corrupt_next is not None:
            self.corrupt_next(conn.conn_id, d)
        # Offered when the sender posted it (d[6]), not when this
        # thread woke up: wake-up latency is not link latency.
        offered = min(d[6], time.monotonic())
        if d[0] == KIND_URGENT and not self.down:
            self._interleave(conn, offered, d)
            return
        self._queue.offer(conn.conn_id, d[4], (conn, offered, d))

    def _drop(self, conn: _Connection) -> None:
        """The connection broke: what it has queued or on the wire is lost; each batch's
        receiver hears of it (DROPPED) at once, so the sender gets its slot back."""
        lost = [d for _, _, d in self._queue.remove(conn.conn_id)]
        mine = [item for item in self._line if item[1] is conn and item[2] is not _CLOSE]
        urgent = [item for item in self._urgent if item[1] is conn]
        lost += [d for _, _, d in mine + urgent]
        gone = {id(item) for item in mine + urgent}
        self._line = collections.deque(item for item in self._line if id(item) not in gone)
        self._urgent = collections.deque(item for item in self._urgent if id(item) not in gone)
        for d in lost:
            self.batches_dropped += 1
            try:
                conn.outbound.sock.send(DESCRIPTOR.pack(KIND_DROPPED, *d[1:]))
            except OSError:
                pass

    def _close(self, conn: _Connection) -> None:
        """The close goes behind what the connection still has waiting or on the wire."""
        if self._queue.waiting(conn.conn_id):
            conn.closing = True
        else:
            self._put_on_line(conn, _CLOSE, time.monotonic())

    def _admit(self, now: float) -> None:
        """While the link can take a batch, the fair queue says whose goes next."""
        while self._queue and self._bucket.free_at <= now:
            cid, (conn, offered, d) = self._queue.pop()
            if conn is None:
                self._grant_disk(*d, offered)
                continue
            d = self._cut_through(d, offered)
            self._put_on_line(conn, d, d[8])
            if conn.closing and not self._queue.waiting(cid):
                self._put_on_line(conn, _CLOSE, now)

    def _interleave(self, conn: _Connection, offered: float, d: tuple) -> None:
        """An urgent batch leaves at once, at line rate; the batches after it leave that much later."""
        line_time = d[4] / self._bucket.rate
        self._bucket.t = max(self._bucket.t, offered) + line_time
        arrival = offered + line_time * self.memory_scale + self.one_way_s
        if self._urgent:  # urgent batches keep their order among themselves
            arrival = max(arrival, self._urgent[-1][0])
        self._urgent.append((arrival, conn, d))

    def _cut_through(self, d: tuple, offered: float) -> tuple:
        """Book the batch's line time; returns its descriptor for the receiver, t_first now when its
        first page arrives, t_done when its last. A batch whose encoding began at t_first streams:
        its first pages leave while the last are encoded (TCP sends as the sender writes), so a
        batch costs its stages' longest time, not their sum, and the real batch size does not set
        how long a batch waits (a stored and forwarded 16 MiB batch blurred every downtime by its
        own encoding and restoring)."""
        began = d[8] if 0 < d[8] <= offered else offered
        start = max(self._bucket.free_at, began)
        done = self._bucket.departure(d[4], began, offered, d[4] // max(1, d[3]))
        first = min(done, start + d[4] / max(1, d[3]) / self._bucket.rate) + self.one_way_s
        return (*d[:7], done + self.one_way_s, first)

    def _put_on_line(self, conn: _Connection, d: tuple, arrival: float) -> None:
        """`arrival`: when the batch is handed to the receiver (a streamed batch: as its first page arrives)."""
        # Nothing overtakes on the wire, even when the latency has just shrunk.
        if self._line:
            arrival = max(arrival, self._line[-1][0])
        self._line.append((arrival, conn, d))

    def _deliver(self, now: float) -> None:
        for line in (self._urgent, self._line):
            self._deliver_from(line, now)

    def _deliver_from(self, line: collections.deque, now: float) -> None:
        while line and line[0][0] <= now:
            arrival, conn, d = line.popleft()
            try:  # when its first and last pages arrived on the emulated schedule, however late this thread is
                first = min(d[8] if d[8] > 0 else arrival, now)  # unstamped (a close, an urgent batch): when due
                conn.outbound.sock.send(DESCRIPTOR.pack(*d[:7], max(d[7], first), first))
            except OSError:
                pass  # the receiver is gone (tear-down)
            if d is _CLOSE:
                continue
            self.bytes_forwarded += d[4]
            self.batches_forwarded += 1
            self.bytes_by_connection[conn.conn_id] += d[4]

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)
