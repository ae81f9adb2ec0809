"""XBZRLE codec: wire format, round trips, budgets, malformed input, batches,
and the compiled kernels against the numpy/pure-Python fallback."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.encodings import xbzrle
from agents.encodings.codec_bench import changed_pages, random_pages

PAGE = 4096
BIG = 1 << 30  # a budget nothing exceeds


@pytest.fixture(params=["c", "py"])
def impl(request, monkeypatch):
    """Run the public API on the compiled kernels, then on the fallback."""
    if request.param == "c":
        if not xbzrle.HAVE_C:
            pytest.fail("agents.encodings._xbzrle is not built (pip install -e . builds it)")
    else:
        monkeypatch.setattr(xbzrle, "_c", None)
    return request.param


def leb(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def roundtrip(old: np.ndarray, new: np.ndarray, budget: int = BIG) -> bytes:
    enc = xbzrle.encode(old, new, budget)
    assert enc is not None
    page = bytearray(old.tobytes())
    xbzrle.decode(enc, page)
    assert bytes(page) == new.tobytes()
    return enc


def test_c_extension_is_built():
    assert xbzrle.HAVE_C


@pytest.mark.parametrize("density", [0.0, 0.01, 0.10, 0.50, 1.0])
def test_roundtrip_at_every_density(impl, density):
    rng = np.random.default_rng(int(density * 100))
    old = random_pages(8, rng)
    for scattered in (True, False):
        if scattered:
            new = changed_pages(old, density, rng)
        else:  # independent bytes: the most runs
            new = old.copy()
            m = rng.random(old.shape) < density
            new[m] ^= rng.integers(1, 256, int(m.sum()), dtype=np.uint8)
        for o, n in zip(old, new):
            enc = roundtrip(o, n)
            small = xbzrle.encode(o, n)  # default budget: one page
            assert small == (enc if len(enc) <= PAGE else None)


def test_equal_pages_encode_to_nothing(impl):
    page = np.arange(PAGE, dtype=np.uint32).astype(np.uint8)
    assert xbzrle.encode(page, page.copy()) == b""
    assert xbzrle.encode(page, page.copy(), 0) == b""
    buf = bytearray(page.tobytes())
    xbzrle.decode(b"", buf)
    assert bytes(buf) == page.tobytes()


def test_all_different(impl):
    old = np.zeros(PAGE, np.uint8)
    new = np.full(PAGE, 7, np.uint8)
    enc = roundtrip(old, new)
    assert enc == b"\x00" + leb(PAGE) + new.tobytes()  # 0x00 0x80 0x20 + page
    assert xbzrle.encode(old, new) is None  # 4099 bytes > one page
    assert xbzrle.encode(old, new, PAGE + 3) == enc


def test_first_and_last_byte(impl):
    old = np.zeros(PAGE, np.uint8)
    first = old.copy()
    first[0] = 0xAB
    assert roundtrip(old, first) == b"\x00\x01\xab"
    last = old.copy()
    last[-1] = 0xCD
    assert roundtrip(old, last) == leb(PAGE - 1) + b"\x01\xcd" == b"\xff\x1f\x01\xcd"
    both = first.copy()
    both[-1] = 0xCD
    assert roundtrip(old, both) == b"\x00\x01\xab" + leb(PAGE - 2) + b"\x01\xcd"


def test_known_vector(impl):
    old = np.zeros(PAGE, np.uint8)
    new = old.copy()
    new[5:8] = [1, 2, 3]
    new[200] = 9
    assert roundtrip(old, new) == b"\x05\x03\x01\x02\x03" + leb(192) + b"\x01\x09"
    assert leb(192) == b"\xc0\x01"


def test_alternating_bytes(impl):
    old = np.zeros(PAGE, np.uint8)
    new = old.copy()
    new[::2] = 0xFF
    enc = roundtrip(old, new)
    # (0, 1, ff) then 2047 x (1, 1, ff)
    assert enc == b"\x00\x01\xff" + b"\x01\x01\xff" * (PAGE // 2 - 1)
    assert xbzrle.encode(old, new) is None
    new2 = old.copy()
    new2[1::2] = 0x11  # starts with an unchanged byte, ends on a change
    assert roundtrip(old, new2) == b"\x01\x01\x11" * (PAGE // 2)


def test_changed_bytes_are_the_new_bytes(impl):
    old = np.full(64, 0x55, np.uint8)
    new = old.copy()
    new[10:12] = [0x00, 0xAA]
    assert xbzrle.encode(old, new) == b"\x0a\x02\x00\xaa"


def test_non_page_sizes_and_buffers(impl):
    rng = np.random.default_rng(3)
    for size in (1, 7, 8, 9, 31, 33, 100, 8192):
        old = rng.integers(0, 256, size, dtype=np.uint8)
        new = changed_pages(old.reshape(1, -1), 0.2, rng).reshape(-1)
        enc = xbzrle.encode(old.tobytes(), bytearray(new.tobytes()), BIG)
        page = bytearray(old.tobytes())
        xbzrle.decode(enc, page)
        assert bytes(page) == new.tobytes()
        # a numpy page decodes in place too
        arr = old.copy()
        xbzrle.decode(memoryview(enc), arr)
        assert np.array_equal(arr, new)


def test_length_mismatch_and_bad_budget(impl):
    with pytest.raises(ValueError):
        xbzrle.encode(b"abc", b"abcd")
    with pytest.raises(ValueError):
        xbzrle.encode(b"abc", b"abd", -1)


MALFORMED = {
    "truncated LEB128 (zero run)": b"\x80",
    "truncated LEB128 (changed run)": b"\x00\x80",
    "missing changed run length": b"\x05",
    "truncated changed bytes": b"\x00\x05ab",
    "zero-length changed run": b"\x00\x00",
    "zero-length changed run later": b"\x00\x01a\x03\x00",
    "zero unchanged run after the start": b"\x00\x01a\x00\x01b",
    "changed run past the end": b"\xff\x1f\x02ab",
    "unchanged run past the end": leb(PAGE + 1) + b"\x01a",
    "pairs run past the end": (leb(4000) + b"\x01a") + (leb(100) + b"\x01b"),
    "LEB128 too long": b"\x80\x80\x01\x01a",
    "LEB128 too long (changed run)": b"\x00\x81\x80\x00" + b"a",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_raises_and_leaves_page_untouched(impl, name):
    delta = MALFORMED[name]
    page = bytearray(range(256)) * (PAGE // 256)
    before = bytes(page)
    with pytest.raises(ValueError):
        xbzrle.decode(delta, page)
    assert bytes(page) == before


def test_valid_edge_deltas(impl):
    page = bytearray(PAGE)
    xbzrle.decode(leb(PAGE - 1) + b"\x01z", page)  # last byte exactly
    assert page[-1] == ord("z")
    page = bytearray(PAGE)
    xbzrle.decode(b"\x00" + leb(PAGE) + b"q" * PAGE, page)  # whole page
    assert bytes(page) == b"q" * PAGE
    page = bytearray(PAGE)
    xbzrle.decode(b"\x80\x00\x01x", page)  # non-canonical 2-byte LEB128 zero is accepted
    assert page[0] == ord("x")


# -- property-based -----------------------------------------------------------


@st.composite
def page_pairs(draw, max_size=512):
    size = draw(st.integers(1, max_size))
    old = draw(st.binary(min_size=size, max_size=size))
    # a few random edits: runs of new bytes at random places
    new = bytearray(old)
    for _ in range(draw(st.integers(0, 12))):
        start = draw(st.integers(0, size - 1))
        run = draw(st.binary(min_size=1, max_size=min(40, size - start)))
        new[start : start + len(run)] = run
    return old, bytes(new)


@settings(max_examples=300, deadline=None)
@given(page_pairs(), st.integers(0, 1100))
def test_budget_is_never_exceeded(pair, budget):
    old, new = pair
    full = xbzrle._py_encode(old, new, BIG)
    for enc in (xbzrle._py_encode(old, new, budget), xbzrle.encode(old, new, budget)):
        if len(full) <= budget:
            assert enc == full
        else:
            assert enc is None
    page = bytearray(old)
    xbzrle._py_decode(full, page)
    assert bytes(page) == new
    page = bytearray(old)
    xbzrle.decode(full, page)
    assert bytes(page) == new


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([16, 128, 200, PAGE, 20000]))
def test_decoders_agree_on_arbitrary_input(delta, size):
    """C and fallback decoders accept and reject the same deltas, with the same result."""
    base = bytes(range(256)) * (size // 256 + 1)
    results = []
    for dec in (xbzrle.decode, xbzrle._py_decode):
        page = bytearray(base[:size])
        try:
            dec(delta, page)
            results.append(bytes(page))
        except ValueError:
            assert page == base[:size]
            results.append("ValueError")
    assert results[0] == results[1]


# -- batches -------------------------------------------------------------------


def mixed_batch(rng, n=24):
    old = random_pages(n, rng)
    new = old.copy()
    densities = [0.0, 0.001, 0.01, 0.1, 0.5, 1.0]
    for k in range(n):
        d = densities[k % len(densities)]
        new[k] = changed_pages(old[k : k + 1], d, rng)[0]
    new[3] = rng.integers(0, 256, PAGE, dtype=np.uint8)  # overflows
    return old, new


@pytest.mark.parametrize("budget", [0, 100, 1000, PAGE, 2 * PAGE])
def test_batch_agrees_with_single_pages(impl, budget):
    rng = np.random.default_rng(budget)
    old, new = mixed_batch(rng)
    payload, lengths = xbzrle.encode_batch(old, new, budget)
    assert lengths.dtype == np.int32 and len(lengths) == len(old)
    singles = [xbzrle.encode(o, n, budget) for o, n in zip(old, new)]
    assert lengths.tolist() == [xbzrle.OVERFLOW if s is None else len(s) for s in singles]
    assert payload == b"".join(s for s in singles if s is not None)
    # decode: pages that fit become new, overflowed pages are left alone
    out = old.copy()
    xbzrle.decode_batch(payload, lengths, out)
    fit = lengths >= 0
    assert np.array_equal(out[fit], new[fit])
    assert np.array_equal(out[~fit], old[~fit])


def test_batch_default_budget_is_page(impl):
    rng = np.random.default_rng(5)
    old, new = mixed_batch(rng)
    _, lengths = xbzrle.encode_batch(old, new)
    assert lengths.max() <= PAGE and (lengths == -1).any()


def test_batch_indices_and_update_old(impl):
    rng = np.random.default_rng(9)
    cache = random_pages(16, rng)
    image = random_pages(40, rng)
    slots = np.array([3, 0, 15, 7, 7])
    rows = np.array([10, 2, 39, 5, 6])
    # make the image rows close to their cache slots
    for s, r in zip(slots[:4], rows[:4]):
        image[r] = changed_pages(cache[s : s + 1], 0.02, rng)[0]
    before = cache.copy()
    payload, lengths = xbzrle.encode_batch(cache, image, old_index=slots, new_index=rows)
    expect = []
    for s, r in zip(slots, rows):
        expect.append(xbzrle.encode(before[s], image[r]))
    assert lengths.tolist() == [-1 if e is None else len(e) for e in expect]
    assert payload == b"".join(e for e in expect if e is not None)
    assert np.array_equal(cache, before)  # not updated without update_old

    # update_old: each slot takes its new content after being encoded; slot 7
    # is hit twice, the second time against the first one's content
    p2, l2 = xbzrle.encode_batch(cache, image, old_index=slots, new_index=rows, update_old=True)
    seq = before.copy()
    expect = []
    for s, r in zip(slots, rows):
        expect.append(xbzrle.encode(seq[s], image[r]))
        seq[s] = image[r]
    assert l2.tolist() == [-1 if e is None else len(e) for e in expect]
    assert p2 == b"".join(e for e in expect if e is not None)
    assert np.array_equal(cache, seq)

    # receiver side: apply into a destination image by page index
    dest = random_pages(50, rng)
    targets = np.array([20, 21, 22, 23, 24])
    dest[targets] = before[slots]
    dest_before = dest.copy()
    xbzrle.decode_batch(payload, lengths, dest, page_index=targets)
    for k, t in enumerate(targets):
        want = image[rows[k]] if lengths[k] >= 0 else dest_before[t]
        assert np.array_equal(dest[t], want)
    others = np.setdiff1d(np.arange(50), targets)
    assert np.array_equal(dest[others], dest_before[others])


def test_batch_index_out_of_range(impl):
    pages = np.zeros((4, PAGE), np.uint8)
    with pytest.raises(IndexError):
        xbzrle.encode_batch(pages, pages, old_index=np.array([0, 4]), new_index=np.array([0, 1]))
    with pytest.raises(IndexError):
        xbzrle.decode_batch(b"", np.array([0]), pages, page_index=np.array([-1]))


def test_batch_malformed_leaves_pages_untouched(impl):
    rng = np.random.default_rng(11)
    old = random_pages(3, rng)
    new = changed_pages(old, 0.01, rng)
    payload, lengths = xbzrle.encode_batch(old, new)
    for bad_payload, bad_lengths in [
        (payload[:-1], lengths),  # short payload
        (payload + b"\x00", lengths),  # trailing garbage
        (payload[: lengths[0]] + b"\x00\x00" + payload[lengths[0] :], lengths + np.array([0, 2, 0])),
    ]:
        out = old.copy()
        with pytest.raises(ValueError):
            xbzrle.decode_batch(bad_payload, bad_lengths.astype(np.int32), out)
        assert np.array_equal(out, old)


def test_c_and_fallback_batches_identical(monkeypatch):
    rng = np.random.default_rng(21)
    old, new = mixed_batch(rng, n=36)
    c_out = xbzrle.encode_batch(old, new, 2000)
    monkeypatch.setattr(xbzrle, "_c", None)
    py_out = xbzrle.encode_batch(old, new, 2000)
    assert c_out[0] == py_out[0]
    assert np.array_equal(c_out[1], py_out[1])
