"""The encode stage and the wire format of compressed batches, without Ray:
zstd batches, XBZRLE deltas against the page cache, both together, and the
partial-page writes of the delta-compression workloads."""
from __future__ import annotations

import numpy as np
import pytest

from agents.datapath.wire_format import (
    DELTA_HEADER_BYTES,
    ENC_DELTA,
    ENC_NORMAL,
    FLAG_ZSTD,
    PAGE,
    PAGE_HEADER_BYTES,
    ZERO_MARKER_BYTES,
    ZSTD_HEADER_BYTES,
    SlotLayout,
    SlotView,
    Unpacker,
    restore_pages,
)
from agents.encodings.codec_bench import random_pages, text_pages
from agents.encodings.encoding import BatchEncoder, Compression, XbzrleCaches
from agents.guest.content import bump_bands, write_runs
from agents.guest.workloads import Erp, MemWriter, VideoTranscoder, make_workload

BATCH = 32


class Wire:
    """A source image, an encoder per consumer, one slot and a destination image."""

    def __init__(self, src: np.ndarray, method: str, consumers: int = 1, cache_pages: int = 1 << 12) -> None:
        self.src = src
        self.dst = np.zeros_like(src)
        settings = Compression(method, xbzrle_cache_bytes=cache_pages * PAGE)
        self.caches = XbzrleCaches(settings.xbzrle_cache_bytes)
        self.encoders = [BatchEncoder(settings, self.caches) for _ in range(consumers)]
        lay = SlotLayout(BATCH)
        self.slot = SlotView(np.zeros(lay.slot_bytes, np.uint8), 0, lay)
        self.unpacker = Unpacker()
        self.totals: dict[str, int] = {}

    def send(self, idx, last_stage: bool = False, consumer: int = 0):
        st = self.encoders[consumer].pack(0, self.src, np.asarray(idx), self.slot, last_stage)
        assert restore_pages(self.dst, self.slot, self.unpacker) == st.pages
        for k in ("normal", "zero", "compressed", "delta", "unchanged", "overflow", "raw_bytes",
                  "payload_bytes", "wire_bytes"):
            self.totals[k] = self.totals.get(k, 0) + getattr(st, k)
        return st

    def send_all(self, idx, **kw) -> None:
        idx = np.asarray(idx)
        for i, start in enumerate(range(0, len(idx), BATCH)):
            self.send(idx[start:start + BATCH], consumer=i % len(self.encoders), **kw)
        self.caches.new_generation(0)  # a dirty-log sync between passes


def _image(n: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = text_pages(n, rng)
    img[rng.random(n) < 0.2] = 0
    img[rng.random(n) < 0.2] = random_pages(1, rng)[0]
    return img


def _scribble(img: np.ndarray, rng, writes: int = 200, nbytes: int = 64) -> np.ndarray:
    idx = rng.integers(0, len(img), writes)
    write_runs(img, idx, rng.integers(0, PAGE - nbytes + 1, writes), nbytes, rng)
    return np.unique(idx)


def test_zstd_batch_is_compressed_flagged_and_restored():
    w = Wire(_image(), "zstd")
    st = w.send(np.arange(BATCH))
    assert w.slot.get_header()[1] == FLAG_ZSTD
    # Each page its own frame: the text pages are compressed, the random ones (which do not pay) go whole.
    text = np.flatnonzero(w.src[:BATCH].any(axis=1) & (w.src[:BATCH] < 128).all(axis=1))
    assert st.compressed == len(text) and st.normal == BATCH - st.zero - len(text) and st.delta == 0
    assert st.payload_bytes < st.normal * PAGE + 0.5 * st.compressed * PAGE
    n, _, plen = w.slot.get_header()
    assert st.wire_bytes == n * PAGE_HEADER_BYTES + st.zero * ZERO_MARKER_BYTES + plen + st.compressed * ZSTD_HEADER_BYTES
    assert np.array_equal(w.dst[:BATCH], w.src[:BATCH])
    assert w.unpacker.take_decode_s() > 0


def test_zstd_falls_back_to_raw_for_random_pages():
    src = random_pages(BATCH, np.random.default_rng(1))
    w = Wire(src, "zstd")
    st = w.send(np.arange(BATCH))
    assert w.slot.get_header() == (BATCH, 0, BATCH * PAGE)  # no flag: sent as it is
    assert (st.normal, st.compressed) == (BATCH, 0)
    assert st.payload_bytes == st.raw_bytes  # compress rate 1
    assert np.array_equal(w.dst, src)


@pytest.mark.parametrize("method", ["xbzrle", "xbzrle+zstd"])
def test_xbzrle_sends_deltas_of_rewritten_pages_and_restores_them(method):
    rng = np.random.default_rng(2)
    src = _image()
    w = Wire(src, method)
    w.send_all(np.arange(len(src)))
    assert np.array_equal(w.dst, src)
    assert w.totals["delta"] == 0 and w.totals["overflow"] == 0  # the first pass misses the cache
    for _ in range(3):
        w.totals.clear()
        was_sent_whole = src.any(axis=1)  # zero pages are not cached (as in QEMU)
        dirty = _scribble(src, rng)
        w.send_all(dirty)
        assert np.array_equal(w.dst, src)
        cached = int(was_sent_whole[dirty].sum())
        assert w.totals["delta"] >= 0.9 * cached
        # 64 changed bytes cost a delta of about 70 bytes, not a page
        assert w.totals["payload_bytes"] < 0.1 * cached * PAGE + (w.totals["raw_bytes"] - cached * PAGE)
    c = w.caches.counters(0)
    assert c["pages"] > 0 and c["cache_miss"] > 0 and c["encoding_ratio_overall"] > 10


def test_delta_pages_on_the_wire_cost_their_encoding():
    src = _image()
    w = Wire(src, "xbzrle")
    w.send_all(np.arange(len(src)))
    page = int(np.flatnonzero(src.any(axis=1))[0])
    src[page, 100:110] ^= 0xFF
    st = w.send([page])
    assert (st.delta, st.normal) == (1, 0)
    assert w.slot.enc[0] == ENC_DELTA
    dlen = int(w.slot.lengths[0])
    assert 10 < dlen < 20
    assert st.wire_bytes == PAGE_HEADER_BYTES + DELTA_HEADER_BYTES + dlen
    assert np.array_equal(w.dst, src)


def test_unchanged_pages_are_left_out():
    src = _image()
    w = Wire(src, "xbzrle")
    w.send_all(np.arange(len(src)))
    nonzero = np.flatnonzero(src.any(axis=1))[:10]
    st = w.send(nonzero)
    assert st.unchanged == 10 and st.pages == 0 and st.wire_bytes == 0
    assert w.slot.get_header() == (0, 0, 0)


def test_overflow_is_sent_whole_and_cached():
    src = _image()
    w = Wire(src, "xbzrle")
    w.send_all(np.arange(len(src)))
    page = int(np.flatnonzero(src.any(axis=1))[0])
    src[page] = random_pages(1, np.random.default_rng(3))[0]
    st = w.send([page])
    assert (st.normal, st.overflow, st.delta) == (1, 1, 0)
    assert w.slot.enc[0] == ENC_NORMAL
    src[page, :8] ^= 1  # the cache took the whole page: the next change is a delta again
    assert w.send([page]).delta == 1
    assert np.array_equal(w.dst, src)


def test_a_cached_page_that_became_zero_is_encoded_against_zero():
    """The destination holds zeros after a zero page: so must the cache."""
    src = _image()
    w = Wire(src, "xbzrle")
    w.send_all(np.arange(len(src)))
    page = int(np.flatnonzero(src.any(axis=1))[0])
    src[page] = 0
    assert w.send([page]).zero == 1
    src[page, 10:20] = 7
    st = w.send([page])
    assert st.delta == 1
    assert np.array_equal(w.dst, src)


def test_the_last_stage_leaves_the_cache_alone():
    src = _image()
    w = Wire(src, "xbzrle")
    w.send_all(np.arange(len(src)))
    page = int(np.flatnonzero(src.any(axis=1))[0])
    cached = w.caches.of(0).cache
    before = cached.data.copy()
    src[page, :64] ^= 0x55
    assert w.send([page], last_stage=True).delta == 1
    assert np.array_equal(cached.data, before)
    assert np.array_equal(w.dst, src)


def test_consumers_share_one_cache_per_vm_and_verify():
    rng = np.random.default_rng(4)
    src = _image(512)
    w = Wire(src, "xbzrle+zstd", consumers=3, cache_pages=128)  # smaller than the image: misses and evictions
    for _ in range(4):
        w.send_all(np.arange(len(src)) if not w.totals else _scribble(src, rng, 400))
        assert np.array_equal(w.dst, src)
    c = w.caches.counters(0)
    assert c["cache_size"] == 128 * PAGE
    assert 0 < c["cache_miss_ratio_overall"] < 1 and c["pages"] > 0


def test_corrupt_delta_raises_and_leaves_the_image_alone():
    src = _image()
    w = Wire(src, "xbzrle")
    w.send_all(np.arange(len(src)))
    page = int(np.flatnonzero(src.any(axis=1))[0])
    src[page, 100:110] ^= 0xFF
    w.encoders[0].pack(0, src, np.array([page]), w.slot)
    w.slot.lengths[0] += 3  # the delta runs past its payload
    before = w.dst.copy()
    with pytest.raises(ValueError):
        restore_pages(w.dst, w.slot)
    assert np.array_equal(w.dst, before)


def test_corrupt_zstd_frame_raises():
    w = Wire(_image(), "zstd")
    st = w.encoders[0].pack(0, w.src, np.arange(BATCH), w.slot)
    w.slot.payload[st.normal * PAGE: st.normal * PAGE + 64] ^= 0xFF  # the first frame
    with pytest.raises(ValueError):
        restore_pages(w.dst, w.slot)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown compression"):
        Compression("gzip")


# --- partial-page writes -------------------------------------------------------

def test_write_runs_changes_exactly_the_runs():
    rng = np.random.default_rng(5)
    pages = np.zeros((64, PAGE), np.uint8)
    idx = np.array([3, 3, 10, 63])
    offs = np.array([0, 100, PAGE - 64, 1000])
    write_runs(pages, idx, offs, 64, rng)
    changed = pages != 0
    assert set(np.flatnonzero(changed.any(axis=1))) <= {3, 10, 63}
    assert changed[:, :].sum() <= 4 * 64 and changed.sum() > 4 * 60  # a random byte may be 0
    assert not changed[3, 64:100].any() and not changed[10, : PAGE - 64].any()


def test_bump_bands_changes_a_band_of_every_page():
    pages = np.zeros((40, PAGE), np.uint8)
    offs = np.array([0, 1000, 3000])
    bump_bands(pages, 8, 32, offs, 500, 1)
    changed = pages != 0
    assert not changed[:8].any() and not changed[32:].any()
    assert (changed[8:32].sum(axis=1) == 500).all()
    assert changed[8, :500].all() and changed[9, 1000:1500].all() and changed[10, 3000:3500].all()
    bump_bands(pages, 8, 32, offs, 500, 256)  # an increment of 0 mod 256 still changes the band
    assert (pages[8, :500] == 2).all()


def test_memwriter_writes_small_runs_in_its_working_set():
    rng = np.random.default_rng(6)
    pages = np.zeros((1024, PAGE), np.uint8)
    wl = MemWriter(1024, 1 / 64, rng, writes_per_s=64_000, bytes_per_write=64, working_set_pages=256)
    idx = wl.write(pages, 64_000)  # one emulated second: 1000 real writes
    assert len(idx) == 1000 and idx.max() < 256
    assert not pages[256:].any()
    assert 0.9 * 1000 * 64 < np.count_nonzero(pages) <= 1000 * 64


def test_video_rewrites_a_fraction_of_every_frame_page():
    pages = np.zeros((512, PAGE), np.uint8)
    wl = VideoTranscoder(512, 1 / 64, np.random.default_rng(7), frame_pages=100, fps=25, changed_fraction=0.125)
    assert len(wl.write(pages, 0.5)) == 0  # half a frame: nothing yet
    idx = wl.write(pages, 0.5)
    assert np.array_equal(idx, np.arange(100))
    assert (np.count_nonzero(pages[:100], axis=1) == 512).all() and not pages[100:].any()


def test_erp_updates_records_appends_its_log_and_rolls_sessions():
    pages = np.zeros((4096, PAGE), np.uint8)
    wl = Erp(4096, 1 / 64, np.random.default_rng(8), ops_per_s=6400, writes_per_op=4, record_bytes=128,
             log_bytes_per_op=256, log_pages=64, session_pages=32, session_kib_per_op=64, working_set_pages=1024)
    idx = wl.write(pages, 6400)  # one emulated second: 100 real transactions
    assert np.count_nonzero(pages[:64].any(axis=1)) == 7  # 100 entries of 256 bytes, from the log's start
    assert pages[64:96].all()  # every byte of the session area changed
    tables = pages[96: 96 + 1024]
    assert 0.9 * 400 * 128 < np.count_nonzero(tables) <= 400 * 128
    assert not pages[96 + 1024:].any()
    assert set(np.flatnonzero(pages.any(axis=1)).tolist()) <= set(idx.tolist())


def test_make_workload_builds_the_delta_workloads():
    gib = 1 / 64
    m = make_workload({"kind": "memwrite", "writes_per_s": 10, "working_set_gib": 0.25}, 4096, gib, 1)
    v = make_workload({"kind": "video", "frame_mib": 64}, 4096, gib, 1)
    e = make_workload({"kind": "erp", "ops_per_s": 10, "log_mib": 16, "session_mib": 8, "working_set_gib": 0.5}, 4096, gib, 1)
    assert m.writes_in_place and m.ws == 1024 and m.nbytes == 64
    assert v.frame_pages == 256 and v.band == 410
    assert (e.log_pages, e.session_pages, e.tables) == (64, 32, 2048)


# --- QEMU's meanings (issue "Fidelity" (3)) ------------------------------------------

def test_xbzrle_starts_after_the_first_round_as_in_qemu():
    # QEMU (ram.c, xbzrle_started): nothing goes through the cache until the walk has
    # completed its first round. A page is cached when it is sent again, and goes as a
    # delta the time after.
    src = _image(64, seed=4)
    src[src.sum(axis=1) == 0] = text_pages(1, np.random.default_rng(9))[0]  # no zero pages
    w = Wire(src, "xbzrle")
    first = w.encoders[0].pack(0, src, np.arange(32), w.slot, bulk=True)
    assert first.normal == 32 and first.delta == 0
    assert w.caches.counters(0) == {}  # nothing looked up, nothing cached
    _scribble(src, np.random.default_rng(1), writes=20)
    second = w.send(np.arange(32))  # after the first round: misses, cached, sent whole
    assert second.normal == 32 and w.caches.counters(0)["cache_miss"] == 32
    _scribble(src, np.random.default_rng(2), writes=200)
    third = w.send(np.arange(32))
    assert third.delta + third.unchanged + third.overflow == 32 and third.delta > 0
    assert np.array_equal(w.dst[:32], src[:32])


def test_xbzrle_pages_and_bytes_count_every_cache_hit_as_qemu_does():
    # QEMU counts a hit in `pages` before encoding it; `bytes` takes the delta and its
    # 3-byte header, nothing for an unchanged page, a whole page for an overflow.
    src = text_pages(3, np.random.default_rng(5))
    w = Wire(src, "xbzrle")
    w.send([0, 1, 2])  # misses: cached
    src[1, :64] ^= 0xFF  # a small change: a delta
    src[2] = random_pages(1, np.random.default_rng(6))[0]  # all new: the delta overflows
    st = w.send([0, 1, 2])
    assert (st.unchanged, st.delta, st.overflow) == (1, 1, 1)
    c = w.caches.counters(0)
    assert c["pages"] == 3 and c["cache_miss"] == 3 and c["overflow"] == 1
    delta_len = st.payload_bytes - DELTA_HEADER_BYTES - PAGE  # the payload: one delta + its header, one page
    assert c["bytes"] == delta_len + DELTA_HEADER_BYTES + PAGE


def test_xbzrle_rates_are_the_last_periods_at_syncs_a_second_apart():
    from agents.encodings.xbzrle_stage import XbzrleCounters
    c = XbzrleCounters()
    c.cache_miss, c.pages, c.bytes = 50, 20, 20 * 1024
    c.update_rates(now_s=3.0, pages_saved=100)  # the first period: since the start
    assert c.cache_miss_rate == 0.5 and c.encoding_rate == 4.0
    c.cache_miss, c.pages, c.bytes = 60, 60, 20 * 1024 + 40 * 512
    c.update_rates(now_s=3.5, pages_saved=200)  # half a second later: QEMU keeps the old rates
    assert c.cache_miss_rate == 0.5
    c.update_rates(now_s=4.0, pages_saved=200)
    assert c.cache_miss_rate == 10 / 100 and c.encoding_rate == 8.0
