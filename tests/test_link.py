"""A shared link in real time: fair shares between connections, order, and run-time changes.

The shaper runs in its thread as in a LinkAgent; the far ends of its sockets
are driven from the test's thread: each connection keeps a window of batches
outstanding (a sender's ring slots, acked on delivery).
"""
from __future__ import annotations

import random
import select
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from agents.datapath.channel import KIND_BATCH, KIND_CLOSE, KIND_URGENT, Channel
from agents.datapath.clock import precise_threads
from agents.datapath.link import LinkShaper

RATE = 40e6  # bytes/s real: modest, so the test's thread keeps up on a loaded machine
BATCH = 32 * 1024
ONE_WAY = 0.001


@pytest.fixture(autouse=True)
def gil_handover():
    """As in the actors: a spinning shaper hands the GIL over every 0.2 ms."""
    before = sys.getswitchinterval()
    precise_threads()
    yield
    sys.setswitchinterval(before)


@dataclass
class Sender:
    # Batches outstanding at once: the sender's ring slots. Enough for a few
    # tens of ms at a fair share, so a loaded machine's stalls leave them backlogged.
    window: int = 16
    interval_s: float = 0.0  # > 0: offers one batch per interval at most (paced)
    batches: int | None = None  # stops after this many
    size: Callable[[int], int] = lambda seq: BATCH


class SharedLink:
    """A shaper whose connections' far ends are socketpairs driven by the caller."""

    def __init__(self, shaper: LinkShaper, conn_ids: list[int]) -> None:
        self.shaper = shaper
        self.to_link: dict[int, Channel] = {}
        self.from_link: dict[int, Channel] = {}
        pairs = []
        for cid in conn_ids:
            a, link_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            link_out, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.to_link[cid], self.from_link[cid] = Channel(a), Channel(b)
            pairs.append((cid, Channel(link_in), Channel(link_out)))
        shaper.run(pairs)
        self.delivered: list[tuple[float, int, tuple]] = []  # (received at, conn_id, descriptor)
        self.t0 = time.monotonic()

    def drive(self, senders: dict[int, Sender], seconds: float,
              events: list[tuple[float, Callable[[], None]]] = ()) -> None:
        """Offer batches as the senders allow for `seconds` (or until all are delivered), then close."""
        self.t0 = t0 = time.monotonic()
        sent = dict.fromkeys(senders, 0)
        outstanding = dict.fromkeys(senders, 0)
        next_at = dict.fromkeys(senders, t0)
        pending_events = sorted(events, key=lambda e: e[0])
        socks = {self.from_link[cid].sock: cid for cid in senders}
        while (now := time.monotonic()) < t0 + seconds:
            while pending_events and now >= t0 + pending_events[0][0]:
                pending_events.pop(0)[1]()
            for cid, s in senders.items():
                while ((s.batches is None or sent[cid] < s.batches) and outstanding[cid] < s.window
                       and now >= next_at[cid]):
                    self.to_link[cid].send(KIND_BATCH, 0, 0, 0, s.size(sent[cid]), sent[cid], time.monotonic())
                    sent[cid] += 1
                    outstanding[cid] += 1
                    next_at[cid] += s.interval_s
            if all(s.batches is not None and sent[c] == s.batches and not outstanding[c] for c, s in senders.items()):
                break
            wake = [t0 + seconds] + [t0 + e[0] for e in pending_events[:1]] + \
                   [next_at[c] for c, s in senders.items() if s.interval_s and outstanding[c] < s.window]
            ready, _, _ = select.select(list(socks), [], [], max(0.0, min(min(wake) - now, 0.01)))
            for sock in ready:
                cid = socks[sock]
                d = self.from_link[cid].recv()
                self.delivered.append((time.monotonic(), cid, d))
                outstanding[cid] -= 1
        self.close(list(senders))

    def close(self, conn_ids: list[int]) -> None:
        """Close every connection and receive up to each one's close."""
        for cid in conn_ids:
            self.to_link[cid].send(KIND_CLOSE)
        socks = {self.from_link[cid].sock: cid for cid in conn_ids}
        deadline = time.monotonic() + 10
        while socks and time.monotonic() < deadline:
            ready, _, _ = select.select(list(socks), [], [], 0.1)
            for sock in ready:
                cid = socks[sock]
                d = self.from_link[cid].recv()
                if d is None or d[0] == KIND_CLOSE:
                    del socks[sock]
                else:
                    self.delivered.append((time.monotonic(), cid, d))
        assert not socks, "a close never came through"
        self.shaper.join(5)

    def rate(self, start: float, end: float, cid: int | None = None) -> float:
        """Bytes/s delivered between `start` and `end` seconds of the run (one or all connections)."""
        lo, hi = self.t0 + start, self.t0 + end
        moved = sum(d[4] for t, c, d in self.delivered if lo < t <= hi and (cid is None or c == cid))
        return moved / (end - start)


def test_four_windowed_connections_share_the_link_equally():
    # Unequal rings and batch sizes: first come, first served would share by bytes outstanding.
    senders = {0: Sender(window=16, size=lambda seq: BATCH // 2), 1: Sender(window=16),
               2: Sender(window=24), 3: Sender(window=32, size=lambda seq: BATCH * 2)}
    link = SharedLink(LinkShaper(RATE, ONE_WAY), [0, 1, 2, 3])
    link.drive(senders, seconds=2.3)
    rates = [link.rate(0.3, 2.3, cid) for cid in range(4)]
    # 10%: first come, first served gives 2.9 / 5.8 / 8.7 / 22.7 MB/s here (a factor of 8).
    assert max(rates) / min(rates) < 1.10, rates
    assert sum(rates) == pytest.approx(RATE, rel=0.02)
    assert link.shaper.bytes_by_connection.keys() == {0, 1, 2, 3}
    assert sum(link.shaper.bytes_by_connection.values()) == link.shaper.bytes_forwarded


def test_a_light_connection_keeps_its_rate_and_the_others_split_the_rest():
    fair = RATE / 4
    light = fair / 4
    senders = {0: Sender(window=16, interval_s=BATCH / light), 1: Sender(window=16, size=lambda seq: BATCH // 2),
               2: Sender(window=24), 3: Sender(window=32, size=lambda seq: BATCH * 2)}
    link = SharedLink(LinkShaper(RATE, ONE_WAY), [0, 1, 2, 3])
    link.drive(senders, seconds=2.3)
    assert link.rate(0.3, 2.3, 0) == pytest.approx(light, rel=0.05)
    for cid in (1, 2, 3):
        assert link.rate(0.3, 2.3, cid) == pytest.approx((RATE - light) / 3, rel=0.05)


@pytest.mark.parametrize("background, rate_control, before, after", [
    (0.0, False, RATE, RATE / 2),
    # With rate control the migration takes the spare capacity: 40-10, then 20-10.
    (10e6, True, RATE - 10e6, RATE / 2 - 10e6),
])
def test_halving_the_bandwidth_halves_the_rate_at_once(background, rate_control, before, after):
    # The monitor never runs within the test: the share must follow the change by itself.
    shaper = LinkShaper(RATE, ONE_WAY, background_bytes_s=background, rate_control=rate_control,
                        monitor_period_s=60.0)
    link = SharedLink(shaper, [0, 1])
    link.drive({0: Sender(), 1: Sender(window=24)}, seconds=2.2, events=[(1.1, lambda: shaper.set_bandwidth(RATE / 2))])
    got_before, got_after = link.rate(0.2, 1.1), link.rate(1.2, 2.2)
    assert got_before == pytest.approx(before, rel=0.03)
    assert got_after == pytest.approx(after, rel=0.03)
    assert got_after / got_before == pytest.approx(after / before, rel=0.05)
    assert shaper.capacity == RATE / 2


def test_disk_bytes_counted_on_the_link_take_their_line_time_from_the_batches():
    shaper = LinkShaper(RATE, ONE_WAY, monitor_period_s=60.0)
    link = SharedLink(shaper, [0])
    stop = threading.Event()

    def disk_copy() -> None:  # a disk copy paced at half the link, as LinkGate reports it
        while not stop.wait(0.02):
            shaper.add_disk_bytes(0, int(RATE / 2 * 0.02))

    link.drive({0: Sender()}, seconds=2.2, events=[(1.0, threading.Thread(target=disk_copy, daemon=True).start)])
    stop.set()
    assert link.rate(0.2, 1.0) == pytest.approx(RATE, rel=0.03)
    assert link.rate(1.2, 2.2) == pytest.approx(RATE / 2, rel=0.08)  # the batches get what the disk leaves
    assert shaper.bytes_carried == shaper.bytes_forwarded + shaper.disk_bytes
    assert shaper.disk_by_connection == {0: shaper.disk_bytes}


def test_a_disk_copy_asking_for_line_time_shares_the_link_fairly_with_a_memory_connection():
    shaper = LinkShaper(RATE, ONE_WAY, monitor_period_s=60.0)
    link = SharedLink(shaper, [0])
    stop = threading.Event()
    granted: list[tuple[float, int]] = []

    def disk_copy() -> None:  # greedy: keeps two looks' worth of line time asked, as LinkGate does
        asked = 0
        while not stop.wait(0.02):
            got = shaper.ask_disk(0, max(0, int(RATE * 0.04) - asked))
            asked = int(RATE * 0.04) - got
            granted.append((time.monotonic(), got))
        shaper.ask_disk(0, -1)

    link.drive({0: Sender(window=64)}, seconds=2.2,
               events=[(1.0, threading.Thread(target=disk_copy, daemon=True).start)])
    stop.set()
    disk, memory = sum(g for t, g in granted if link.t0 + 1.2 < t <= link.t0 + 2.2), link.rate(1.2, 2.2)
    # Two backlogged flows in the fair queue: half the link each.
    assert abs(disk - memory) < 0.15 * RATE, (disk, memory)
    assert disk + memory == pytest.approx(RATE, rel=0.10)
    assert shaper.disk_by_connection == {0: shaper.disk_bytes}


def test_each_connection_keeps_its_order_and_its_close_comes_last():
    rng = random.Random(7)
    sizes = {cid: [rng.randrange(1024, 64 * 1024) for _ in range(150)] for cid in (0, 1, 2)}
    link = SharedLink(LinkShaper(RATE, ONE_WAY), [0, 1, 2])
    # Every batch offered at once, then the close: it must wait behind them all.
    for cid, batch_sizes in sizes.items():
        for seq, n in enumerate(batch_sizes):
            link.to_link[cid].send(KIND_BATCH, 0, 0, 0, n, seq, time.monotonic())
    link.close([0, 1, 2])
    for cid, batch_sizes in sizes.items():
        got = [d for _, c, d in link.delivered if c == cid]
        assert [d[5] for d in got] == list(range(len(batch_sizes)))
        assert [d[4] for d in got] == batch_sizes
        assert link.shaper.bytes_by_connection[cid] == sum(batch_sizes)


def test_set_one_way_changes_the_delay_of_later_batches():
    shaper = LinkShaper(1e9, 0.002)
    link = SharedLink(shaper, [0])
    link.drive({0: Sender(window=4, interval_s=0.005, size=lambda seq: 64)}, seconds=1.2,
               events=[(0.6, lambda: shaper.set_one_way(0.008))])
    delay = lambda lo, hi: statistics.median(t - d[6] for t, _, d in link.delivered
                                             if link.t0 + lo < d[6] <= link.t0 + hi)
    assert delay(0.05, 0.55) == pytest.approx(0.002, abs=0.0003)
    assert delay(0.65, 1.2) == pytest.approx(0.008, abs=0.0003)


def test_setters_reject_impossible_values():
    shaper = LinkShaper(RATE, ONE_WAY)
    with pytest.raises(ValueError):
        shaper.set_bandwidth(0)
    with pytest.raises(ValueError):
        shaper.set_one_way(-0.001)
    with pytest.raises(ValueError):
        shaper.set_background(-1)
    shaper.set_background(10e6)  # before the loop runs: the share follows at once
    assert shaper.migration_rate == RATE - 10e6


# --- no figure beats physics (issue "Fidelity" (7)) ---------------------------------

def test_an_idle_link_gives_no_credit():
    from agents.datapath.token_bucket import TokenBucket
    bucket = TokenBucket(125e6, t0=0.0)
    # Idle for a second, then 2.36 MB at once: they leave at line rate, not in a burst.
    assert bucket.departure(2_360_000, 1.0) == pytest.approx(1.0 + 2.36e6 / 125e6)
    # A second batch offered meanwhile queues behind the first.
    assert bucket.departure(125_000, 1.001) == pytest.approx(1.0 + 2.485e6 / 125e6)


@pytest.mark.parametrize("rate", [2e6, 8e6, 20e6, 60e6])  # 1, 4, 10, 30 GbE at memory_scale 1/64
def test_a_stop_and_copy_after_an_idle_moment_takes_at_least_bytes_over_bandwidth_plus_latency(rate):
    # The shape of a stop-and-copy: the link idle while the last pass drained, then the
    # remainder offered at once. Its last byte arrives no earlier than the physical floor.
    one_way = 0.00015
    link = SharedLink(LinkShaper(rate, one_way), [0])
    time.sleep(0.05)  # idle: a bucket with credit would now let 10 ms of bytes through at once
    batches = 24
    nbytes = int(rate * 0.002)  # 48 ms of link time in all
    t0 = time.monotonic()
    for seq in range(batches):
        link.to_link[0].send(KIND_BATCH, 0, 0, 0, nbytes, seq, t0)
    link.close([0])
    last = max(t for t, _, _ in link.delivered)
    floor = batches * nbytes / rate + one_way
    assert last - t0 >= floor * 0.995, (last - t0, floor)
    assert last - t0 <= floor + 0.005  # and not much slower either


def test_an_urgent_batch_goes_ahead_of_the_queue_and_delays_the_rest_by_its_line_time():
    # 24 batches queued: 20 ms of backlog at 40 MB/s. A requested page posted behind them
    # arrives after its own line time and the one-way delay, still marked urgent (its
    # receiver restores it without waiting for the batch streaming in: agents/datapath/receiver.py).
    link = SharedLink(LinkShaper(RATE, ONE_WAY), [0])
    time.sleep(0.05)  # the loop has started: its token bucket's clock begins before t0, not after it
    t0 = time.monotonic()
    for seq in range(24):
        link.to_link[0].send(KIND_BATCH, 0, 0, 0, BATCH, seq, t0)
    page = 4096 * 8
    link.to_link[0].send(KIND_URGENT, 0, 1, 8, page, 99, t0)
    got = []
    while len(got) < 25:
        ready, _, _ = select.select([link.from_link[0].sock], [], [], 5)
        assert ready, "the link delivered nothing for 5 s"
        got.append(link.from_link[0].recv())
    link.close([0])
    order = [d[5] for d in got]
    assert order.index(99) < 12  # ahead of the backlog (at once, unless this thread was slow to post it)
    urgent = got[order.index(99)]
    # Its arrival on the emulated schedule (t_done), however late the threads ran.
    assert urgent[0] == KIND_URGENT and urgent[7] == pytest.approx(t0 + page / RATE + ONE_WAY, abs=1e-6)
    # The batches behind it lost its line time: the last one leaves after all 25.
    assert got[-1][7] == pytest.approx(t0 + (24 * BATCH + page) / RATE + ONE_WAY, abs=1e-6)
