"""Verification: does the destination hold exactly the source's memory?

Each side digests its own image with MurmurHash3 (x64, 128 bit), in its own
process, so the two images are hashed in parallel and only digests cross.
Pages are hashed in runs of `CHUNK_PAGES` (one call per 64 KiB keeps Python's
per-call cost out of the way); where a run's digests differ, its pages are
digested one by one to name exactly the pages that differ.
"""
from __future__ import annotations

import mmh3
import numpy as np

SEED = 0x5EED
CHUNK_PAGES = 16


def _digests(flat: memoryview, unit: int, count: int) -> np.ndarray:
    digest = mmh3.mmh3_x64_128_digest
    out = b"".join([digest(flat[i * unit:(i + 1) * unit], SEED) for i in range(count)])
    return np.frombuffer(out, dtype=np.uint8).reshape(count, 16)


def chunk_digests(pages: np.ndarray, chunk: int = CHUNK_PAGES) -> np.ndarray:
    """(ceil(n / chunk), 16) uint8: the digest of every run of `chunk` pages."""
    n, size = pages.shape
    flat = memoryview(np.ascontiguousarray(pages).reshape(-1))
    full = n // chunk
    d = _digests(flat, chunk * size, full)
    if n % chunk:
        tail = _digests(flat[full * chunk * size:], (n % chunk) * size, 1)
        d = np.concatenate([d, tail])
    return d


def page_digests(pages: np.ndarray) -> np.ndarray:
    """(n, 16) uint8: the digest of every page."""
    return _digests(memoryview(np.ascontiguousarray(pages).reshape(-1)), pages.shape[1], len(pages))


def chunk_pages(chunks: np.ndarray, npages: int, chunk: int = CHUNK_PAGES) -> np.ndarray:
    """The page numbers covered by the given chunk numbers."""
    if len(chunks) == 0:
        return np.empty(0, dtype=np.int64)
    idx = (np.asarray(chunks)[:, None] * chunk + np.arange(chunk)[None, :]).reshape(-1)
    return idx[idx < npages]


def mismatched(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row numbers whose digests differ."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape[0]} vs {b.shape[0]} digests")
    return np.flatnonzero((a != b).any(axis=1))
