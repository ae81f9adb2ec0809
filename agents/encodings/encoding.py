"""The encode stage of the source: zero pages, XBZRLE deltas and zstd, per batch.

Division of labour: :mod:`agents.datapath.wire_format` knows the slot layout and how a
receiver restores any batch; :mod:`agents.encodings.xbzrle_stage` decides page by page
what XBZRLE sends; :mod:`agents.encodings.zstd_codec` compresses. This module puts them
in the order QEMU does (``ram_save_target_page``: zero page check first, then
XBZRLE, then the page whole) and adds zstd over the batch (``multifd-zstd``):

* every consumer owns a :class:`BatchEncoder` (its own zstd context);
* every VM has one XBZRLE page cache (:class:`XbzrleCaches`), shared by the
  consumers under a lock, as QEMU keeps one per migration;
* the cache starts a new generation at each dirty-log sync, so pages that keep
  being re-sent stay cached (QEMU's age rule, agents/encodings/page_cache.py);
* XBZRLE starts after the first round over the image (QEMU's xbzrle_started):
  a page is cached when it is sent again, and goes as a delta the time after.

XBZRLE must encode against what the destination holds. The cache copy of a
page is updated with exactly the bytes sent (the batch snapshot, never the
live image), pages sent as zero pages update their cached copy to zeros, and
pages that miss are inserted with the content sent; the pipeline restores a
pass's batches before the next pass starts, so a page's copies can never
arrive out of order. In the stop-and-copy pass the cache is left alone.

zstd compresses each page into a frame of its own (agents/encodings/zstd_codec.py),
kept when it pays, so a page's ratio does not depend on the batch size.

CPU: what is charged is the codec cost model's figure for the batch
(`PackStats.model_us`, agents/encodings/cost_model.py: per byte of each content
class, and per delta by how much of the page changed), scaled like every
per-page cost by the pipeline. The measured thread CPU time of the kernels
is kept beside it (`encode_s`) for the report. The numpy bookkeeping of the
cache around them is the emulator's overhead, not the migration's (QEMU's
lookup is a hash probe), and is not charged.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from agents.datapath.wire_format import (
    DELTA_HEADER_BYTES,
    ENC_DELTA,
    ENC_NORMAL,
    ENC_ZERO,
    ENC_ZSTD,
    FLAG_ZSTD,
    PAGE,
    PAGE_HEADER_BYTES,
    ZERO_MARKER_BYTES,
    ZSTD_HEADER_BYTES,
    PackStats,
    SlotView,
    pack_pages,
)
from agents.encodings import cost_model
from agents.encodings.page_cache import PageCache
from agents.encodings.xbzrle_stage import DELTA, NORMAL, XbzrleEncoder
from agents.encodings.zero_pages import zero_mask
from agents.encodings.zstd_codec import ZstdPageCodec

METHODS = ("none", "zstd", "xbzrle", "xbzrle+zstd")


@dataclass(frozen=True)
class Compression:
    """The migration's compression settings (scenario `[migration]`), in real units."""
    method: str = "none"
    zstd_level: int = 1
    xbzrle_cache_bytes: int = 64 << 20  # real bytes of cache per VM
    xbzrle_budget: int | None = None  # bytes a delta may take; default: a page

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown compression {self.method!r}; known: {', '.join(METHODS)}")

    @property
    def zstd(self) -> bool:
        return self.method.endswith("zstd")

    @property
    def xbzrle(self) -> bool:
        return self.method.startswith("xbzrle")


class _VmCache:
    def __init__(self, cache_bytes: int, budget: int | None) -> None:
        self.cache = PageCache(max(1, cache_bytes // PAGE), page_size=PAGE)
        self.encoder = XbzrleEncoder(self.cache, budget)
        self.lock = threading.Lock()


class XbzrleCaches:
    """One XBZRLE page cache (and its counters) per VM, created on first use."""

    def __init__(self, cache_bytes: int, budget: int | None = None) -> None:
        self.cache_bytes = cache_bytes
        self.budget = budget
        self._vms: dict[int, _VmCache] = {}
        self._lock = threading.Lock()

    def of(self, vm: int) -> _VmCache:
        with self._lock:
            c = self._vms.get(vm)
            if c is None:
                c = self._vms[vm] = _VmCache(self.cache_bytes, self.budget)
            return c

    def new_generation(self, vm: int, now_s: float | None = None, pages_saved: int = 0) -> None:
        """A dirty-log sync of `vm` happened (QEMU ages its cache by sync count, and
        updates its rates there): at emulated time `now_s`, `pages_saved` pages sent so far."""
        c = self.of(vm)
        with c.lock:
            c.cache.new_generation()
            if now_s is not None:
                c.encoder.counters.update_rates(now_s, pages_saved, PAGE)

    def invalidate(self, vm: int, pages: np.ndarray) -> None:
        """Forget `pages` of `vm`: they were sent again whole (a re-sent damaged batch), so
        the destination holds the image's current contents, not the cached ones."""
        c = self.of(vm)
        with c.lock:
            c.cache.invalidate(pages)

    def counters(self, vm: int) -> dict:
        """QEMU's xbzrle-cache statistics of `vm` (real units)."""
        if vm not in self._vms:
            return {}
        c = self._vms[vm]
        with c.lock:
            return c.encoder.counters.as_dict()


class BatchEncoder:
    """One consumer's encoder: packs a batch into a slot with the configured compression."""

    def __init__(self, settings: Compression, caches: XbzrleCaches | None = None,
                 costs: cost_model.CodecCosts | None = None) -> None:
        self.settings = settings
        self.costs = costs or cost_model.load()
        self.zstd = ZstdPageCodec(settings.zstd_level) if settings.zstd else None
        if settings.xbzrle and caches is None:
            raise ValueError("XBZRLE needs the VMs' page caches")
        self.caches = caches if settings.xbzrle else None

    def pack(self, vm: int, image: np.ndarray, idx: np.ndarray, slot: SlotView, last_stage: bool = False,
             bulk: bool = False) -> PackStats:
        """`bulk`: the first round over the image. QEMU starts XBZRLE only once
        its walk has completed a round (ram.c, xbzrle_started): until then
        pages go whole, none is cached and no XBZRLE counter moves."""
        if self.caches is None or bulk:
            stats = pack_pages(image, idx, slot)
            if self.zstd is not None:
                self._compress(slot, stats, 0)
            return stats
        return self._pack_xbzrle(vm, image, idx, slot, last_stage)

    def _pack_xbzrle(self, vm: int, image: np.ndarray, idx: np.ndarray, slot: SlotView, last_stage: bool) -> PackStats:
        n = len(idx)
        # The snapshot of the batch: what is cached, encoded and sent are all taken from it.
        gathered = slot.payload[: n * PAGE].reshape(n, PAGE)
        np.take(image, idx, axis=0, out=gathered)
        zero = zero_mask(gathered)
        nz_rows = np.flatnonzero(~zero)
        vc = self.caches.of(vm)
        with vc.lock:
            if not last_stage and len(nz_rows) < n:
                # QEMU's xbzrle_cache_zero_page: a cached page now zero is cached as zero.
                slots = vc.cache.find(idx[zero])
                vc.cache.data[slots[slots >= 0]] = 0
            new = gathered if len(nz_rows) == n else gathered[nz_rows]
            before = vc.encoder.kernel_s, vc.encoder.counters.overflow
            out = vc.encoder.encode(idx[nz_rows], new, last_stage=last_stage)
            encode_s = vc.encoder.kernel_s - before[0]
            overflow = vc.encoder.counters.overflow - before[1]
        model_us = self.costs.xbzrle_encode_us(out.hit_lengths)
        kinds = np.full(n, NORMAL, dtype=np.uint8)
        kinds[nz_rows] = out.kinds
        lengths = np.zeros(n, dtype=np.int64)
        lengths[nz_rows] = out.lengths
        is_delta = ~zero & (kinds == DELTA)
        is_normal = ~zero & (kinds == NORMAL)
        keep = zero | is_delta | is_normal  # unchanged pages are left out
        k = int(np.count_nonzero(is_normal))
        nd = int(np.count_nonzero(is_delta))
        nzero = n - len(nz_rows)
        # Payload: normal pages, then deltas (fancy indexing copies first: the overlap is safe).
        if k < n:
            gathered[:k] = gathered[is_normal]
        dlen = len(out.payload)
        slot.payload[k * PAGE: k * PAGE + dlen] = np.frombuffer(out.payload, dtype=np.uint8)
        m = int(np.count_nonzero(keep))
        enc = np.where(zero, ENC_ZERO, np.where(is_delta, ENC_DELTA, ENC_NORMAL))
        slot.idx[:m] = idx[keep]
        slot.enc[:m] = enc[keep]
        slot.lengths[:m] = np.where(zero, 0, np.where(is_delta, lengths, PAGE))[keep]
        raw_len = k * PAGE + dlen
        slot.set_header(m, 0, raw_len)
        stats = PackStats(normal=k, zero=nzero, delta=nd, unchanged=n - m,
                          overflow=overflow,
                          raw_bytes=(k + nd) * PAGE, payload_bytes=raw_len + nd * DELTA_HEADER_BYTES,
                          wire_bytes=(m * PAGE_HEADER_BYTES + nzero * ZERO_MARKER_BYTES
                                      + nd * DELTA_HEADER_BYTES + raw_len),
                          encode_s=encode_s, model_us=model_us)
        if self.zstd is not None:
            self._compress(slot, stats, dlen)
        return stats

    def _compress(self, slot: SlotView, stats: PackStats, tail_len: int) -> None:
        """zstd over each of the batch's normal pages, in place; a page's frame is kept only
        when it pays. The payload holds the normal pages then `tail_len` bytes of deltas."""
        k = stats.normal
        if k == 0:
            return
        pages = slot.payload[: k * PAGE].reshape(k, PAGE)
        t0 = time.thread_time()
        frames, flens = self.zstd.compress_pages(pages)
        stats.encode_s += time.thread_time() - t0
        z = self.costs.zstd_level(self.settings.zstd_level)
        stats.model_us += z.compress_us(flens, self.costs.call_us)  # every page was tried
        pays = flens + ZSTD_HEADER_BYTES < PAGE * 0.97
        if not pays.any():
            return
        npages, _flags, _len = slot.get_header()
        rows = np.flatnonzero(slot.enc[:npages] == ENC_NORMAL)  # the normal pages, in payload order
        tail = slot.payload[k * PAGE: k * PAGE + tail_len].copy()
        kept = int(k - np.count_nonzero(pays))
        if kept:
            pages[:kept] = pages[~pays]  # fancy indexing copies first: the overlap is safe
        off = kept * PAGE
        for f in (f for f, p in zip(frames, pays.tolist()) if p):
            slot.payload[off: off + len(f)] = np.frombuffer(f, dtype=np.uint8)
            off += len(f)
        slot.payload[off: off + tail_len] = tail
        slot.enc[rows[pays]] = ENC_ZSTD
        slot.lengths[rows[pays]] = flens[pays]
        slot.set_header(npages, FLAG_ZSTD, off + tail_len)
        saved = int((PAGE - flens[pays] - ZSTD_HEADER_BYTES).sum())
        stats.wire_bytes -= saved
        stats.payload_bytes -= saved
        stats.compressed = int(np.count_nonzero(pays))
        stats.normal = kept
