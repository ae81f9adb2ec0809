"""Verification: does the destination hold exactly the source's memory?

Each side digests its own image page by page with MurmurHash3 (x64, 128
bit), so the two images are hashed in parallel in their own processes and
only digests cross between them.
"""
from __future__ import annotations

import mmh3
import numpy as np

SEED = 0x5EED


def page_digests(pages: np.ndarray) -> np.ndarray:
    """(n, 16) uint8: the 128-bit digest of every page."""
    mv = memoryview(np.ascontiguousarray(pages).reshape(-1))
    size = pages.shape[1]
    digest = mmh3.mmh3_x64_128_digest
    out = b"".join([digest(mv[i * size:(i + 1) * size], SEED) for i in range(len(pages))])
    return np.frombuffer(out, dtype=np.uint8).reshape(len(pages), 16)


def mismatched_pages(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Page numbers whose digests differ."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape[0]} vs {b.shape[0]} pages")
    return np.flatnonzero((a != b).any(axis=1))
