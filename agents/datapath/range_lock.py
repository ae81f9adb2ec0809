"""Address-space locks that parallel migration workers take to map guest memory.

PMigrate (§4) found that concurrent map consumers serialize on the kernel's
per-process address-space lock (mmap_sem). This module provides the three
schemes the paper compares, behind one interface, so a pipeline stage can run
under each and show what it buys: `GlobalLock` (no optimization: every
operation exclusive), `ReadWriteLock` (§4.1: guest mapping in read mode,
mmap/munmap in write mode) and `RangeLock` (§4.2: only overlapping address
ranges exclude each other).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "MODES",
    "AddressSpaceLock",
    "GlobalLock",
    "ReadWriteLock",
    "RangeLock",
    "LOCK_KINDS",
    "critical_section_costs",
]

# "map": map guest pages into the tool's address space (the privcmd ioctl);
# "mmap"/"munmap": create/destroy the virtual memory area around them.
MODES = ("map", "mmap", "munmap")

# Average cost of one memory-management operation during a Xen migration, in
# microseconds: PMigrate Table 9, for an idle VM and a memcached VM, under each
# locking scheme (no-opt -> "global", rd-lock -> "read_write", range -> "range";
# "guest map" -> "map"). The paper measures the whole operation; a model that
# runs under `GlobalLock` holds the lock for all of it, so these figures serve
# as the critical-section length of each operation under that scheme.
critical_section_costs: dict[str, dict[str, dict[str, float]]] = {
    "idle": {
        "global": {"mmap": 1.39, "map": 18.1, "munmap": 7.27},
        "read_write": {"mmap": 1.80, "map": 16.3, "munmap": 6.22},
        "range": {"mmap": 0.05, "map": 14.8, "munmap": 0.75},
    },
    "memcached": {
        "global": {"mmap": 1.10, "map": 16.8, "munmap": 5.57},
        "read_write": {"mmap": 1.26, "map": 15.5, "munmap": 5.30},
        "range": {"mmap": 0.18, "map": 15.2, "munmap": 0.85},
    },
}


class AddressSpaceLock:
    """Common interface and counters; subclasses decide who may enter.

    Every subclass keeps its state under one short internal lock (the
    condition's mutex, which plays the role of the paper's spinlock) and waits on
    the condition while its request cannot be granted. Release may happen on a
    different thread than acquire, as when a consumer unmaps what another
    thread mapped.
    """

    kind = "abstract"

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._acquisitions = 0
        self._contended = 0
        self._timeouts = 0
        self._wait_seconds = 0.0

    # -- public interface -------------------------------------------------

    def acquire(self, start: int, length: int, mode: str, timeout: float | None = None) -> bool:
        """Take the lock for [start, start+length) in `mode`.

        Blocks while a conflicting holder is inside. Returns True once granted,
        False if `timeout` seconds passed first (None waits forever; 0 tries once).
        """
        end = _check(start, length, mode)
        with self._cond:
            if self._try_grant(start, end, mode):
                self._acquisitions += 1
                return True
            # Contended: measure the wait, so a run can report the time the
            # workers lost to address-space serialization.
            began = time.perf_counter()
            deadline = None if timeout is None else began + timeout
            self._begin_wait(mode)
            try:
                while True:
                    if deadline is None:
                        self._cond.wait()
                    else:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            self._timeouts += 1
                            return False
                        self._cond.wait(remaining)
                    if self._try_grant(start, end, mode):
                        self._acquisitions += 1
                        self._contended += 1
                        return True
            finally:
                self._end_wait(mode)
                self._wait_seconds += time.perf_counter() - began

    def release(self, start: int, length: int, mode: str) -> None:
        """Give back what `acquire(start, length, mode)` granted; wakes waiters.

        Raises ValueError if that range is not held in that mode.
        """
        end = _check(start, length, mode)
        with self._cond:
            self._ungrant(start, end, mode)
            # Several waiters may now fit (e.g. all readers, or disjoint ranges).
            self._cond.notify_all()

    @contextmanager
    def hold(self, start: int, length: int, mode: str, timeout: float | None = None) -> Iterator[None]:
        """Context manager around acquire/release; raises TimeoutError on timeout."""
        if not self.acquire(start, length, mode, timeout):
            raise TimeoutError(
                f"{self.kind} lock: [{start:#x}, {start + length:#x}) in mode "
                f"{mode!r} not granted within {timeout} s"
            )
        try:
            yield
        finally:
            self.release(start, length, mode)

    @property
    def acquisitions(self) -> int:
        """Number of granted acquisitions."""
        return self._acquisitions

    @property
    def contended_acquisitions(self) -> int:
        """Granted acquisitions that had to wait first."""
        return self._contended

    @property
    def timeouts(self) -> int:
        """Acquisitions abandoned because their timeout expired."""
        return self._timeouts

    @property
    def wait_seconds(self) -> float:
        """Total real seconds callers spent waiting (granted or timed out)."""
        return self._wait_seconds

    def stats(self) -> dict[str, float]:
        """A consistent snapshot of the counters."""
        with self._cond:
            return {
                "acquisitions": self._acquisitions,
                "contended_acquisitions": self._contended,
                "timeouts": self._timeouts,
                "wait_seconds": self._wait_seconds,
            }

    # -- subclass hooks, all called with self._cond held -------------------

    def _try_grant(self, start: int, end: int, mode: str) -> bool:
        raise NotImplementedError

    def _ungrant(self, start: int, end: int, mode: str) -> None:
        raise NotImplementedError

    def _begin_wait(self, mode: str) -> None:
        pass

    def _end_wait(self, mode: str) -> None:
        pass


class GlobalLock(AddressSpaceLock):
    """One mutex for the whole address space: every operation is exclusive.

    This is mmap_sem taken in write mode by mmap, guest map and munmap alike,
    PMigrate's unoptimized baseline.
    """

    kind = "global"

    def __init__(self) -> None:
        super().__init__()
        self._holder: tuple[int, int, str] | None = None

    def _try_grant(self, start: int, end: int, mode: str) -> bool:
        if self._holder is not None:
            return False
        self._holder = (start, end, mode)
        return True

    def _ungrant(self, start: int, end: int, mode: str) -> None:
        if self._holder != (start, end, mode):
            raise ValueError(_not_held(self.kind, start, end, mode))
        self._holder = None


class ReadWriteLock(AddressSpaceLock):
    """mmap_sem as a reader-writer lock (PMigrate §4.1).

    Guest mapping ("map") only reads the VMA tree, so it takes read mode and
    many maps proceed together; mmap and munmap change the tree and take write
    mode. Waiting writers block new readers, so a stream of guest maps cannot
    starve an munmap.
    """

    kind = "read_write"

    def __init__(self) -> None:
        super().__init__()
        self._readers: Counter[tuple[int, int]] = Counter()
        self._writer: tuple[int, int, str] | None = None
        self._writers_waiting = 0

    def _try_grant(self, start: int, end: int, mode: str) -> bool:
        if mode == "map":
            if self._writer is not None or self._writers_waiting:
                return False
            self._readers[(start, end)] += 1
            return True
        if self._writer is not None or self._readers:
            return False
        self._writer = (start, end, mode)
        return True

    def _ungrant(self, start: int, end: int, mode: str) -> None:
        if mode == "map":
            key = (start, end)
            if not self._readers.get(key):
                raise ValueError(_not_held(self.kind, start, end, mode))
            self._readers[key] -= 1
            if not self._readers[key]:
                del self._readers[key]  # keeps `if self._readers` meaning "readers inside"
            return
        if self._writer != (start, end, mode):
            raise ValueError(_not_held(self.kind, start, end, mode))
        self._writer = None

    def _begin_wait(self, mode: str) -> None:
        if mode != "map":
            self._writers_waiting += 1

    def _end_wait(self, mode: str) -> None:
        if mode != "map":
            self._writers_waiting -= 1
            # A writer that timed out may have been all that held readers back.
            if not self._writers_waiting:
                self._cond.notify_all()


class RangeLock(AddressSpaceLock):
    """Dynamic, non-overlapping locked ranges (PMigrate §4.2).

    Held ranges [start, end) live in two parallel sorted lists (starts, ends);
    because held ranges never overlap, both lists are sorted, and one bisect
    finds the only held range that could overlap a request. The paper uses a
    skip list for the same reason: search is the hot path. A request that
    overlaps a held range waits; disjoint requests are granted at once, in any
    mode, which is what lets mmap, munmap and guest maps of different areas run
    in parallel.
    """

    kind = "range"

    def __init__(self) -> None:
        super().__init__()
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._modes: list[str] = []

    def _try_grant(self, start: int, end: int, mode: str) -> bool:
        # Held ranges starting before `end` are at indices < i; of those only
        # the last can reach past `start`, since their ends are sorted too.
        i = bisect_left(self._starts, end)
        if i > 0 and self._ends[i - 1] > start:
            return False
        self._starts.insert(i, start)
        self._ends.insert(i, end)
        self._modes.insert(i, mode)
        return True

    def _ungrant(self, start: int, end: int, mode: str) -> None:
        i = bisect_left(self._starts, start)
        if (
            i == len(self._starts)
            or self._starts[i] != start
            or self._ends[i] != end
            or self._modes[i] != mode
        ):
            raise ValueError(_not_held(self.kind, start, end, mode))
        del self._starts[i], self._ends[i], self._modes[i]

    def held(self) -> list[tuple[int, int, str]]:
        """Ranges held now, as (start, length, mode), lowest address first."""
        with self._cond:
            return [(s, e - s, m) for s, e, m in zip(self._starts, self._ends, self._modes)]

    def is_locked(self, start: int, length: int) -> bool:
        """Whether any held range overlaps [start, start+length)."""
        end = start + length
        with self._cond:
            i = bisect_left(self._starts, end)
            return i > 0 and self._ends[i - 1] > start


# Scenario files name a scheme; the runner builds it from here.
LOCK_KINDS: dict[str, type[AddressSpaceLock]] = {
    cls.kind: cls for cls in (GlobalLock, ReadWriteLock, RangeLock)
}


def _check(start: int, length: int, mode: str) -> int:
    """Validate a request and return its exclusive end address."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if start < 0 or length <= 0:
        raise ValueError(f"range needs start >= 0 and length > 0; got start={start}, length={length}")
    return start + length


def _not_held(kind: str, start: int, end: int, mode: str) -> str:
    return f"{kind} lock: release of [{start:#x}, {end:#x}) in mode {mode!r}, which is not held"
