"""The stop-and-copy's emulated clock starts at the pause (fidelity, issue 13's leftover).

Between the VM's pause and its last pages leaving, the source fetches the dirty log for the
last time and hands the pages to the consumers. On this machine that takes 1-17 ms of real
time under load; at dilation 1 it used to become emulated downtime. Now the last sync is
charged from the pause on (QEMU's migration_bitmap_sync, the cost model's `dirty_sync_ns`),
the pages are ready when that charge ends, and the state follows the last restore on the
emulated schedule: a late wake-up is made up by the charges after it, as between batches.

Real sender, link shaper, receiver and cores over socket pairs; no Ray.
"""
# ruff: noqa: F811  (the `guests` fixture is test_precopy's, imported)
from __future__ import annotations

import socket
import threading
import time

import numpy as np

from agents.actors.host import _GuestControl
from agents.cpu import CorePool, CostModel
from agents.datapath.channel import Channel
from agents.datapath.link import LinkShaper
from agents.datapath.memory_pool import MemoryPool
from agents.datapath.pipeline import SourcePipeline
from agents.datapath.range_lock import RangeLock
from agents.datapath.receiver import PageReceiver
from agents.datapath.sender import PageSender
from agents.datapath.wire_format import SlotLayout
from agents.guest.dirty_log import DirtyLog
from agents.techniques.base import MigrationContext
from agents.techniques.precopy import PrecopyMigration, StopPolicy
from tests.test_precopy import NPAGES, guests, uniform  # noqa: F401  (the fixture)

PAGE = 4096
RATE = 100e6  # bytes/s
ONE_WAY = 0.001
LATE = 0.040  # real seconds this machine took between the pause and the hand-over


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(a), Channel(b)


def _wire(npages: int, src: np.ndarray | None = None, pipeline=SourcePipeline):
    if src is None:
        src = np.random.default_rng(5).integers(0, 256, (npages, PAGE), dtype=np.uint8)
    dst = np.zeros_like(src)
    layout = SlotLayout(16)
    ring = np.zeros(8 * layout.slot_bytes, dtype=np.uint8)
    to_link, link_in = _pair()
    link_out, from_link = _pair()
    acks_rx, acks_tx = _pair()
    link = LinkShaper(RATE, ONE_WAY)
    link.run([(0, link_in, link_out)])
    sender = PageSender(ring, 8, layout, to_link, acks_rx)
    PageReceiver(ring, 8, layout, from_link, acks_tx, CorePool(2), lambda n, full: 0.0, {0: dst})
    costs = CostModel(send_us=0.0, receive_us=0.0, restore_us=0.0)
    pipe = pipeline([sender], 1, CorePool(2), RangeLock(), costs, lambda us, n: us * 1e-6 * n,
                          MemoryPool(1 << 20), 16)
    return src, dst, pipe


def test_a_late_hand_over_is_made_up_and_the_downtime_is_wire_time_plus_latency():
    src, dst, pipe = _wire(256)
    try:
        pipe.send_pages(0, src, np.arange(256), "precopy")  # the last pass, drained
        pipe.drain()
        last = np.arange(0, 256, 4)  # 64 pages left for the stop-and-copy
        src[last] ^= 1
        paused = time.monotonic()
        time.sleep(LATE)  # the harvest and the hand-over, late on a loaded machine
        wire = pipe.send_pages(0, src, last, "downtime", at=paused)
        pipe.send_state(0, 16 * PAGE, at=paused)
        loaded = pipe.drain()
        assert np.array_equal(src, dst)
        floor = (wire + 16 * PAGE) / RATE + ONE_WAY  # the pages and the state back to back, then the latency
        downtime = loaded - paused
        assert downtime >= floor * 0.98
        # Without the schedule from the pause: at least LATE more (40 ms against a floor of 3.8 ms).
        assert downtime < floor + LATE / 2, (downtime, floor)
    finally:
        pipe.close()


def test_the_state_alone_follows_the_pause_not_an_older_restore():
    """Nothing left to send: the state leaves at the pause, not at the last pass's restore
    (which was long before it), so the downtime is never below its own wire time."""
    src, dst, pipe = _wire(64)
    try:
        pipe.send_pages(0, src, np.arange(64), "precopy")
        pipe.drain()
        time.sleep(0.05)
        paused = time.monotonic()
        pipe.send_state(0, 16 * PAGE, at=paused)
        loaded = pipe.drain()
        assert loaded - paused >= (16 * PAGE / RATE + ONE_WAY) * 0.98
    finally:
        pipe.close()


def test_the_last_sync_is_charged_from_the_pause():
    npages = 4096
    buf = np.zeros(DirtyLog.nbytes(npages), dtype=np.uint8)
    log = DirtyLog(buf, npages)
    log.start()
    log.mark(np.array([3, 9]), 1)
    log.publish(1)
    cores = CorePool(1)
    charge = 0.002  # real seconds a fetch is charged (dirty_sync_ns x pages, scaled)
    control = _GuestControl(log, None, cores, charge, (0, "sync"))
    paused = time.monotonic() - LATE  # the VM stopped LATE ago; this thread harvests only now
    assert list(control.harvest(at=paused)) == [3, 9]
    assert abs(control.synced_at - (paused + charge)) < 1e-9  # the pages are ready then
    assert cores.usage()["charged_s"] == charge
    # A fetch with no schedule to keep (during pre-copy) starts when it is made, as before.
    t0 = time.monotonic()
    control.harvest()
    assert control.synced_at >= t0 + charge


class _LateMachine(SourcePipeline):
    """A loaded machine: each pass's call comes back LATE after its batches' emulated stamps."""

    def send_pages(self, *args, **kw) -> int:
        wire = super().send_pages(*args, **kw)
        time.sleep(LATE_PASS)
        return wire


LATE_PASS = 0.2  # real seconds
SYNC = 0.002  # real seconds a dirty-log fetch is charged


def test_after_a_forced_pause_the_last_syncs_follow_the_pass_not_this_machine(guests):
    """A policy's force (Nova's force_complete without post-copy) pauses the VM in the middle
    of a pass; the pass goes on sending, then the syncs and the stop-and-copy. Every moment
    after the pause is downtime, so the syncs start where the pass's sending ended on its
    batches' stamps, as the normal stop-and-copy's starts at the pause: this machine's
    lateness in getting to them (LATE_PASS after each pass here) is not downtime."""
    g = guests(uniform(rate=5000, ws=NPAGES))
    src, dst, pipe = _wire(NPAGES, g.pages, _LateMachine)
    control = _GuestControl(g.log, None, CorePool(2), SYNC, (0, "sync"))
    ctx = MigrationContext(0, g.pages, control, pipe, memory_scale=1.0, dilation=1.0)
    m = PrecopyMigration(ctx, StopPolicy(0.001, 100, 100, 1e12), state_bytes=2048, setup_s=0.0)
    g.start()
    try:
        time.sleep(0.02)
        force = threading.Timer(0.01, m._force, ("test",))  # 10 ms into the 42 ms first pass
        force.start()
        r = m.run()
        force.join()
        assert (r.status, r.stop_reason, r.iteration_count) == ("completed", "policy-force", 1)
        assert np.array_equal(src, dst)
        # The stamps: the rest of the pass (under 4 MiB at 100 MB/s), two syncs, the last pages
        # and the state, the latency; without the schedule: LATE_PASS at least.
        bound = NPAGES * PAGE / RATE + 2 * SYNC + (r.downtime_bytes + 2048) / RATE + 3 * ONE_WAY
        assert r.downtime_s < bound + LATE_PASS / 4, (r.downtime_s, bound)
    finally:
        pipe.close()


def test_drift_counts_passes_that_ended_late_and_not_the_stop_and_copys_hand_over():
    """`drift_s` (in the run's saturation) is what passes ended after their batches' stamps;
    the stop-and-copy's hand-over, late by LATE here and made up by its stamps, is
    `handover_late_s`, not drift."""
    src, dst, pipe = _wire(256)
    try:
        pipe.send_pages(0, src, np.arange(128), "precopy")  # on time
        pipe.drain()
        assert pipe.drift_s < LATE / 4
        # A pass whose end this machine got to LATE after its last restore (an image-oriented
        # pass ends when its pages are in).
        pipe.send_pages(0, src, np.arange(128, 256), "precopy")
        time.sleep(LATE)
        pipe.drain()
        pass_late = pipe.drift_s
        assert pass_late > LATE * 0.5
        paused = time.monotonic()
        time.sleep(LATE)  # the harvest and the hand-over, late on a loaded machine
        pipe.send_pages(0, src, np.arange(0, 256, 4), "downtime", at=paused)
        pipe.send_state(0, 16 * PAGE, at=paused)
        pipe.drain()
        assert np.array_equal(src, dst)
        assert pipe.drift_s == pass_late  # the stop-and-copy added nothing to it
        assert pipe.handover_late_s > LATE * 0.5
        # A pass after it (post-copy's push) counts again.
        pipe.send_pages(0, src, np.arange(64), "postcopy")
        time.sleep(LATE)
        pipe.drain()
        assert pipe.drift_s > pass_late + LATE * 0.5
    finally:
        pipe.close()


def test_a_pass_paced_by_a_cap_is_not_drift():
    """Under a cap (max-bandwidth; a split migration's shared NIC) the batches leave when the cap
    lets them, in real time: a pass that ended on that schedule is on time. Counted from the
    consumers' charged work, this pass's pacing read as drift (107 ms of its 210 ms)."""
    src, dst, pipe = _wire(256)
    try:
        pipe.set_rate_limit(5e6)  # real bytes/s: this pass's 1 MiB in 210 ms
        pipe.send_pages(0, src, np.arange(256), "precopy")
        pipe.drain()
        assert np.array_equal(src, dst)
        assert pipe.drift_s < 0.03, pipe.drift_s  # what is left: this machine's own lateness
    finally:
        pipe.close()
