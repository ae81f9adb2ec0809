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

CPU: what is charged is the measured thread CPU time of the compression
kernels (the XBZRLE delta encoder, zstd), scaled like every per-page cost (a
real page stands for 1/memory_scale emulated pages; see agents/datapath/pipeline.py).
The numpy bookkeeping of the cache around them is the emulator's overhead,
not the migration's (QEMU's lookup is a hash probe), and is not charged.
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
    FLAG_ZSTD,
    PAGE,
    PAGE_HEADER_BYTES,
    ZERO_MARKER_BYTES,
    ZSTD_HEADER_BYTES,
    PackStats,
    SlotView,
    pack_pages,
)
from agents.encodings.page_cache import PageCache
from agents.encodings.xbzrle_stage import DELTA, NORMAL, XbzrleEncoder
from agents.encodings.zero_pages import zero_mask
from agents.encodings.zstd_codec import ZstdBatchCodec

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

    def counters(self, vm: int) -> dict:
        """QEMU's xbzrle-cache statistics of `vm` (real units)."""
        if vm not in self._vms:
            return {}
        c = self._vms[vm]
        with c.lock:
            return c.encoder.counters.as_dict()


class BatchEncoder:
    """One consumer's encoder: packs a batch into a slot with the configured compression."""

    def __init__(self, settings: Compression, caches: XbzrleCaches | None = None) -> None:
        self.settings = settings
        self.zstd = ZstdBatchCodec(settings.zstd_level) if settings.zstd else None
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
                self._compress(slot, stats, stats.normal * PAGE)
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
                          encode_s=encode_s)
        if self.zstd is not None:
            self._compress(slot, stats, raw_len)
        return stats

    def _compress(self, slot: SlotView, stats: PackStats, raw_len: int) -> None:
        """zstd over the batch's payload, in place; kept only when it pays."""
        if raw_len == 0:
            return
        t0 = time.thread_time()
        frame = self.zstd.compress_frame(slot.payload[:raw_len])
        stats.encode_s += time.thread_time() - t0
        if frame is None or len(frame) + ZSTD_HEADER_BYTES >= raw_len:
            return  # sent raw: the slot already holds it
        flen = len(frame)
        slot.payload[:flen] = np.frombuffer(frame, dtype=np.uint8)
        npages, _flags, _len = slot.get_header()
        slot.set_header(npages, FLAG_ZSTD, flen)
        saved = raw_len - (flen + ZSTD_HEADER_BYTES)
        stats.wire_bytes -= saved
        stats.payload_bytes -= saved
        stats.compressed, stats.normal = stats.normal, 0
