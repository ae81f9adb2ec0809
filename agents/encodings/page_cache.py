"""The XBZRLE page cache of the migration source.

XBZRLE can only send a delta for a page whose previously sent content the
source still holds.  This cache holds those copies (QEMU's ``page_cache.c``;
the "L2 caching scheme" of Svärd et al., chosen for a constant seek time
regardless of size): a fixed number of slots laid out as a set-associative
array, so looking a page up is one index computation and a compare of
``ways`` tags, whatever the cache size.  ``ways=1`` is QEMU's direct-mapped
layout.

State lives in numpy arrays, one row per slot:

* ``tags``  - page number held by the slot (-1 when empty);
* ``data``  - the cached page contents, ``(slots, page_size)`` uint8;
* ``age``   - generation (dirty-bitmap sync / iteration) the slot was last
  inserted or hit;
* ``uses``  - how many times the page has been re-sent through the slot.

Replacement follows QEMU's age rule: a page is not evicted by a different page
while it is "fresh" (touched within the last ``lifetime`` generations, QEMU's
``CACHED_PAGE_LIFETIME`` = 2), so pages that keep being re-sent stay cached;
the insert is refused instead.  Within a set the victim is the empty way, else
the way touched longest ago, then the one re-sent least.  Call
:meth:`new_generation` once per iteration.

Every operation takes a batch of page numbers and is vectorised.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PageCache", "CACHED_PAGE_LIFETIME"]

CACHED_PAGE_LIFETIME = 2  # generations a page is protected from eviction (QEMU's value)


class PageCache:
    """Set-associative cache of sent pages, keyed by page number."""

    def __init__(
        self,
        size_pages: int,
        page_size: int = 4096,
        ways: int = 4,
        lifetime: int = CACHED_PAGE_LIFETIME,
    ):
        if page_size <= 0:
            raise ValueError("page_size must be > 0")
        if ways < 1:
            raise ValueError("ways must be >= 1")
        if size_pages < 1:
            raise ValueError("the cache must hold at least one page")
        ways = min(ways, size_pages)
        self.page_size = int(page_size)
        self.ways = int(ways)
        self.num_sets = int(size_pages) // self.ways  # rounded down to whole sets
        self.lifetime = int(lifetime)
        n = self.num_sets * self.ways
        self.tags = np.full(n, -1, dtype=np.int64)
        self.data = np.zeros((n, self.page_size), dtype=np.uint8)
        self.age = np.zeros(n, dtype=np.int64)
        self.uses = np.zeros(n, dtype=np.int64)
        self.generation = 0
        # counters
        self.hits = 0
        self.misses = 0
        self.inserts = 0
        self.evictions = 0
        self.refused = 0

    @classmethod
    def from_bytes(cls, cache_size_bytes: int, page_size: int = 4096, **kw) -> "PageCache":
        """A cache of ``cache_size_bytes`` (QEMU's ``xbzrle-cache-size``), rounded down to pages."""
        return cls(int(cache_size_bytes) // page_size, page_size=page_size, **kw)

    # -- sizes and counters ------------------------------------------------

    @property
    def num_slots(self) -> int:
        return len(self.tags)

    @property
    def size_bytes(self) -> int:
        """Cache size in bytes (QEMU's ``cache-size``)."""
        return self.num_slots * self.page_size

    @property
    def num_items(self) -> int:
        """Occupied slots."""
        return int((self.tags >= 0).sum())

    @property
    def miss_rate(self) -> float:
        """Misses per lookup so far (0.0 before any lookup)."""
        total = self.hits + self.misses
        return self.misses / total if total else 0.0

    def stats(self) -> dict:
        return {
            "cache_size": self.size_bytes,
            "pages": self.num_slots,
            "ways": self.ways,
            "items": self.num_items,
            "generation": self.generation,
            "hits": self.hits,
            "misses": self.misses,
            "miss_rate": self.miss_rate,
            "inserts": self.inserts,
            "evictions": self.evictions,
            "refused": self.refused,
        }

    def new_generation(self) -> int:
        """Start a new generation (call at each dirty-bitmap sync / iteration)."""
        self.generation += 1
        return self.generation

    # -- lookups ----------------------------------------------------------

    def _candidates(self, page_numbers: np.ndarray) -> np.ndarray:
        sets = page_numbers % self.num_sets
        return sets[:, None] * self.ways + np.arange(self.ways, dtype=np.int64)

    def find(self, page_numbers) -> np.ndarray:
        """Slot of each page, -1 when not cached; no counters, no ageing."""
        pn = _pages(page_numbers)
        cand = self._candidates(pn)
        match = self.tags[cand] == pn[:, None]
        way = match.argmax(axis=1)
        slots = cand[np.arange(len(pn)), way]
        return np.where(match.any(axis=1), slots, -1)

    def lookup(self, page_numbers, *, count: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(hit_mask, slot_indices)`` for a batch of page numbers.

        Slots are -1 for misses.  A hit refreshes the slot's age and counts a
        re-send; with ``count`` the hits and misses are added to the counters.
        """
        slots = self.find(page_numbers)
        hit = slots >= 0
        hs = slots[hit]
        self.age[hs] = self.generation
        np.add.at(self.uses, hs, 1)
        if count:
            nh = int(hit.sum())
            self.hits += nh
            self.misses += len(slots) - nh
        return hit, slots

    def contains(self, page_numbers) -> np.ndarray:
        return self.find(page_numbers) >= 0

    def get(self, slots) -> np.ndarray:
        """Copies of the cached pages in ``slots``, shape ``(len(slots), page_size)``."""
        slots = np.asarray(slots, dtype=np.int64)
        if (slots < 0).any():
            raise IndexError("slot -1: page not cached")
        return self.data[slots]

    def update(self, slots, pages) -> None:
        """Overwrite the contents of cached slots (the page was re-sent)."""
        slots = np.asarray(slots, dtype=np.int64)
        self.data[slots] = pages

    # -- inserts ------------------------------------------------------------

    def insert(self, page_numbers, pages, rows=None) -> np.ndarray:
        """Cache ``pages[k]`` (or ``pages[rows[k]]``) as page ``page_numbers[k]``.

        A page already cached is overwritten in place.  Otherwise it takes an
        empty way of its set, else evicts the stalest way, unless that way is
        still fresh (touched within ``lifetime`` generations): then the insert
        is refused and the resident page kept.  Pages of one batch are inserted
        as if one after the other.  Returns the slot of each page, -1 where the
        insert was refused.
        """
        pn = _pages(page_numbers)
        pages = np.asarray(pages)
        src = np.arange(len(pn), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(src) != len(pn):
            raise ValueError("page_numbers and rows differ in length")
        if pages.ndim != 2 or pages.shape[1] != self.page_size:
            raise ValueError(f"pages must have shape (n, {self.page_size})")
        out = np.full(len(pn), -1, dtype=np.int64)
        todo = np.arange(len(pn), dtype=np.int64)
        while len(todo):
            # one round: the first pending page of each set (sets are independent)
            sets = pn[todo] % self.num_sets
            _, first = np.unique(sets, return_index=True)
            take = np.zeros(len(todo), dtype=bool)
            take[first] = True
            idx = todo[take]
            todo = todo[~take]
            out[idx] = self._insert_distinct_sets(pn[idx], pages, src[idx])
        return out

    def _insert_distinct_sets(self, pn: np.ndarray, pages: np.ndarray, src: np.ndarray) -> np.ndarray:
        k = len(pn)
        rows = np.arange(k)
        cand = self._candidates(pn)
        tags = self.tags[cand]
        match = tags == pn[:, None]
        empty = tags < 0
        # victim key: oldest age first, then fewest re-sends; matches and empties win outright
        age = self.age[cand]
        key = age * (1 << 20) + np.minimum(self.uses[cand], (1 << 20) - 1)
        key = np.where(empty, -2, key)
        key = np.where(match, -3, key)
        way = key.argmin(axis=1)
        slot = cand[rows, way]
        is_match = match[rows, way]
        is_empty = empty[rows, way]
        evict = ~is_match & ~is_empty
        fresh = self.age[slot] + self.lifetime > self.generation
        ok = ~(evict & fresh)
        s = slot[ok]
        self.tags[s] = pn[ok]
        self.data[s] = pages[src[ok]]
        self.age[s] = self.generation
        self.uses[s] = np.where(is_match[ok], self.uses[s], 0)
        self.inserts += int(ok.sum())
        self.evictions += int((evict & ok).sum())
        self.refused += int((~ok).sum())
        return np.where(ok, slot, -1)

    def invalidate(self, page_numbers) -> None:
        """Forget pages (e.g. after they were sent by a path that bypasses the cache)."""
        slots = self.find(page_numbers)
        slots = slots[slots >= 0]
        self.tags[slots] = -1
        self.uses[slots] = 0


def _pages(page_numbers) -> np.ndarray:
    pn = np.asarray(page_numbers, dtype=np.int64).reshape(-1)
    if len(pn) and pn.min() < 0:
        raise ValueError("page numbers must be >= 0")
    return pn
