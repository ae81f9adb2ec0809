"""Address-space locks under real threads: exclusion, parallelism, no deadlock."""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.datapath.range_lock import (
    LOCK_KINDS,
    GlobalLock,
    RangeLock,
    ReadWriteLock,
    critical_section_costs,
)

JOIN_S = 10  # generous bound: a thread still alive after this is a deadlock


def _overlap(a, b):
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


# Which pairs of holders a scheme must never let in together.
CONFLICTS = {
    "global": lambda a, b: True,
    "read_write": lambda a, b: a[2] != "map" or b[2] != "map",
    "range": lambda a, b: _overlap(a, b),
}


class Checker:
    """Shared record of who is inside; flags any forbidden pair of holders."""

    def __init__(self, kind):
        self.conflict = CONFLICTS[kind]
        self.mutex = threading.Lock()
        self.inside = []
        self.violations = []

    def enter(self, req):
        with self.mutex:
            for other in self.inside:
                if self.conflict(req, other):
                    self.violations.append((req, other))
            self.inside.append(req)

    def exit(self, req):
        with self.mutex:
            self.inside.remove(req)


def _run_threads(targets):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # surfaced in the main thread below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "deadlock: a worker never finished"
    if errors:
        raise errors[0]


request = st.tuples(st.integers(0, 60), st.integers(1, 16), st.sampled_from(["map", "mmap", "munmap"]))
workloads = st.lists(st.lists(request, min_size=1, max_size=6), min_size=2, max_size=4)


@pytest.mark.parametrize("kind", sorted(LOCK_KINDS))
@settings(max_examples=25, deadline=None)
@given(workloads=workloads)
def test_no_conflicting_holders_under_real_threads(kind, workloads):
    lock = LOCK_KINDS[kind]()
    checker = Checker(kind)

    def worker(reqs):
        def run():
            for req in reqs:
                with lock.hold(*req, timeout=JOIN_S):
                    checker.enter(req)
                    time.sleep(0.0002)  # stay inside long enough for others to try
                    checker.exit(req)
        return run

    _run_threads([worker(reqs) for reqs in workloads])
    assert checker.violations == []
    assert lock.acquisitions == sum(len(r) for r in workloads)
    assert lock.timeouts == 0
    if isinstance(lock, RangeLock):
        assert lock.held() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), request), max_size=40))
def test_range_lock_grants_exactly_the_non_overlapping_requests(ops):
    # Single-threaded model check of the sorted-list search against brute force.
    lock = RangeLock()
    model = []
    for is_acquire, req in ops:
        if is_acquire or not model:
            expect = not any(_overlap(req, held) for held in model)
            assert lock.acquire(*req, timeout=0) is expect
            assert lock.is_locked(req[0], req[1])
            if expect:
                model.append(req)
        else:
            held = model.pop(req[0] % len(model))
            lock.release(*held)
        assert lock.held() == sorted(model)


@pytest.mark.parametrize("modes", [("map", "map"), ("mmap", "munmap"), ("munmap", "map")])
def test_range_lock_disjoint_ranges_are_held_concurrently(modes):
    lock = RangeLock()
    both_inside = threading.Barrier(2, timeout=JOIN_S)

    def worker(start, mode):
        def run():
            with lock.hold(start, 4096, mode, timeout=JOIN_S):
                both_inside.wait()  # breaks (raises) unless both hold at once
        return run

    _run_threads([worker(0, modes[0]), worker(4096, modes[1])])
    assert lock.contended_acquisitions == 0


def test_range_lock_overlap_waits_and_release_wakes_it():
    lock = RangeLock()
    lock.acquire(0, 8192, "munmap")
    got = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(4096, 4096, "map", timeout=JOIN_S)))
    t.start()
    time.sleep(0.05)
    assert got == []  # still waiting on the overlap
    assert not lock.acquire(8191, 1, "mmap", timeout=0)  # last byte is held
    assert lock.acquire(8192, 1, "mmap", timeout=0)  # end is exclusive
    lock.release(0, 8192, "munmap")
    t.join(JOIN_S)
    assert got == [True]
    assert lock.contended_acquisitions == 1
    assert lock.wait_seconds >= 0.04
    assert lock.held() == [(4096, 4096, "map"), (8192, 1, "mmap")]


def test_global_lock_serializes_even_disjoint_ranges():
    lock = GlobalLock()
    with lock.hold(0, 4096, "map"):
        assert not lock.acquire(1 << 30, 4096, "map", timeout=0.05)
    assert lock.acquire(1 << 30, 4096, "map", timeout=0)
    assert lock.timeouts == 1 and lock.wait_seconds >= 0.04


def test_global_lock_never_has_two_threads_inside():
    lock = GlobalLock()
    inside = []
    peak = []

    def worker(start):
        def run():
            for _ in range(30):
                with lock.hold(start, 4096, "map", timeout=JOIN_S):
                    inside.append(1)
                    peak.append(len(inside))
                    time.sleep(0.0002)
                    inside.pop()
        return run

    _run_threads([worker(k * 4096) for k in range(3)])
    assert max(peak) == 1
    assert lock.acquisitions == 90 and lock.contended_acquisitions > 0


def test_rwlock_readers_share_writers_exclude():
    lock = ReadWriteLock()
    both_inside = threading.Barrier(2, timeout=JOIN_S)

    def reader(start):
        def run():
            with lock.hold(start, 4096, "map", timeout=JOIN_S):
                both_inside.wait()
        return run

    # Guest maps of the same range too: read mode does not care about ranges.
    _run_threads([reader(0), reader(0)])

    with lock.hold(0, 4096, "map"):
        assert not lock.acquire(1 << 20, 4096, "mmap", timeout=0.02)
    with lock.hold(0, 4096, "munmap"):
        assert not lock.acquire(1 << 20, 4096, "map", timeout=0.02)
        assert not lock.acquire(1 << 21, 4096, "mmap", timeout=0.02)
    assert lock.timeouts == 3


def test_rwlock_waiting_writer_blocks_new_readers():
    lock = ReadWriteLock()
    lock.acquire(0, 4096, "map")
    got = []
    writer = threading.Thread(target=lambda: got.append(lock.acquire(0, 4096, "munmap", timeout=JOIN_S)))
    writer.start()
    time.sleep(0.05)
    # A new guest map must not overtake the waiting munmap.
    assert not lock.acquire(8192, 4096, "map", timeout=0.02)
    lock.release(0, 4096, "map")
    writer.join(JOIN_S)
    assert got == [True]
    lock.release(0, 4096, "munmap")
    assert lock.acquire(8192, 4096, "map", timeout=0)


def test_rwlock_writer_giving_up_lets_blocked_readers_in():
    lock = ReadWriteLock()
    lock.acquire(0, 4096, "map")
    got = {}
    writer = threading.Thread(target=lambda: got.__setitem__("w", lock.acquire(0, 4096, "mmap", timeout=0.1)))
    writer.start()
    time.sleep(0.03)
    reader = threading.Thread(target=lambda: got.__setitem__("r", lock.acquire(8192, 4096, "map", timeout=JOIN_S)))
    reader.start()
    writer.join(JOIN_S)
    reader.join(2)  # the first reader still holds: only the writer's exit can wake it
    assert got == {"w": False, "r": True}


@pytest.mark.parametrize("kind", sorted(LOCK_KINDS))
def test_release_of_unheld_range_is_an_error(kind):
    lock = LOCK_KINDS[kind]()
    with pytest.raises(ValueError, match="not held"):
        lock.release(0, 4096, "map")
    lock.acquire(0, 4096, "mmap")
    with pytest.raises(ValueError, match="not held"):
        lock.release(0, 4096, "munmap")  # wrong mode
    with pytest.raises(ValueError, match="not held"):
        lock.release(0, 8192, "mmap")  # wrong length
    lock.release(0, 4096, "mmap")


@pytest.mark.parametrize("kind", sorted(LOCK_KINDS))
def test_bad_requests_rejected(kind):
    lock = LOCK_KINDS[kind]()
    with pytest.raises(ValueError, match="mode"):
        lock.acquire(0, 4096, "mremap")
    with pytest.raises(ValueError, match="length"):
        lock.acquire(0, 0, "map")
    with pytest.raises(ValueError, match="start"):
        lock.acquire(-1, 10, "map")


def test_hold_times_out_with_timeout_error():
    lock = RangeLock()
    with lock.hold(0, 10, "mmap"):
        with pytest.raises(TimeoutError, match="not granted"):
            with lock.hold(5, 10, "map", timeout=0.01):
                pass
    assert lock.stats()["timeouts"] == 1


def test_critical_section_costs_from_table_9():
    idle, memcached = critical_section_costs["idle"], critical_section_costs["memcached"]
    assert idle["global"] == {"mmap": 1.39, "map": 18.1, "munmap": 7.27}
    assert idle["range"]["mmap"] == 0.05 and memcached["read_write"]["munmap"] == 5.30
    for workload in (idle, memcached):
        assert set(workload) == set(LOCK_KINDS)
        # The range lock shortens every operation relative to no optimization.
        for op in ("mmap", "map", "munmap"):
            assert workload["range"][op] < workload["global"][op]
