"""Zero-page detection, the zstd batch codec, and the codec benchmark's output shape."""

import json

import numpy as np
import pytest

from agents.encodings.codec_bench import random_pages, run_codec_bench, text_pages
from agents.encodings.zero_pages import nonzero_mask, zero_mask
from agents.encodings.zstd_codec import ZstdBatchCodec

PAGE = 4096


def test_zero_pages_detected_exactly():
    rng = np.random.default_rng(0)
    pages = np.zeros((64, PAGE), np.uint8)
    # every position class of a single non-zero byte: first, last, inside a word, word edges
    for k, pos in enumerate([0, 1, 7, 8, 9, 2047, 4088, 4094, 4095]):
        pages[k, pos] = 1
    pages[20] = rng.integers(0, 256, PAGE, dtype=np.uint8)
    pages[21, 100] = 0x80
    expect = ~pages.astype(bool).any(axis=1)
    got = zero_mask(pages)
    assert got.dtype == bool and got.shape == (64,)
    assert np.array_equal(got, expect)
    assert np.array_equal(nonzero_mask(pages), ~expect)
    assert expect.sum() == 64 - 11


def test_zero_mask_shapes_and_views():
    assert zero_mask(np.zeros((0, PAGE), np.uint8)).shape == (0,)
    assert zero_mask(np.zeros(PAGE, np.uint8)).tolist() == [True]
    assert zero_mask(np.ones(PAGE, np.uint8)).tolist() == [False]
    image = np.zeros((10, PAGE), np.uint8)
    image[3, 5] = 9
    assert np.flatnonzero(~zero_mask(image[::2])).tolist() == []  # strided view: 0,2,4,6,8
    assert np.flatnonzero(~zero_mask(image[1::2])).tolist() == [1]  # rows 1,3,5,7,9
    odd = np.zeros((3, 100), np.uint8)  # not a multiple of 8 bytes
    odd[2, 99] = 1
    assert zero_mask(odd).tolist() == [True, True, False]


def test_zstd_random_pages_fall_back_to_raw():
    rng = np.random.default_rng(1)
    pages = random_pages(64, rng)
    codec = ZstdBatchCodec(level=1)
    payload, compressed = codec.compress(pages)
    assert compressed is False
    assert isinstance(payload, bytes) and payload == pages.tobytes()
    assert codec.ratio == pytest.approx(1.0)
    assert codec.decompress(payload, pages.nbytes) == pages.tobytes()
    raw = pages.tobytes()
    assert codec.compress(raw)[0] is raw  # bytes in, no copy


@pytest.mark.parametrize("level", [1, 3])
def test_zstd_text_roundtrip(level):
    rng = np.random.default_rng(level)
    pages = text_pages(32, rng)
    codec = ZstdBatchCodec(level=level)
    payload, compressed = codec.compress(pages)
    assert compressed and isinstance(payload, bytes)
    assert pages.nbytes / len(payload) > 2
    out = codec.decompress(payload, pages.nbytes)
    assert out == pages.tobytes()
    dest = np.empty_like(pages)
    codec.decompress_into(payload, dest)
    assert np.array_equal(dest, pages)
    s = codec.stats()
    assert s["batches"] == 1 and s["raw_batches"] == 0 and s["ratio"] > 2


def test_zstd_contexts_are_reused_across_batches():
    codec = ZstdBatchCodec()
    cctx, dctx = codec._cctx, codec._dctx
    zeros = np.zeros((16, PAGE), np.uint8)
    for _ in range(3):
        payload, compressed = codec.compress(zeros)
        assert compressed and len(payload) < 200
        assert codec.decompress(payload, zeros.nbytes) == zeros.tobytes()
    assert codec._cctx is cctx and codec._dctx is dctx


def test_zstd_threshold_and_errors():
    rng = np.random.default_rng(2)
    half = np.concatenate([random_pages(4, rng), np.zeros((4, PAGE), np.uint8)])
    assert ZstdBatchCodec(raw_threshold=0.97).compress(half)[1] is True  # ~50%: pays
    assert ZstdBatchCodec(raw_threshold=0.4).compress(half)[1] is False  # demands < 40%
    codec = ZstdBatchCodec()
    payload, _ = codec.compress(np.zeros((4, PAGE), np.uint8))
    with pytest.raises(ValueError):
        codec.decompress(payload, 4 * PAGE - 1)  # wrong raw length
    with pytest.raises(ValueError):
        codec.decompress(b"\x00" * 50, 4 * PAGE)  # not a zstd frame
    with pytest.raises(ValueError):
        codec.decompress(b"\x00" * 10, 5)  # longer than raw
    assert codec.compress(b"") == (b"", False)
    with pytest.raises(ValueError):
        ZstdBatchCodec(raw_threshold=0)


def test_codec_bench_smoke():
    out = run_codec_bench(seconds_per_case=0.01, batch_pages=8)
    json.dumps(out)
    cases = out["cases"]
    for name in [
        "zero_detect.zero_pages",
        "zstd1.compress.text",
        "zstd3.decompress.random",
        "xbzrle.encode.1pct",
        "xbzrle.decode.10pct",
        "xbzrle.encode.50pct",
    ]:
        assert cases[name]["mb_s"] > 0
    assert cases["zstd1.compress.random"]["compressed"] is False
    assert cases["xbzrle.encode.1pct"]["changed_bytes"] == pytest.approx(0.01, abs=0.004)
