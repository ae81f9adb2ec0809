"""The PMigrate pipeline without Ray: consumers, connections, pool, cores."""
import socket
import time

import numpy as np
import pytest

from agents.cpu import CorePool, CostModel
from agents.datapath.channel import Channel
from agents.datapath.memory_pool import MemoryPool
from agents.datapath.pipeline import SourcePipeline
from agents.datapath.range_lock import GlobalLock, RangeLock
from agents.datapath.receiver import PageReceiver
from agents.datapath.sender import PageSender
from agents.datapath.wire_format import SlotLayout, SlotView, pack_pages

PAGE = 4096
FREE = CostModel(send_us=0.0, receive_us=0.0, restore_us=0.0, dirty_sync_ns=0.0)


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Channel(a), Channel(b)


class Harness:
    """Source image -> pipeline -> connections (no link) -> receivers -> destination image."""

    def __init__(self, npages=2048, consumers=4, connections=2, batch=8, slots=4, pool_bytes=1 << 20,
                 restore_s_per_page=0.0, lock=None, cores=64, costs=FREE, real_s=lambda us, n: us * 1e-6 * n,
                 task=None):
        rng = np.random.default_rng(1)
        self.src = rng.integers(0, 256, (npages, PAGE), dtype=np.uint8)
        self.src[::7] = 0  # some zero pages
        self.dst = np.zeros_like(self.src)
        layout = SlotLayout(batch)
        self.senders, self.receivers = [], []
        for _ in range(connections):
            ring = np.zeros(slots * layout.slot_bytes, dtype=np.uint8)
            to_link, from_link = _pair()
            acks_rx, acks_tx = _pair()
            self.senders.append(PageSender(ring, slots, layout, to_link, acks_rx))
            self.receivers.append(PageReceiver(ring, slots, layout, from_link, acks_tx, CorePool(cores),
                                               lambda n, full: restore_s_per_page * n, {0: self.dst}))
        self.pool = MemoryPool(pool_bytes)
        self.pipe = SourcePipeline(self.senders, consumers, CorePool(cores), lock or RangeLock(), costs,
                                   real_s, self.pool, task or batch)

    def close(self):
        self.pipe.close()


def test_more_consumers_never_lose_a_page():
    h = Harness(consumers=8, connections=3)
    try:
        h.pipe.send_pages(0, h.src, np.arange(len(h.src)), "precopy")
        sent = len(h.src)
        rng = np.random.default_rng(2)
        for _ in range(5):  # later passes: pages change and are sent again, in any order of consumers
            idx = np.unique(rng.integers(0, len(h.src), 300))
            h.src[idx] = rng.integers(0, 256, (len(idx), PAGE), dtype=np.uint8)
            h.pipe.send_pages(0, h.src, idx, "precopy")
            sent += len(idx)
        h.pipe.drain()
        assert np.array_equal(h.src, h.dst)
        assert sum(r.pages_restored for r in h.receivers) == sent
        assert all(r.pages_restored > 0 for r in h.receivers)  # every connection carried pages
    finally:
        h.close()


def test_a_task_larger_than_a_slot_goes_as_several_batches_of_its_consumer():
    """PMigrate's tasks have an emulated size (cluster/build.py task_pages): at a larger
    memory_scale a task holds more real pages than a slot, and is sent slot by slot."""
    h = Harness(npages=200, consumers=2, connections=2, batch=8, task=20)
    try:
        h.pipe.send_pages(0, h.src, np.arange(200), "precopy")
        h.pipe.drain()
        assert np.array_equal(h.src, h.dst)
        # 10 tasks of 20 pages, each 8 + 8 + 4: 30 batches over the two connections.
        assert sum(s.counters.batches for s in h.senders) == 30
    finally:
        h.close()


def test_the_task_size_is_emulated_and_one_consumer_takes_a_batch():
    from types import SimpleNamespace

    from cluster.build import task_pages
    conns = [SimpleNamespace(batch_pages=64)]
    assert task_pages(SimpleNamespace(consumers=4, task_pages=1024), conns, 1 / 64) == 16
    assert task_pages(SimpleNamespace(consumers=4, task_pages=1024), conns, 1 / 32) == 32
    assert task_pages(SimpleNamespace(consumers=4, task_pages=1024), conns, 1 / 4096) == 1  # at least a page
    assert task_pages(SimpleNamespace(consumers=1, task_pages=1024), conns, 1 / 32) == 64


def test_a_slow_receiver_bounds_the_producers_memory():
    # 4 KiB of restore time per page on the destination, a pool of 8 batches.
    batch = 4
    h = Harness(npages=512, consumers=4, connections=2, batch=batch, slots=2, pool_bytes=8 * batch * PAGE,
                restore_s_per_page=0.0005)
    try:
        t0 = time.monotonic()
        h.pipe.send_pages(0, h.src, np.arange(512), "precopy")
        h.pipe.drain()
        assert time.monotonic() - t0 >= 512 * 0.0005 / 2 * 0.9  # two receivers restore in parallel
        assert h.pool.high_water <= 8 * batch * PAGE
        assert h.pool.blocked_seconds > 0.05  # the producer waited for the consumers
        assert np.array_equal(h.src, h.dst)
    finally:
        h.close()


def test_consumers_share_the_cores_they_are_given():
    costs = CostModel(send_us=1000.0, receive_us=0.0, restore_us=0.0)  # 1 ms per page
    elapsed = {}
    for cores in (1, 4):
        h = Harness(npages=64, consumers=4, connections=4, batch=4, cores=cores, costs=costs)
        try:
            t0 = time.monotonic()
            h.pipe.send_pages(0, h.src, np.arange(64), "precopy")
            h.pipe.drain()
            elapsed[cores] = time.monotonic() - t0
            assert np.array_equal(h.src, h.dst)
        finally:
            h.close()
    # 64 pages x 1 ms (some are zero pages and cost nothing to transfer).
    assert elapsed[1] > 2.5 * elapsed[4]


@pytest.mark.parametrize("lock, expect_parallel", [(GlobalLock, False), (RangeLock, True)])
def test_the_address_space_lock_serialises_mapping_or_not(lock, expect_parallel):
    costs = CostModel(map_us=2000.0, send_us=0.0, receive_us=0.0, restore_us=0.0)  # 2 ms per page mapped
    h = Harness(npages=32, consumers=4, connections=4, batch=4, lock=lock(), costs=costs)
    try:
        t0 = time.monotonic()
        h.pipe.send_pages(0, h.src, np.arange(32), "precopy")
        h.pipe.drain()
        dt = time.monotonic() - t0
        serial = 32 * 0.002
        if expect_parallel:
            assert dt < serial * 0.6
        else:
            assert dt >= serial * 0.95
        assert h.pipe.lock.stats()["acquisitions"] >= 8
    finally:
        h.close()


def test_a_requested_page_is_restored_while_a_streamed_batch_still_arrives():
    # Post-copy: a batch of the push streams in for 200 ms (its last page then); a requested page
    # arriving meanwhile is restored at once (QEMU's preempt channel has its own thread on the
    # destination), not after the push's batch. Its acknowledgement comes first.
    from agents.datapath.channel import KIND_ACK, KIND_BATCH, KIND_CLOSE, KIND_URGENT
    layout = SlotLayout(8)
    ring = np.zeros(2 * layout.slot_bytes, dtype=np.uint8)
    src = np.random.default_rng(3).integers(0, 256, (128, PAGE), dtype=np.uint8)
    dst, marks = np.zeros_like(src), np.zeros(128, dtype=np.uint8)
    to_rx, from_link = _pair()
    acks_rx, acks_tx = _pair()
    rx = PageReceiver(ring, 2, layout, from_link, acks_tx, CorePool(2), lambda n, full: 0.0, {0: dst},
                      received={0: marks})
    views = [SlotView(ring, i, layout) for i in range(2)]
    push = pack_pages(src, np.arange(8), views[0])
    urgent = pack_pages(src, np.array([100, 101]), views[1])
    for view, stats in zip(views, (push, urgent)):
        view.seal(stats.payload_digest)
    t0 = time.monotonic()
    to_rx.send(KIND_BATCH, 0, 0, push.pages, push.wire_bytes, 1, t0, t0 + 0.2, t0)
    time.sleep(0.02)
    to_rx.send(KIND_URGENT, 0, 1, urgent.pages, urgent.wire_bytes, 2, t0, time.monotonic(), 0.0)
    first = acks_rx.recv()
    took = time.monotonic() - t0
    assert first[0] == KIND_ACK and first[2] == 1 and took < 0.15, took  # the urgent slot, long before 200 ms
    assert marks[[100, 101]].all() and np.array_equal(dst[[100, 101]], src[[100, 101]])
    second = acks_rx.recv()
    assert second[2] == 0 and time.monotonic() - t0 >= 0.195  # the push's batch when its last page came
    assert np.array_equal(dst[:8], src[:8])
    to_rx.send(KIND_CLOSE)
    rx.join(5)
