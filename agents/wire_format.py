"""The layout of one batch in a wire slot, and packing/restoring pages.

A slot is a fixed-size piece of a shared-memory ring. It holds a header
(page count, payload length), the page numbers, one encoding byte per page,
one length per page, and the payload: the encoded pages back to back, in page
order. Like QEMU's stream, every page costs a small header on the wire; a
zero page costs its header and one marker byte and no payload.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.zero_pages import zero_mask

PAGE = 4096
ENC_NORMAL, ENC_ZERO = 0, 1
PAGE_HEADER_BYTES = 8  # page number + flags, as in QEMU's RAM_SAVE_FLAG_* stream
ZERO_MARKER_BYTES = 1
_HDR = 16  # u32 npages, u32 flags, u64 payload_len


def _align(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class SlotLayout:
    batch_pages: int

    @property
    def idx_off(self) -> int:
        return _HDR

    @property
    def enc_off(self) -> int:
        return _align(self.idx_off + 8 * self.batch_pages)

    @property
    def len_off(self) -> int:
        return _align(self.enc_off + self.batch_pages)

    @property
    def payload_off(self) -> int:
        return _align(self.len_off + 4 * self.batch_pages, PAGE)

    @property
    def slot_bytes(self) -> int:
        # Room for an encoding that is a little larger than raw (headers of a codec).
        return self.payload_off + self.batch_pages * PAGE + PAGE


class SlotView:
    """Typed views of one slot of a ring."""

    def __init__(self, ring: np.ndarray, slot: int, layout: SlotLayout) -> None:
        base = slot * layout.slot_bytes
        raw = ring[base: base + layout.slot_bytes]
        b = layout.batch_pages
        self.header = raw[:_HDR].view(np.uint64)  # [npages | flags<<32, payload_len]
        self.idx = raw[layout.idx_off: layout.idx_off + 8 * b].view(np.int64)
        self.enc = raw[layout.enc_off: layout.enc_off + b]
        self.lengths = raw[layout.len_off: layout.len_off + 4 * b].view(np.uint32)
        self.payload = raw[layout.payload_off:]
        self.batch_pages = b

    def set_header(self, npages: int, flags: int, payload_len: int) -> None:
        self.header[0] = npages | (flags << 32)
        self.header[1] = payload_len

    def get_header(self) -> tuple[int, int, int]:
        h0 = int(self.header[0])
        return h0 & 0xFFFFFFFF, h0 >> 32, int(self.header[1])


@dataclass
class PackStats:
    normal: int = 0
    zero: int = 0
    wire_bytes: int = 0


def pack_pages(image: np.ndarray, idx: np.ndarray, slot: SlotView) -> PackStats:
    """Gather pages `idx` of `image` into `slot`: zero pages as markers, others raw.

    The gather lands straight in the payload (one copy); only when there are
    zero pages are the others moved up to close the gaps.
    """
    n = len(idx)
    gathered = slot.payload[: n * PAGE].reshape(n, PAGE)
    np.take(image, idx, axis=0, out=gathered)
    zero = zero_mask(gathered)
    slot.idx[:n] = idx
    slot.enc[:n] = np.where(zero, ENC_ZERO, ENC_NORMAL)
    nz = int(np.count_nonzero(zero))
    k = n - nz
    if nz:
        gathered[:k] = gathered[~zero]  # fancy indexing copies first, so the overlap is safe
    slot.lengths[:n] = np.where(zero, 0, PAGE)
    slot.set_header(n, 0, k * PAGE)
    wire = n * PAGE_HEADER_BYTES + nz * ZERO_MARKER_BYTES + k * PAGE
    return PackStats(normal=k, zero=nz, wire_bytes=wire)


def restore_pages(image: np.ndarray, slot: SlotView) -> int:
    """Write the pages of `slot` into `image`; returns the number of pages."""
    n, _flags, payload_len = slot.get_header()
    if n > slot.batch_pages:
        raise ValueError(f"batch says {n} pages; a slot holds at most {slot.batch_pages}")
    idx = slot.idx[:n]
    enc = slot.enc[:n]
    normal = enc == ENC_NORMAL
    k = int(normal.sum())
    if payload_len != k * PAGE:
        raise ValueError(f"batch of {n} pages says {payload_len} payload bytes for {k} normal pages")
    if k + int(np.count_nonzero(enc == ENC_ZERO)) != n:
        raise ValueError(f"batch has page encodings other than normal and zero: {sorted(set(enc.tolist()))}")
    if k:
        image[idx[normal]] = slot.payload[: k * PAGE].reshape(k, PAGE)
    if k < n:
        image[idx[enc == ENC_ZERO]] = 0
    return n
