"""The XBZRLE encode stage: page cache + delta codec, with QEMU's statistics.

Division of labour: :mod:`agents.encodings.xbzrle` knows the wire format,
:mod:`agents.encodings.page_cache` remembers what was sent, and this stage decides, for a
batch of dirty pages, which ones travel as deltas (what QEMU's
``save_xbzrle_page`` does per page, here per batch):

* cache miss  -> sent normally ("normal"), and the page is inserted in the cache;
* cache hit, pages equal -> nothing to send ("unchanged", QEMU skips the page);
* cache hit, delta fits the budget -> sent as a delta ("delta");
* cache hit, delta exceeds the budget -> sent normally and counted as an
  overflow; the cache takes the new content either way.

In the last stage (stop-and-copy) the cache is neither filled nor updated,
as in QEMU.  ``new_pages`` must be a stable snapshot of the pages (the batch
buffer of the pipeline): the cached copy and the delta are both taken from it.

The receiver applies a batch with
``xbzrle.decode_batch(result.payload, result.lengths, image, page_index=page_numbers)``
(normal pages have length -1 and are skipped there; they travel whole).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from agents.encodings import xbzrle
from agents.encodings.page_cache import PageCache

__all__ = ["NORMAL", "DELTA", "UNCHANGED", "XbzrleBatch", "XbzrleCounters", "XbzrleEncoder"]

NORMAL = 0  # send the whole page (cache miss or overflow)
DELTA = 1  # send lengths[k] bytes of payload
UNCHANGED = 2  # equal to the cached copy: send nothing

# QEMU adds an encoding flag byte and a 16-bit length to each delta page
DELTA_HEADER_BYTES = 3


@dataclass
class XbzrleBatch:
    """Per-page outcome of one batch.

    ``kinds[k]`` is NORMAL, DELTA or UNCHANGED; ``lengths[k]`` the delta length
    (0 for UNCHANGED, -1 for NORMAL); ``payload`` the deltas of the DELTA pages
    concatenated in batch order.
    """

    kinds: np.ndarray
    lengths: np.ndarray
    payload: bytes
    hit_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # encoded pages (cost model)

    @property
    def delta_mask(self) -> np.ndarray:
        return self.kinds == DELTA

    @property
    def normal_mask(self) -> np.ndarray:
        return self.kinds == NORMAL

    @property
    def unchanged_mask(self) -> np.ndarray:
        return self.kinds == UNCHANGED


@dataclass
class XbzrleCounters:
    """QEMU's ``xbzrle-cache`` statistics of query-migrate, with QEMU's meanings
    (migration/ram.c, save_xbzrle_page and migration_update_rates):

    * ``pages``: pages found in the cache (QEMU counts a hit before encoding:
      deltas, unchanged pages and overflows alike);
    * ``bytes``: for each hit, the delta and its 3-byte header (flag + length),
      nothing for an unchanged page, a whole page for an overflow;
    * ``cache_miss``: lookups that missed (in the last stage too);
    * ``overflow``: hits whose delta exceeded the budget (sent whole);
    * ``cache_miss_rate`` and ``encoding_rate`` are rates of the last period:
      QEMU recomputes them at a dirty-log sync at least a second after the
      previous one, as misses per page saved and as the hits' raw bytes over
      their ``bytes`` (0 without hits). See :meth:`update_rates`.

    The whole migration's ratios, which QEMU does not report, have names of
    their own: ``cache_miss_ratio_overall`` (misses per lookup) and
    ``encoding_ratio_overall``.
    """

    cache_size: int = 0
    bytes: int = 0
    pages: int = 0
    cache_miss: int = 0
    cache_miss_rate: float = 0.0
    encoding_rate: float = 0.0
    overflow: int = 0
    unchanged: int = 0
    lookups: int = 0
    cache_miss_ratio_overall: float = 0.0
    encoding_ratio_overall: float = 0.0
    _period: tuple | None = None  # (time, pages saved, cache_miss, pages, bytes) at the last rate update

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def update_rates(self, now_s: float, pages_saved: int, page_size: int = 4096) -> None:
        """A dirty-log sync at emulated time `now_s`, `pages_saved` pages sent so far
        (zero pages included). The first period runs from the start."""
        if self._period is not None and now_s - self._period[0] < 1.0:
            return  # QEMU: at most once a second
        _, saved0, miss0, pages0, bytes0 = self._period or (0.0, 0, 0, 0, 0)
        page_count = pages_saved - saved0
        if page_count > 0:
            self.cache_miss_rate = (self.cache_miss - miss0) / page_count
            encoded = self.bytes - bytes0
            hits = self.pages - pages0
            self.encoding_rate = hits * page_size / encoded if hits and encoded else 0.0
        self._period = (now_s, pages_saved, self.cache_miss, self.pages, self.bytes)


class XbzrleEncoder:
    """Encodes batches of dirty pages against a :class:`PageCache`."""

    def __init__(self, cache: PageCache, budget: int | None = None):
        self.cache = cache
        self.budget = cache.page_size if budget is None else int(budget)
        self.counters = XbzrleCounters(cache_size=cache.size_bytes)
        self.kernel_s = 0.0  # thread CPU seconds spent in the delta encoder itself

    def encode(self, page_numbers, new_pages: np.ndarray, *, last_stage: bool = False) -> XbzrleBatch:
        """Encode one batch; ``new_pages[k]`` is the content of page ``page_numbers[k]``."""
        pn = np.asarray(page_numbers, dtype=np.int64).reshape(-1)
        new_pages = np.ascontiguousarray(new_pages, dtype=np.uint8)
        if new_pages.ndim != 2 or new_pages.shape != (len(pn), self.cache.page_size):
            raise ValueError(f"new_pages must have shape ({len(pn)}, {self.cache.page_size})")
        n = len(pn)
        hit, slots = self.cache.lookup(pn)
        hit_rows = np.flatnonzero(hit)
        kinds = np.full(n, NORMAL, dtype=np.uint8)
        lengths = np.full(n, xbzrle.OVERFLOW, dtype=np.int32)
        payload = b""
        hl = np.zeros(0, dtype=np.int32)
        if len(hit_rows):
            t0 = time.thread_time()
            payload, hl = xbzrle.encode_batch(
                self.cache.data,
                new_pages,
                self.budget,
                old_index=slots[hit_rows],
                new_index=hit_rows,
                update_old=not last_stage,
            )
            self.kernel_s += time.thread_time() - t0
            lengths[hit_rows] = hl
            kinds[hit_rows] = np.where(hl > 0, DELTA, np.where(hl == 0, UNCHANGED, NORMAL))
        miss_rows = np.flatnonzero(~hit)
        if len(miss_rows) and not last_stage:
            self.cache.insert(pn[miss_rows], new_pages, rows=miss_rows)
        self._count(kinds, lengths, n - len(hit_rows))
        return XbzrleBatch(kinds=kinds, lengths=lengths, payload=payload, hit_lengths=np.asarray(hl))

    def cache_zero_pages(self, page_numbers, *, last_stage: bool = False) -> None:
        """Pages sent as zero pages: cache them as zeros, so later deltas apply
        against zero (QEMU's ``xbzrle_cache_zero_page``)."""
        pn = np.asarray(page_numbers, dtype=np.int64).reshape(-1)
        if last_stage or not len(pn):
            return
        zero = np.zeros((1, self.cache.page_size), dtype=np.uint8)
        self.cache.insert(pn, zero, rows=np.zeros(len(pn), dtype=np.int64))

    def _count(self, kinds: np.ndarray, lengths: np.ndarray, misses: int) -> None:
        c = self.counters
        delta = kinds == DELTA
        n_delta = int(delta.sum())
        n_overflow = int(((kinds == NORMAL) & (lengths == xbzrle.OVERFLOW)).sum()) - misses
        c.lookups += len(kinds)
        c.cache_miss += misses
        c.pages += len(kinds) - misses  # every hit, whatever its outcome (QEMU counts before encoding)
        c.overflow += n_overflow
        c.unchanged += int((kinds == UNCHANGED).sum())
        c.bytes += int(lengths[delta].sum()) + DELTA_HEADER_BYTES * n_delta + self.cache.page_size * n_overflow
        c.cache_miss_ratio_overall = c.cache_miss / c.lookups if c.lookups else 0.0
        c.encoding_ratio_overall = (c.pages * self.cache.page_size / c.bytes) if (c.pages and c.bytes) else 0.0
        c.cache_size = self.cache.size_bytes
