"""Where each page lives after a split migration, and remote paging's decisions (§IV-D, §IV-E).

- `PageSubTable`: a memory server's table on a sub-host. The paper's is a
  one-dimensional array indexed by page frame number whose value points to
  the page's data; here the value is a slot in a pool of page frames
  (-1: not held). A page-out request stores pages (copying their data into
  free slots); a page-in request returns them and frees their slots.
- `RemotePager`: the main host's side. It keeps the network page table (a
  one-dimensional array indexed by page frame number whose value is the
  host the page is on: 0 the main host, 1..k the sub-hosts) and the host
  of each chunk (pages move a chunk at a time, so all of a chunk's pages
  are always on one host). On a fault it plans the page-in: the faulting
  page first, then the rest of its chunk, from the sub-host that holds it;
  then, to stay within its memory, the page-out of the main host's chunk
  with the smallest chunk history (LRU, by aging) or a random one (the
  paper's comparison) to that same sub-host.
- `PagingLine`: the link between the main host and a sub-host as remote
  paging uses it: each direction a queue (full duplex), a request's
  one-way trip, then its pages back to back at the link's rate.

Shapes: page numbers are int64 arrays; page data is uint8 (n, page_size).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.split.splitting import MAIN, page_hosts


class PageSubTable:
    """A memory server's pages: `capacity` page frames of `page_size` bytes for a VM of `npages` pages.

    Errors: KeyError for a page-in of a page not held, ValueError for a
    page-out of a page already held or beyond the capacity.
    """

    def __init__(self, npages: int, capacity: int, page_size: int = 4096) -> None:
        self.slot = np.full(npages, -1, dtype=np.int64)
        self.frames = np.empty((capacity, page_size), dtype=np.uint8)
        self.free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # a stack of free slots
        self.nfree = capacity

    @property
    def held(self) -> int:
        return self.frames.shape[0] - self.nfree

    def holds(self) -> np.ndarray:
        """Bool (npages,): pages this server holds."""
        return self.slot >= 0

    def page_out(self, pages: np.ndarray, data: np.ndarray) -> None:
        """Store `data[i]` as page `pages[i]` (a page-out request, or a page sent by the migration)."""
        if np.any(self.slot[pages] >= 0):
            raise ValueError("page-out of a page the memory server already holds")
        n = pages.shape[0]
        if n > self.nfree:
            raise ValueError(f"page-out of {n} pages with {self.nfree} free frames")
        slots = self.free[self.nfree - n: self.nfree]
        self.nfree -= n
        self.frames[slots] = data
        self.slot[pages] = slots

    def update(self, pages: np.ndarray, data: np.ndarray) -> None:
        """Overwrite pages already held (a page re-sent by the migration); store new ones."""
        held = self.slot[pages] >= 0
        self.frames[self.slot[pages[held]]] = data[held]
        if not held.all():
            self.page_out(pages[~held], data[~held])

    def page_in(self, pages: np.ndarray) -> np.ndarray:
        """Return the data of `pages` (n, page_size) and free them (a page-in request)."""
        slots = self.slot[pages]
        if np.any(slots < 0):
            raise KeyError(f"page-in of {int(np.count_nonzero(slots < 0))} pages the memory server does not hold")
        data = self.frames[slots]
        self.slot[pages] = -1
        self.free[self.nfree: self.nfree + slots.shape[0]] = slots
        self.nfree += slots.shape[0]
        return data


@dataclass(frozen=True)
class PagingPlan:
    """One remote-paging step: page `page_in` in from `host` (faulting page
    first), then page `page_out` (chunk `chunk_out`, or none) out to it."""
    host: int
    chunk_in: int
    page_in: np.ndarray
    chunk_out: int | None
    page_out: np.ndarray


class RemotePager:
    """The main host's network page table and paging decisions.

    `chunk_host`: uint8 (nchunks,) host per chunk after the split;
    `chunk_history`: the live chunk history (uint8 (nchunks,), read at each
    decision); `capacity`: chunks the main host may hold; `policy`: "lru"
    or "random".
    """

    def __init__(self, chunk_host: np.ndarray, chunk_pages: int, npages: int, chunk_history: np.ndarray,
                 capacity: int, policy: str = "lru", seed: int = 0) -> None:
        if policy not in ("lru", "random"):
            raise ValueError(f"paging policy must be 'lru' or 'random', got {policy!r}")
        self.chunk_host = chunk_host.copy()
        self.chunk_pages, self.npages = chunk_pages, npages
        self.table = page_hosts(self.chunk_host, chunk_pages, npages)  # the network page table
        self.history = chunk_history
        self.capacity = capacity
        self.policy = policy
        self.rng = np.random.default_rng(seed)
        self.on_main = int(np.count_nonzero(self.chunk_host == MAIN))

    def chunk_pages_of(self, chunk: int) -> np.ndarray:
        lo = chunk * self.chunk_pages
        return np.arange(lo, min(self.npages, lo + self.chunk_pages), dtype=np.int64)

    def plan(self, page: int) -> PagingPlan | None:
        """What to do for a fault on `page`; None if it is on the main host."""
        host = int(self.table[page])
        if host == MAIN:
            return None
        chunk = page // self.chunk_pages
        pages = self.chunk_pages_of(chunk)
        order = np.concatenate(([page], pages[pages != page]))
        victim = self.victim(exclude=chunk) if self.on_main + 1 > self.capacity else None
        out = self.chunk_pages_of(victim) if victim is not None else np.empty(0, dtype=np.int64)
        return PagingPlan(host, chunk, order, victim, out)

    def victim(self, exclude: int = -1) -> int | None:
        """The main host's chunk to page out: smallest chunk history (LRU) or random; None if none."""
        on_main = self.chunk_host == MAIN
        if 0 <= exclude < on_main.shape[0]:
            on_main[exclude] = False
        if self.policy == "random":
            candidates = np.flatnonzero(on_main)
            return int(self.rng.choice(candidates)) if candidates.size else None
        scores = np.where(on_main, self.history.astype(np.uint16), np.uint16(256))
        best = int(np.argmin(scores))
        return best if on_main[best] else None

    def apply(self, plan: PagingPlan) -> None:
        """Record a completed plan in the chunk and network page tables."""
        self.chunk_host[plan.chunk_in] = MAIN
        self.table[plan.page_in] = MAIN
        self.on_main += 1
        if plan.chunk_out is not None:
            self.chunk_host[plan.chunk_out] = plan.host
            self.table[plan.page_out] = plan.host
            self.on_main -= 1


class PagingLine:
    """Remote paging's use of one link, direction by direction (0: the way it is listed, 1: back).

    Times are in one clock (e.g. real monotonic seconds), sizes in bytes, rates
    in bytes per second of that clock. `bytes`: what each direction carried.
    """

    def __init__(self) -> None:
        self.free_at = [0.0, 0.0]
        self.bytes = [0.0, 0.0]

    def book(self, now: float, rate: float, one_way: float, forward: bool, sizes: list[float],
             back: float = 0.0) -> list[float]:
        """A request crosses (one way), the other end sends `sizes` back to back on direction
        `forward` (0 if True) behind what that direction still carries, then `back` bytes go
        the other way (a page-out). Returns each message's arrival, in seconds from `now`.
        Errors: ValueError for a rate that is not positive."""
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        k = 0 if forward else 1
        t = max(now + one_way, self.free_at[k])
        arrivals = []
        for n in sizes:
            t += n / rate
            arrivals.append(t + one_way - now)
        self.free_at[k] = t
        self.bytes[k] += sum(sizes)
        if back:
            self.free_at[1 - k] = max(t + one_way, self.free_at[1 - k]) + back / rate
            self.bytes[1 - k] += back
        return arrivals
