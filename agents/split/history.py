"""The memory access history of S-memV (§IV-B, Fig. 4) and its chunk history (§IV-C, Fig. 5).

The guest's vCPUs set an access bit per page (the EPT accessed bit; here a
packed bitmap, bit `p % 8` of byte `p // 8`, little bit order, as KVM's
dirty bitmaps). The host collects the bitmap periodically and resets it.
Each page keeps an 8-bit history: a collection ORs the access bit into the
most significant bit (bit 7) -- several collections accumulate there over
an aging period -- and at the end of the period the history shifts right
by one bit. So bit 7 says "accessed in the current period", bit 6 "in the
previous one", and so on; a larger value means more recently used (LRU
approximation by aging).

The chunk history is the bitwise OR of the histories of the chunk's pages.
OR commutes with the shift and with setting bit 7, so it is updated
directly on every collection and aging (the paper's optimisation) and
always equals the OR of its pages' histories.

Shapes: `npages` pages, chunks of `chunk_pages` contiguous pages (the last
one may be shorter); histories are uint8 arrays of shape (npages,) and
(nchunks,).
"""
from __future__ import annotations

import numpy as np

MSB = np.uint8(0x80)
BLOCK_PAGES = 1 << 22  # pages per collection block: keeps the temporaries in cache-sized pieces


def nchunks_of(npages: int, chunk_pages: int) -> int:
    """Number of chunks covering `npages` pages (the last one may be partial)."""
    if chunk_pages <= 0:
        raise ValueError(f"chunk_pages must be positive, got {chunk_pages}")
    return -(-npages // chunk_pages)


def bitmap_bytes(npages: int) -> int:
    """Bytes of a packed access bitmap for `npages` pages (whole 64-bit words)."""
    return -(-npages // 64) * 8


def mark_accessed(bitmap: np.ndarray, pages: np.ndarray) -> None:
    """Set the access bits of `pages` (int array of page numbers) in a packed bitmap (the vCPU's side)."""
    pages = np.asarray(pages, dtype=np.int64)
    np.bitwise_or.at(bitmap, pages >> 3, (np.uint8(1) << (pages & 7).astype(np.uint8)))


def chunk_or(values: np.ndarray, chunk_pages: int) -> np.ndarray:
    """Bitwise OR of `values` (uint8, one per page) over each chunk: shape (nchunks,)."""
    n = values.shape[0]
    full = n // chunk_pages
    out = np.empty(nchunks_of(n, chunk_pages), dtype=np.uint8)
    if full:
        out[:full] = np.bitwise_or.reduce(values[: full * chunk_pages].reshape(full, chunk_pages), axis=1)
    if full < out.shape[0]:
        out[full] = np.bitwise_or.reduce(values[full * chunk_pages:])
    return out


class AccessHistory:
    """Per-page 8-bit aging history and per-chunk OR history.

    `page`: uint8 (npages,); `chunk`: uint8 (nchunks,). Errors: ValueError
    for a non-positive chunk size or page count.
    """

    def __init__(self, npages: int, chunk_pages: int) -> None:
        if npages <= 0:
            raise ValueError(f"npages must be positive, got {npages}")
        self.npages = npages
        self.chunk_pages = chunk_pages
        self.page = np.zeros(npages, dtype=np.uint8)
        self.chunk = np.zeros(nchunks_of(npages, chunk_pages), dtype=np.uint8)

    def collect(self, bitmap: np.ndarray) -> int:
        """Fold a packed access bitmap (uint8, `bitmap_bytes(npages)` bytes) into
        bit 7 of every page and chunk history, then reset the bitmap (the
        KVM module's traversal of EPT). Returns the number of accessed pages."""
        block = max(1, BLOCK_PAGES // (8 * self.chunk_pages)) * 8 * self.chunk_pages  # whole bytes, whole chunks
        accessed = 0
        for start in range(0, self.npages, block):
            accessed += self._collect_block(bitmap, start, min(self.npages, start + block))
        bitmap[:] = 0
        return accessed

    def _collect_block(self, bitmap: np.ndarray, start: int, stop: int) -> int:
        packed = bitmap[start >> 3: -(-stop // 8)]  # bits past npages in the last byte stay 0 (mark_accessed)
        if not packed.any():
            return 0
        bits = np.unpackbits(packed, bitorder="little")[: stop - start]
        np.left_shift(bits, 7, out=bits)
        np.bitwise_or(self.page[start:stop], bits, out=self.page[start:stop])
        c0 = start // self.chunk_pages
        touched = chunk_or(bits, self.chunk_pages)
        self.chunk[c0: c0 + touched.shape[0]] |= touched
        return int(np.bitwise_count(packed).sum(dtype=np.int64))

    def age(self) -> None:
        """End of an aging period: shift every history right by one bit."""
        np.right_shift(self.page, 1, out=self.page)
        np.right_shift(self.chunk, 1, out=self.chunk)

    def restore(self, page: np.ndarray) -> None:
        """Adopt page histories received with the migrated pages (main host side); chunks recomputed."""
        self.page[:] = page
        self.chunk[:] = chunk_or(self.page, self.chunk_pages)
