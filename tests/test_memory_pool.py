"""Bounded per-stage memory pool: back-pressure, timeouts, wake-ups, ordering."""

import queue
import threading
import time

import pytest

from agents.datapath.memory_pool import MemoryPool

JOIN_S = 10
MIB = 1 << 20


def _wait_until(cond, limit=JOIN_S):
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, "condition never became true"
        time.sleep(0.001)


@pytest.mark.parametrize("producers", [1, 2])
def test_fast_producer_blocks_behind_slow_consumer(producers):
    pool = MemoryPool(4 * MIB)
    batches = queue.Queue()
    per_producer = 20
    peak_in_use = []
    errors = []

    def produce():
        try:
            for _ in range(per_producer):
                assert pool.acquire(MIB, timeout=JOIN_S)
                peak_in_use.append(pool.in_use)
                batches.put(MIB)
        except BaseException as exc:
            errors.append(exc)

    def consume():
        try:
            for _ in range(producers * per_producer):
                nbytes = batches.get(timeout=JOIN_S)
                time.sleep(0.002)  # a sender slower than the scanner
                pool.release(nbytes)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, daemon=True) for _ in range(producers)]
    threads.append(threading.Thread(target=consume, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert errors == []
    assert pool.high_water == 4 * MIB  # filled, never beyond
    assert max(peak_in_use) <= pool.capacity_bytes
    assert pool.blocked_seconds > 0.01  # the producer really waited
    assert pool.in_use == 0 and pool.waiting == 0


def test_acquire_times_out_when_full():
    pool = MemoryPool(100)
    assert pool.acquire(100)
    began = time.perf_counter()
    assert pool.acquire(1, timeout=0.05) is False
    assert time.perf_counter() - began >= 0.045
    assert pool.acquire(1, timeout=0) is False
    assert pool.in_use == 100 and pool.waiting == 0
    assert pool.blocked_seconds >= 0.045


def test_release_wakes_blocked_acquirer():
    pool = MemoryPool(100)
    pool.acquire(80)
    got = []
    t = threading.Thread(target=lambda: got.append(pool.acquire(50, timeout=JOIN_S)), daemon=True)
    t.start()
    _wait_until(lambda: pool.waiting == 1)
    time.sleep(0.02)
    assert got == []
    pool.release(30)  # 50 bytes in use: exactly room for the waiter
    t.join(JOIN_S)
    assert got == [True]
    assert pool.in_use == 100 and pool.high_water == 100


def test_waiters_are_served_in_order():
    pool = MemoryPool(10)
    pool.acquire(8)
    got = []
    big = threading.Thread(target=lambda: got.append(("big", pool.acquire(5, timeout=JOIN_S))), daemon=True)
    big.start()
    _wait_until(lambda: pool.waiting == 1)
    # Room for 1 byte, but the queued 5-byte batch goes first.
    assert pool.acquire(1, timeout=0) is False
    pool.release(8)
    big.join(JOIN_S)
    assert got == [("big", True)] and pool.in_use == 5


def test_head_waiter_timing_out_lets_the_next_one_in():
    pool = MemoryPool(10)
    pool.acquire(10)
    results = {}
    head = threading.Thread(target=lambda: results.__setitem__("head", pool.acquire(10, timeout=0.1)), daemon=True)
    head.start()
    _wait_until(lambda: pool.waiting == 1)
    nxt = threading.Thread(target=lambda: results.__setitem__("next", pool.acquire(1, timeout=JOIN_S)), daemon=True)
    nxt.start()
    _wait_until(lambda: pool.waiting == 2)
    pool.release(1)  # room for the second waiter only, once the head gives up
    head.join(JOIN_S)
    nxt.join(JOIN_S)
    assert results == {"head": False, "next": True}
    assert pool.in_use == 10


def test_invalid_requests():
    with pytest.raises(ValueError, match="positive"):
        MemoryPool(0)
    pool = MemoryPool(128 * MIB)  # the paper's example size
    with pytest.raises(ValueError, match="exceeds the pool capacity"):
        pool.acquire(128 * MIB + 1)
    with pytest.raises(ValueError, match="negative"):
        pool.acquire(-1)
    pool.acquire(10)
    with pytest.raises(ValueError, match="exceeds the 10 bytes in use"):
        pool.release(11)
    pool.release(10)
    assert pool.in_use == 0 and pool.available == 128 * MIB and pool.high_water == 10
