"""The layout of one batch in a wire slot, and packing/restoring pages.

A slot is a fixed-size piece of a shared-memory ring. It holds a header
(page count, flags, payload length), the page numbers, one encoding byte per
page, one length per page, and the payload. Like QEMU's stream, every page
costs a small header on the wire; a zero page costs its header and one marker
byte and no payload.

Encodings of a page: normal (the whole page, PAGE bytes of payload), zero (no
payload) and delta (an XBZRLE delta against the page the destination already
holds, `lengths[k]` bytes of payload plus QEMU's 3-byte delta header). The
payload holds the normal pages back to back, in batch order, then the deltas
back to back, in batch order; so a receiver restores all normal pages with
one scatter and all deltas with one call of the XBZRLE decoder.

With `FLAG_ZSTD` in the header the payload is one zstd frame of that layout
(multifd-zstd: the page headers stay outside, the data is compressed), and
its length in the header is the frame's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from agents.encodings import xbzrle
from agents.encodings.zero_pages import zero_mask

PAGE = 4096
ENC_NORMAL, ENC_ZERO, ENC_DELTA = 0, 1, 2
FLAG_ZSTD = 1  # header flag: the payload is one zstd frame
PAGE_HEADER_BYTES = 8  # page number + flags, as in QEMU's RAM_SAVE_FLAG_* stream
ZERO_MARKER_BYTES = 1
DELTA_HEADER_BYTES = 3  # QEMU's ENCODING_FLAG_XBZRLE byte + 16-bit length of the delta
ZSTD_HEADER_BYTES = 4  # the compressed size of a batch (multifd's packet field)
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
    """What one batch carries. Page counts are real pages; bytes real bytes."""
    normal: int = 0  # sent whole, uncompressed
    zero: int = 0
    compressed: int = 0  # sent whole inside a zstd frame
    delta: int = 0  # sent as XBZRLE deltas
    unchanged: int = 0  # equal to what the destination holds: left out (QEMU skips them)
    overflow: int = 0  # deltas that did not fit their budget, sent whole
    raw_bytes: int = 0  # PAGE per non-zero page in the batch
    payload_bytes: int = 0  # what those pages cost on the wire: payload and delta headers
    wire_bytes: int = 0  # all of it: page headers, markers, payload
    encode_s: float = 0.0  # measured thread CPU seconds of compression (zstd, XBZRLE)

    @property
    def pages(self) -> int:
        """Pages in the batch (unchanged pages are not)."""
        return self.normal + self.zero + self.compressed + self.delta


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
    return PackStats(normal=k, zero=nz, raw_bytes=k * PAGE, payload_bytes=k * PAGE, wire_bytes=wire)


class Unpacker:
    """A receiver's decoding state: one zstd decompression context, reused for
    every batch, and the measured CPU time of decoding (zstd and deltas)."""

    def __init__(self) -> None:
        import zstandard
        self._dctx = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError
        self.decode_s = 0.0

    def decompress(self, frame, raw_len: int) -> np.ndarray:
        try:
            out = self._dctx.decompress(frame, max_output_size=raw_len)
        except self._error as exc:
            raise ValueError(f"corrupt zstd frame: {exc}") from None
        if len(out) != raw_len:
            raise ValueError(f"zstd frame decompressed to {len(out)} bytes; the page lengths say {raw_len}")
        return np.frombuffer(out, dtype=np.uint8)

    def take_decode_s(self) -> float:
        """CPU seconds spent decoding since the last call."""
        s, self.decode_s = self.decode_s, 0.0
        return s


def restore_pages(image: np.ndarray, slot: SlotView, unpacker: Unpacker | None = None) -> int:
    """Write the pages of `slot` into `image`; returns the number of pages.

    Deltas apply to the pages `image` holds (the destination's current
    contents). The batch is checked before anything is written.
    """
    n, flags, payload_len = slot.get_header()
    if n > slot.batch_pages:
        raise ValueError(f"batch says {n} pages; a slot holds at most {slot.batch_pages}")
    if flags & ~FLAG_ZSTD:
        raise ValueError(f"batch has unknown flags {flags:#x}")
    idx = slot.idx[:n]
    enc = slot.enc[:n]
    normal = enc == ENC_NORMAL
    delta = enc == ENC_DELTA
    zero = enc == ENC_ZERO
    k = int(np.count_nonzero(normal))
    nd = int(np.count_nonzero(delta))
    if k + nd + int(np.count_nonzero(zero)) != n:
        raise ValueError(f"batch has unknown page encodings: {sorted(set(enc.tolist()) - {ENC_NORMAL, ENC_ZERO, ENC_DELTA})}")
    dlens = slot.lengths[:n][delta]
    if nd and (dlens.max() > PAGE or dlens.min() == 0):
        raise ValueError("a delta page says a length of 0 or more than a page")
    raw_len = k * PAGE + int(dlens.sum())
    if len(idx) and (idx.min() < 0 or idx.max() >= len(image)):
        raise ValueError(f"batch names pages outside the image of {len(image)} pages")
    if flags & FLAG_ZSTD:
        if not 0 < payload_len < raw_len:
            raise ValueError(f"zstd frame of {payload_len} bytes for {raw_len} raw bytes")
        u = unpacker or Unpacker()
        t0 = time.thread_time()
        raw = u.decompress(slot.payload[:payload_len], raw_len)
        u.decode_s += time.thread_time() - t0
    else:
        if payload_len != raw_len:
            raise ValueError(f"batch of {n} pages says {payload_len} payload bytes for {k} normal pages "
                             f"and {raw_len - k * PAGE} delta bytes")
        raw = slot.payload[:raw_len]
    if nd:
        # Deltas first: decode_batch validates all of them before writing any page.
        t0 = time.thread_time()
        xbzrle.decode_batch(raw[k * PAGE: raw_len], dlens.astype(np.int32), image, page_index=idx[delta])
        if unpacker is not None:
            unpacker.decode_s += time.thread_time() - t0
    if k:
        image[idx[normal]] = raw[: k * PAGE].reshape(k, PAGE)
    if k + nd < n:
        image[idx[zero]] = 0
    return n
