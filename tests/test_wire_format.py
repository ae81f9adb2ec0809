"""Wire slots: layout, packing pages (zero pages as markers) and restoring them."""
from __future__ import annotations

import numpy as np
import pytest

from agents.datapath.wire_format import (
    ENC_NORMAL,
    ENC_ZERO,
    PAGE,
    PAGE_HEADER_BYTES,
    ZERO_MARKER_BYTES,
    SlotLayout,
    SlotView,
    pack_pages,
    restore_pages,
)

NPAGES = 512


def make_image(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (NPAGES, PAGE), dtype=np.uint8)
    if kind == "zero":
        img[:] = 0
    elif kind == "mixed":
        img[rng.random(NPAGES) < 0.4] = 0
        # Pages with a single non-zero byte at either end are not zero pages.
        img[10] = 0
        img[10, 0] = 1
        img[11] = 0
        img[11, -1] = 0x80
    return img


def ring_for(layout: SlotLayout, slots: int) -> np.ndarray:
    return np.zeros(slots * layout.slot_bytes, dtype=np.uint8)


@pytest.mark.parametrize("batch", [1, 7, 64, 256, 4096])
def test_layout_is_aligned_and_disjoint(batch):
    lay = SlotLayout(batch)
    assert lay.idx_off >= 16
    assert lay.enc_off >= lay.idx_off + 8 * batch and lay.enc_off % 64 == 0
    assert lay.len_off >= lay.enc_off + batch and lay.len_off % 64 == 0
    assert lay.payload_off >= lay.len_off + 4 * batch and lay.payload_off % PAGE == 0
    assert lay.slot_bytes >= lay.payload_off + batch * PAGE
    assert lay.slot_bytes % PAGE == 0


def test_slot_views_do_not_overlap_between_slots():
    lay = SlotLayout(8)
    ring = ring_for(lay, 3)
    views = [SlotView(ring, s, lay) for s in range(3)]
    for s, v in enumerate(views):
        v.set_header(s + 1, s, 1000 * s)
        v.idx[:] = s
        v.enc[:] = s
        v.lengths[:] = s
        v.payload[:] = s
    for s, v in enumerate(views):
        assert v.get_header() == (s + 1, s, 1000 * s)
        assert (v.idx == s).all() and (v.enc == s).all() and (v.lengths == s).all()
        assert (v.payload == s).all()
        assert len(v.payload) == lay.slot_bytes - lay.payload_off


def test_header_round_trip_large_values():
    lay = SlotLayout(4)
    v = SlotView(ring_for(lay, 1), 0, lay)
    v.set_header(0xFFFFFFFF, 0xABCD, (1 << 40) + 3)
    assert v.get_header() == (0xFFFFFFFF, 0xABCD, (1 << 40) + 3)


@pytest.mark.parametrize("kind", ["random", "zero", "mixed"])
@pytest.mark.parametrize("batch", [1, 33, 256])
def test_pack_then_restore_gives_identical_pages(kind, batch):
    src = make_image(kind)
    dst = np.full_like(src, 0xAA)  # stale contents, so zero pages must really be written
    lay = SlotLayout(batch)
    ring = ring_for(lay, 2)
    order = np.random.default_rng(1).permutation(NPAGES)  # pages in any order
    total_zero = total_normal = 0
    for i, start in enumerate(range(0, NPAGES, batch)):
        idx = order[start:start + batch]
        slot = SlotView(ring, i % 2, lay)
        st = pack_pages(src, idx, slot)
        assert st.normal + st.zero == len(idx)
        assert restore_pages(dst, slot) == len(idx)
        total_zero += st.zero
        total_normal += st.normal
    assert np.array_equal(dst, src)
    expect_zero = int((src.reshape(NPAGES, -1) == 0).all(axis=1).sum())
    assert total_zero == expect_zero
    assert total_normal == NPAGES - expect_zero


def test_zero_pages_are_counted_and_cost_header_plus_marker():
    src = make_image("mixed")
    zero = ~src.any(axis=1)
    assert not zero[10] and not zero[11]
    idx = np.arange(200)
    lay = SlotLayout(256)
    slot = SlotView(ring_for(lay, 1), 0, lay)
    st = pack_pages(src, idx, slot)
    nz = int(zero[:200].sum())
    assert nz > 0
    assert st.zero == nz and st.normal == 200 - nz
    assert st.wire_bytes == nz * (PAGE_HEADER_BYTES + ZERO_MARKER_BYTES) + (200 - nz) * (PAGE_HEADER_BYTES + PAGE)
    # Slot contents: header, encodings, lengths and a payload with only the normal pages, in order.
    n, flags, payload_len = slot.get_header()
    assert (n, flags, payload_len) == (200, 0, (200 - nz) * PAGE)
    assert np.array_equal(slot.idx[:200], idx)
    assert np.array_equal(slot.enc[:200], np.where(zero[:200], ENC_ZERO, ENC_NORMAL))
    assert np.array_equal(slot.lengths[:200], np.where(zero[:200], 0, PAGE))
    payload = slot.payload[:payload_len].reshape(-1, PAGE)
    assert np.array_equal(payload, src[:200][~zero[:200]])


def test_all_zero_batch_has_no_payload():
    src = make_image("zero")
    lay = SlotLayout(64)
    slot = SlotView(ring_for(lay, 1), 0, lay)
    st = pack_pages(src, np.arange(64), slot)
    assert (st.zero, st.normal) == (64, 0)
    assert st.wire_bytes == 64 * (PAGE_HEADER_BYTES + ZERO_MARKER_BYTES)
    assert slot.get_header() == (64, 0, 0)
    dst = np.ones_like(src)
    restore_pages(dst, slot)
    assert not dst[:64].any() and dst[64:].all()


def test_empty_batch():
    src = make_image("random")
    lay = SlotLayout(8)
    slot = SlotView(ring_for(lay, 1), 0, lay)
    st = pack_pages(src, np.empty(0, dtype=np.int64), slot)
    assert (st.normal, st.zero, st.wire_bytes) == (0, 0, 0)
    dst = src.copy()
    assert restore_pages(dst, slot) == 0
    assert np.array_equal(dst, src)


def test_restore_touches_only_the_batch_pages():
    src = make_image("mixed")
    dst = np.full_like(src, 7)
    idx = np.array([3, 100, 5, 499])
    lay = SlotLayout(16)
    slot = SlotView(ring_for(lay, 1), 0, lay)
    pack_pages(src, idx, slot)
    restore_pages(dst, slot)
    other = np.setdiff1d(np.arange(NPAGES), idx)
    assert np.array_equal(dst[idx], src[idx])
    assert (dst[other] == 7).all()


def test_packing_does_not_change_the_source():
    src = make_image("mixed")
    before = src.copy()
    lay = SlotLayout(64)
    slot = SlotView(ring_for(lay, 1), 0, lay)
    pack_pages(src, np.arange(64), slot)
    assert np.array_equal(src, before)


def _packed_slot(zero_every: int = 3):
    src = make_image("random")
    src[::zero_every] = 0
    lay = SlotLayout(16)
    slot = SlotView(ring_for(lay, 1), 0, lay)
    pack_pages(src, np.arange(16), slot)
    return src, slot


@pytest.mark.parametrize("delta_pages", [-2, -1, 1, 5])
def test_corrupted_payload_len_raises(delta_pages):
    src, slot = _packed_slot()
    n, flags, payload_len = slot.get_header()
    slot.set_header(n, flags, payload_len + delta_pages * PAGE)
    dst = np.zeros_like(src)
    with pytest.raises(ValueError, match="payload"):
        restore_pages(dst, slot)


def test_corrupted_encoding_byte_flipping_zero_to_normal_raises():
    src, slot = _packed_slot()
    slot.enc[0] = ENC_NORMAL  # page 0 was a zero page: one normal page too many
    with pytest.raises(ValueError):
        restore_pages(np.zeros_like(src), slot)


def test_payload_len_off_by_a_few_bytes_raises():
    src, slot = _packed_slot()
    n, flags, payload_len = slot.get_header()
    slot.set_header(n, flags, payload_len + 7)
    with pytest.raises(ValueError):
        restore_pages(np.zeros_like(src), slot)


def test_unknown_encoding_byte_raises():
    src, slot = _packed_slot()
    slot.enc[0] = 7  # page 0 was a zero page; payload_len is still consistent
    with pytest.raises(ValueError):
        restore_pages(np.full_like(src, 0xAA), slot)


def test_the_compiled_page_copies_match_numpy():
    """agents/datapath/_pagecopy.c: gather keeps the non-zero pages in batch order, scatter and
    clear write exactly the pages named, and a page number outside the image moves nothing."""
    from agents.datapath import _pagecopy
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, PAGE), dtype=np.uint8)
    image[[2, 5, 9]] = 0
    image[7, :-1] = 0  # non-zero only in its last byte
    idx = np.array([9, 7, 2, 30, 5, 1], dtype=np.int64)
    out, zero = np.zeros((len(idx), PAGE), np.uint8), np.zeros(len(idx), np.uint8)
    k, h = _pagecopy.gather(image, idx, out, zero)
    assert zero.tolist() == [1, 0, 1, 0, 1, 0] and k == 3
    assert (out[:k] == image[[7, 30, 1]]).all()
    assert h == _pagecopy.digest(out[:k])  # hashed as it copied: the same as hashing the result
    dst = np.full_like(image, 0xAA)
    _pagecopy.scatter(dst, idx[zero == 0], out)
    _pagecopy.clear(dst, idx[zero == 1])
    assert (dst[idx] == image[idx]).all() and (np.delete(dst, idx, axis=0) == 0xAA).all()
    with pytest.raises(ValueError, match="outside"):
        _pagecopy.scatter(dst, np.array([64], dtype=np.int64), out)


def test_the_compiled_digest_is_xxh3():
    """agents/datapath/_pagecopy.c digest is XXH3 64-bit (seed 0): the specification's value
    for "", and values taken from the xxhash package (python-xxhash 4.1.0, xxh3_64_intdigest)
    for lengths that take each path of the algorithm (1-3, 4-8, 17-128 bytes, long inputs
    with and without a partial stripe)."""
    from agents.datapath import _pagecopy
    assert _pagecopy.digest(b"") == 0x2D06800538D394C2
    assert _pagecopy.digest(b"abc") == 0x78AF5F94892F3950
    data = bytes(range(256)) * 20
    expected = {100: 0x004E4F921A64BD1C, 4096: 0xEB4B7C3707879151, 5000: 0x1B74BDA2C82A8C7A}
    assert {n: _pagecopy.digest(data[:n]) for n in expected} == expected


def test_packing_hashes_the_payload_it_copies_and_a_changed_byte_changes_the_checksum():
    """The digest pack_pages computes while copying is the payload's digest, so a batch sealed
    with it checks out at the receiver; any byte changed in the payload breaks it."""
    from agents.datapath.wire_format import digest
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (32, PAGE), dtype=np.uint8)
    image[[3, 11]] = 0
    layout = SlotLayout(32)
    slot = SlotView(np.zeros(layout.slot_bytes, dtype=np.uint8), 0, layout)
    st = pack_pages(image, np.arange(32), slot)
    assert st.payload_digest == digest(slot.payload[: st.normal * PAGE])
    slot.seal(st.payload_digest)
    assert slot.intact()
    for pos in rng.integers(0, st.normal * PAGE, 20):
        slot.payload[pos] ^= 0x40
        assert not slot.intact()
        slot.payload[pos] ^= 0x40
    assert slot.intact()
