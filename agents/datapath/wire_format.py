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

A page may also be compressed (zstd, each page its own frame of
`lengths[k]` bytes, plus a 4-byte length on the wire as QEMU's compressed
pages carry). The frames go between the normal pages and the deltas, in
batch order; `FLAG_ZSTD` in the header says the batch holds some. A frame
per page keeps a page's ratio its own, whatever the batch size
(agents/encodings/zstd_codec.py).

Every batch carries a checksum of what the receiver reads (page numbers,
encodings, lengths and payload), set by the sender after packing and
checked by the receiver before it writes a byte (`batch_checksum`): a batch
damaged in transit is detected and sent again, never restored. It is XXH3
(xxHash's 64-bit digest) of each part, combined by one more XXH3, computed
in agents/datapath/_pagecopy.c without the GIL; packing plain pages computes
the payload's digest as it copies them (one read of the bytes on the
sender). mmh3 x64-128 (5 GiB/s, holding the GIL: 0.5 us per page on each
side, the largest share of a 1 GiB run's saturation) is the fallback when
the extension is not built.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import mmh3
import numpy as np

from agents.encodings import xbzrle

try:
    from agents.datapath import _pagecopy
except ImportError:  # not built: numpy does the copies, holding the GIL
    _pagecopy = None
# A build from before the checksum moved into C (no digest; gather returns a count only)
# keeps working, with mmh3, until `python setup.py build_ext --inplace` is run again.
_C_DIGEST = _pagecopy is not None and hasattr(_pagecopy, "digest")
from agents.encodings.zero_pages import zero_mask

PAGE = 4096
ENC_NORMAL, ENC_ZERO, ENC_DELTA, ENC_ZSTD = 0, 1, 2, 3
FLAG_ZSTD = 1  # header flag: the batch holds zstd page frames
PAGE_HEADER_BYTES = 8  # page number + flags, as in QEMU's RAM_SAVE_FLAG_* stream
ZERO_MARKER_BYTES = 1
DELTA_HEADER_BYTES = 3  # QEMU's ENCODING_FLAG_XBZRLE byte + 16-bit length of the delta
ZSTD_HEADER_BYTES = 4  # the compressed size of a page (QEMU's compressed-page length field)
_HDR = 24  # u32 npages, u32 flags, u64 payload_len, u64 checksum


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
        self.header = raw[:_HDR].view(np.uint64)  # [npages | flags<<32, payload_len, checksum]
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

    def seal(self, payload_digest: int | None = None) -> None:
        """Store the batch's checksum in its header (the sender, once packed). `payload_digest`:
        the payload's digest if packing already computed it (PackStats.payload_digest)."""
        self.header[2] = batch_checksum(self, payload_digest)

    def intact(self) -> bool:
        """Does the batch still match the checksum its sender stored?"""
        return int(self.header[2]) == batch_checksum(self)


def batch_checksum(slot: SlotView, payload_digest: int | None = None) -> int:
    """A 64-bit checksum of a batch as the receiver reads it: its header's first two
    words, page numbers, encodings, lengths and payload (a damaged count is caught too).
    `payload_digest`: `digest` of the payload, when the caller has it already."""
    n = min(int(slot.header[0]) & 0xFFFFFFFF, slot.batch_pages)
    payload_len = min(int(slot.header[1]), len(slot.payload))
    if payload_digest is None:
        payload_digest = digest(slot.payload[:payload_len])
    parts = (slot.header[:2], slot.idx[:n], slot.enc[:n], slot.lengths[:n])
    digests = [digest(p) for p in parts] + [payload_digest]
    return digest(np.array(digests, dtype=np.uint64))


def _mmh3_digest(buf) -> int:
    return int.from_bytes(mmh3.mmh3_x64_128_digest(memoryview(buf).cast("B").toreadonly())[:8], "little")


def digest(buf) -> int:
    """64-bit digest of a contiguous buffer (numpy array, bytes): XXH3, seed 0, without the
    GIL; mmh3's first 64 bits when the compiled extension is missing."""
    if not _C_DIGEST:
        return _mmh3_digest(buf)
    return _pagecopy.digest(buf)


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
    model_us: float = 0.0  # the cost model's CPU for it, microseconds at scale 1 (agents/encodings/cost_model.py)
    payload_digest: int | None = None  # `digest` of the payload as packed, when packing computed it

    @property
    def pages(self) -> int:
        """Pages in the batch (unchanged pages are not)."""
        return self.normal + self.zero + self.compressed + self.delta


def _gather(image: np.ndarray, idx: np.ndarray, payload: np.ndarray) -> tuple[np.ndarray, int, int | None]:
    """Copy the non-zero pages `idx` of `image` into `payload`, back to back; returns
    (zero mask, number copied, their digest or None). One pass without the GIL, hashing
    as it copies (agents/datapath/_pagecopy.c); numpy without it (no digest)."""
    n = len(idx)
    if _pagecopy is not None and image.flags.c_contiguous:
        zero = np.empty(n, dtype=np.uint8)
        got = _pagecopy.gather(image, np.ascontiguousarray(idx, dtype=np.int64), payload, zero)
        k, h = got if _C_DIGEST else (got, None)
        return zero.view(bool), k, h
    gathered = payload.reshape(n, PAGE)
    np.take(image, idx, axis=0, out=gathered)
    zero = zero_mask(gathered)
    k = n - int(np.count_nonzero(zero))
    if k < n:
        gathered[:k] = gathered[~zero]  # fancy indexing copies first, so the overlap is safe
    return zero, k, None


def pack_pages(image: np.ndarray, idx: np.ndarray, slot: SlotView) -> PackStats:
    """Gather pages `idx` of `image` into `slot`: zero pages as markers, others raw.

    The gather lands straight in the payload (one copy); only when there are
    zero pages are the others moved up to close the gaps.
    """
    n = len(idx)
    zero, k, h = _gather(image, idx, slot.payload[: n * PAGE])
    nz = n - k
    slot.idx[:n] = idx
    slot.enc[:n] = np.where(zero, ENC_ZERO, ENC_NORMAL)
    slot.lengths[:n] = np.where(zero, 0, PAGE)
    slot.set_header(n, 0, k * PAGE)
    wire = n * PAGE_HEADER_BYTES + nz * ZERO_MARKER_BYTES + k * PAGE
    return PackStats(normal=k, zero=nz, raw_bytes=k * PAGE, payload_bytes=k * PAGE, wire_bytes=wire,
                     payload_digest=h)


class Unpacker:
    """A receiver's decoding state: one zstd decompression context, reused for
    every batch; the measured CPU time of decoding (zstd and deltas), and what
    the cost model charges for it (microseconds at scale 1)."""

    def __init__(self, costs=None) -> None:
        from agents.encodings.zstd_codec import ZstdPageCodec
        self._pages = ZstdPageCodec()
        self.costs = costs  # agents.encodings.cost_model.CodecCosts, or None: nothing modelled
        self.decode_s = 0.0
        self.model_us = 0.0

    def decompress_pages(self, frames, lengths: np.ndarray) -> list:
        t0 = time.thread_time()
        pages = self._pages.decompress_pages(frames, lengths, PAGE)
        self.decode_s += time.thread_time() - t0
        if self.costs is not None:
            self.model_us += self.costs.zstd_decoder().decompress_us(lengths, self.costs.call_us)
        return pages

    def decode_deltas(self, deltas, dlens: np.ndarray, image: np.ndarray, idx: np.ndarray) -> None:
        t0 = time.thread_time()
        xbzrle.decode_batch(deltas, dlens.astype(np.int32), image, page_index=idx)
        self.decode_s += time.thread_time() - t0
        if self.costs is not None:
            self.model_us += self.costs.xbzrle_decode_us(dlens)

    def take_decode_s(self) -> float:
        """CPU seconds spent decoding since the last call."""
        s, self.decode_s = self.decode_s, 0.0
        return s

    def take_model_us(self) -> float:
        """The cost model's charge for the decoding since the last call."""
        us, self.model_us = self.model_us, 0.0
        return us


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
    normal, zero, delta, packed = (enc == e for e in (ENC_NORMAL, ENC_ZERO, ENC_DELTA, ENC_ZSTD))
    k, nd, nc = (int(np.count_nonzero(m)) for m in (normal, delta, packed))
    if k + nd + nc + int(np.count_nonzero(zero)) != n:
        known = {ENC_NORMAL, ENC_ZERO, ENC_DELTA, ENC_ZSTD}
        raise ValueError(f"batch has unknown page encodings: {sorted(set(enc.tolist()) - known)}")
    lengths = slot.lengths[:n]
    dlens, flens = lengths[delta], lengths[packed].astype(np.int64)
    if nd and (dlens.max() > PAGE or dlens.min() == 0):
        raise ValueError("a delta page says a length of 0 or more than a page")
    if nc and (flens.max() >= PAGE or flens.min() == 0):
        raise ValueError("a compressed page says a length of 0 or at least a page")
    if nc and not flags & FLAG_ZSTD:
        raise ValueError("compressed pages in a batch not flagged as holding zstd frames")
    frames_end = k * PAGE + int(flens.sum())
    if payload_len != frames_end + int(dlens.sum()):
        raise ValueError(f"batch of {n} pages says {payload_len} payload bytes; its pages say "
                         f"{frames_end + int(dlens.sum())}")
    if len(idx) and (idx.min() < 0 or idx.max() >= len(image)):
        raise ValueError(f"batch names pages outside the image of {len(image)} pages")
    u = unpacker or Unpacker()
    pages = u.decompress_pages(slot.payload[k * PAGE: frames_end], flens) if nc else []
    if nd:
        # Deltas first: decode_batch validates all of them before writing any page.
        u.decode_deltas(slot.payload[frames_end: payload_len], dlens, image, idx[delta])
    fast = _pagecopy is not None and image.flags.c_contiguous
    if k and fast:
        _pagecopy.scatter(image, np.ascontiguousarray(idx[normal], dtype=np.int64), slot.payload[: k * PAGE])
    elif k:
        image[idx[normal]] = slot.payload[: k * PAGE].reshape(k, PAGE)
    for row, page in zip(idx[packed].tolist(), pages):
        image[row] = np.frombuffer(page, dtype=np.uint8)
    if k + nd + nc < n and fast:
        _pagecopy.clear(image, np.ascontiguousarray(idx[zero], dtype=np.int64))
    elif k + nd + nc < n:
        image[idx[zero]] = 0
    return n
