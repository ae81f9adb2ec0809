"""XBZRLE page cache (lookup, insert, eviction policy, counters) and the
XBZRLE encode stage on top of it, end to end against a destination image."""

import numpy as np
import pytest

from agents.encodings import xbzrle
from agents.encodings.codec_bench import changed_pages, random_pages
from agents.encodings.page_cache import PageCache
from agents.encodings.xbzrle_stage import DELTA, NORMAL, UNCHANGED, XbzrleEncoder

PAGE = 4096


def pages_of(*values, size=PAGE):
    return np.array([np.full(size, v, np.uint8) for v in values])


def test_sizes():
    c = PageCache.from_bytes(1 << 20, ways=4)
    assert c.num_slots == 256 and c.size_bytes == 1 << 20
    assert c.data.shape == (256, PAGE)
    odd = PageCache(10, ways=4)  # rounded down to whole sets
    assert odd.num_slots == 8 and odd.num_sets == 2
    assert PageCache(1, ways=8).num_slots == 1
    with pytest.raises(ValueError):
        PageCache(0)


def test_lookup_insert_get_and_counters():
    c = PageCache(64, ways=4)
    hit, slots = c.lookup([1, 2, 3])
    assert not hit.any() and (slots == -1).all()
    assert (c.misses, c.hits, c.miss_rate) == (3, 0, 1.0)
    ins = c.insert([1, 2, 3], pages_of(11, 22, 33))
    assert (ins >= 0).all() and c.num_items == 3
    hit, slots = c.lookup([3, 9, 1])
    assert hit.tolist() == [True, False, True]
    assert slots[1] == -1
    got = c.get(slots[hit])
    assert got[:, 0].tolist() == [33, 11] and got.shape == (2, PAGE)
    assert (c.hits, c.misses) == (2, 4)
    assert c.miss_rate == pytest.approx(4 / 6)
    c.update(slots[[0]], pages_of(99))
    assert c.get(c.find([3]))[0, 0] == 99
    with pytest.raises(IndexError):
        c.get([-1])
    s = c.stats()
    assert s["cache_size"] == c.size_bytes and s["hits"] == 2 and s["misses"] == 4


def test_reinsert_overwrites_in_place():
    c = PageCache(8, ways=2)
    (s1,) = c.insert([5], pages_of(1))
    (s2,) = c.insert([5], pages_of(2))
    assert s1 == s2 and c.num_items == 1 and c.get([s2])[0, 0] == 2


def test_direct_mapped_eviction_follows_qemu_age_rule():
    c = PageCache(4, ways=1)  # QEMU layout: page p lives in slot p % 4
    assert c.insert([0], pages_of(1))[0] == 0
    # page 4 collides with page 0, which is fresh (inserted this generation): refused
    assert c.insert([4], pages_of(2))[0] == -1
    assert c.refused == 1 and c.contains([0, 4]).tolist() == [True, False]
    c.new_generation()
    assert c.insert([4], pages_of(2))[0] == -1  # still within the lifetime of 2
    c.new_generation()
    assert c.insert([4], pages_of(2))[0] == 0  # stale now: evicted
    assert c.evictions == 1
    assert c.contains([0, 4]).tolist() == [False, True]
    assert c.get(c.find([4]))[0, 0] == 2
    # a hit refreshes the age and protects the page again
    c.new_generation()
    c.new_generation()
    c.lookup([4])
    assert c.insert([8], pages_of(3))[0] == -1
    assert c.contains([4])[0]


def test_set_associative_victim_is_stalest_then_least_resent():
    c = PageCache(4, ways=2, lifetime=1)  # 2 sets: even pages in set 0
    c.insert([0, 2], pages_of(1, 2))
    c.new_generation()
    c.lookup([0])  # page 0 re-sent in generation 1
    c.new_generation()
    (slot,) = c.insert([4], pages_of(3))  # evicts 2 (older), keeps 0
    assert slot >= 0
    assert c.contains([0, 2, 4]).tolist() == [True, False, True]
    # same age: the one re-sent less goes
    c.new_generation()
    c.lookup([0])
    c.lookup([4, 4, 4])  # page 4 re-sent three times, page 0 twice in all
    c.new_generation()
    c.insert([6], pages_of(4))
    assert c.contains([0, 4, 6]).tolist() == [False, True, True]


def test_collisions_within_one_batch_insert_in_order():
    c = PageCache(4, ways=1, lifetime=0)  # no protection: last writer wins
    out = c.insert([0, 4, 8, 1], pages_of(1, 2, 3, 4))
    assert (out >= 0).all()
    assert c.contains([0, 4, 8, 1]).tolist() == [False, False, True, True]
    assert c.get(c.find([8]))[0, 0] == 3
    c2 = PageCache(4, ways=1)  # QEMU rule: the first one stays, the others are refused
    out = c2.insert([0, 4, 8], pages_of(1, 2, 3))
    assert out.tolist() == [0, -1, -1]
    assert c2.get(c2.find([0]))[0, 0] == 1


def test_insert_rows_and_invalidate():
    c = PageCache(16)
    src = pages_of(10, 20, 30)
    c.insert([7, 8], src, rows=[2, 0])
    assert c.get(c.find([7, 8]))[:, 0].tolist() == [30, 10]
    c.invalidate([7])
    assert c.contains([7, 8]).tolist() == [False, True]


def test_full_cache_keeps_working_set():
    """Pages re-sent every iteration stay cached while a stream of one-off pages passes by."""
    c = PageCache(64, ways=4)
    hot = np.arange(0, 32)
    rng = np.random.default_rng(1)
    for it in range(6):
        c.new_generation()
        hit, _ = c.lookup(hot)
        c.insert(hot[~hit], random_pages(int((~hit).sum()), rng))
        cold = rng.integers(1000, 100000, 64)
        hit, _ = c.lookup(cold)
        c.insert(cold[~hit], random_pages(int((~hit).sum()), rng))
        if it >= 1:
            assert c.contains(hot).all()


# -- the XBZRLE stage ------------------------------------------------------------


def apply_batch(dest, page_numbers, new_pages, res):
    """What the receiver does with a batch."""
    normal = res.kinds == NORMAL
    dest[page_numbers[normal]] = new_pages[normal]
    xbzrle.decode_batch(res.payload, np.where(normal, -1, res.lengths), dest, page_index=page_numbers)


def test_encoder_kinds_and_counters():
    rng = np.random.default_rng(2)
    cache = PageCache(64)
    enc = XbzrleEncoder(cache)
    pn = np.arange(8)
    v0 = random_pages(8, rng)
    r = enc.encode(pn, v0)
    assert (r.kinds == NORMAL).all() and r.payload == b"" and (r.lengths == -1).all()
    assert enc.counters.cache_miss == 8 and enc.counters.cache_miss_ratio_overall == 1.0
    assert cache.contains(pn).all()

    v1 = v0.copy()
    v1[0:4] = changed_pages(v0[0:4], 0.01, rng)  # small deltas
    v1[4] = rng.integers(0, 256, PAGE, dtype=np.uint8)  # overflow
    # pages 5..7 unchanged
    cache.new_generation()
    r = enc.encode(pn, v1)
    assert r.kinds.tolist() == [DELTA] * 4 + [NORMAL] + [UNCHANGED] * 3
    assert r.lengths[5:].tolist() == [0, 0, 0] and r.lengths[4] == -1
    assert len(r.payload) == r.lengths[:4].sum()
    c = enc.counters
    # QEMU's meanings: every hit counts in `pages` (deltas, the overflow, the unchanged ones).
    assert c.pages == 8 and c.overflow == 1 and c.unchanged == 3 and c.cache_miss == 8
    assert c.bytes == int(r.lengths[:4].sum()) + 3 * 4 + PAGE
    assert c.encoding_ratio_overall == pytest.approx(8 * PAGE / c.bytes)
    assert c.cache_miss_ratio_overall == pytest.approx(8 / 16)
    assert c.cache_size == cache.size_bytes
    # the cache took the new content, the overflowed page included
    assert np.array_equal(cache.get(cache.find(pn)), v1)
    d = c.as_dict()
    assert {"bytes", "pages", "cache_miss", "cache_miss_rate", "encoding_rate", "overflow"} <= d.keys()


def test_encoder_last_stage_leaves_cache_alone():
    rng = np.random.default_rng(4)
    cache = PageCache(16)
    enc = XbzrleEncoder(cache)
    v0 = random_pages(2, rng)
    enc.encode([0, 1], v0)
    before = cache.data.copy()
    v1 = changed_pages(v0, 0.01, rng)
    r = enc.encode([0, 1, 2], np.vstack([v1, v0[:1]]), last_stage=True)
    assert r.kinds.tolist() == [DELTA, DELTA, NORMAL]
    assert np.array_equal(cache.data, before) and not cache.contains([2])[0]


def test_encoder_zero_pages_are_cached_as_zeros():
    rng = np.random.default_rng(5)
    cache = PageCache(16)
    enc = XbzrleEncoder(cache)
    enc.encode([3], random_pages(1, rng))
    enc.cache_zero_pages([3, 4])
    assert not cache.get(cache.find([3, 4])).any()
    page = np.zeros((1, PAGE), np.uint8)
    page[0, 100] = 1
    r = enc.encode([4], page)
    assert r.kinds[0] == DELTA and r.payload == bytes([100, 1, 1])


def test_migration_iterations_reconstruct_the_image():
    """Pre-copy with XBZRLE over several iterations: the destination ends equal to the source."""
    rng = np.random.default_rng(7)
    n_pages = 96
    src = random_pages(n_pages, rng)
    dest = np.zeros_like(src)
    enc = XbzrleEncoder(PageCache(48, ways=4))  # smaller than the image: misses and refusals
    dirty = np.arange(n_pages)
    for it in range(6):
        enc.cache.new_generation()
        for start in range(0, len(dirty), 32):
            pn = dirty[start : start + 32]
            batch = src[pn].copy()  # the pipeline's snapshot
            apply_batch(dest, pn, batch, enc.encode(pn, batch))
        # the guest dirties a hot set hard and a few random pages lightly
        hot = np.arange(0, 24)
        src[hot] = changed_pages(src[hot], 0.02, rng)
        some = rng.choice(n_pages, 10, replace=False)
        src[some] = changed_pages(src[some], 0.3, rng)
        src[rng.choice(n_pages, 2)] = 0
        dirty = np.union1d(hot, np.union1d(some, np.flatnonzero(~(src == dest).all(axis=1))))
    pn = np.arange(n_pages)
    for start in range(0, n_pages, 32):  # stop-and-copy: everything left
        p = pn[start : start + 32]
        batch = src[p].copy()
        apply_batch(dest, p, batch, enc.encode(p, batch, last_stage=True))
    assert np.array_equal(dest, src)
    c = enc.counters
    assert c.pages > 0 and c.cache_miss > 0 and c.encoding_ratio_overall > 1
