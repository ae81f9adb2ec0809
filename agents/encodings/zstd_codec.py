"""zstd compression of page batches, one compressor context per worker.

The equivalent of QEMU's ``multifd-zstd.c``: each encode worker owns one
``ZstdBatchCodec`` (a zstd compression context and a decompression context,
reused for every batch, which is what keeps zstd cheap) and compresses whole
batches of pages.  When compression does not pay (the frame would be at least
``raw_threshold`` of the raw size, e.g. random or already-compressed pages) the
batch travels raw, so incompressible data costs one failed compression attempt
and no decompression on the receiver.

A payload is raw exactly when its length equals the raw length (a kept frame
is always shorter), so ``decompress(payload, raw_len)`` needs no extra flag.
"""

from __future__ import annotations

import numpy as np
import zstandard

__all__ = ["ZstdBatchCodec", "ZstdPageCodec"]


class ZstdBatchCodec:
    """One zstd compressor and decompressor context; not thread-safe (one per worker)."""

    def __init__(self, level: int = 1, raw_threshold: float = 0.97):
        if not 0.0 < raw_threshold <= 1.0:
            raise ValueError("raw_threshold must be in (0, 1]")
        self.level = int(level)
        self.raw_threshold = float(raw_threshold)
        self._cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=False)
        self._dctx = zstandard.ZstdDecompressor()
        # statistics (bytes in, bytes out, batches kept raw)
        self.raw_bytes = 0
        self.payload_bytes = 0
        self.batches = 0
        self.raw_batches = 0

    def compress(self, buf) -> tuple[bytes, bool]:
        """Compress ``buf`` (any C-contiguous bytes-like, e.g. a page batch).

        Returns ``(payload, compressed)``.  When the zstd frame would not be
        smaller than ``raw_threshold * len(buf)`` the payload is the raw bytes
        (``buf`` itself when it is ``bytes``, else a copy) and ``compressed`` is
        False.
        """
        view = memoryview(buf).cast("B")
        frame = self.compress_frame(view)
        if frame is not None:
            return frame, True
        return (buf if type(buf) is bytes else view.tobytes()), False

    def compress_frame(self, buf) -> bytes | None:
        """The zstd frame of ``buf``, or None when it does not pay (the caller
        then sends ``buf`` as it is; nothing is copied)."""
        view = memoryview(buf).cast("B")
        raw_len = view.nbytes
        self.batches += 1
        self.raw_bytes += raw_len
        if raw_len:
            frame = self._cctx.compress(view)
            if len(frame) < raw_len * self.raw_threshold and len(frame) < raw_len:
                self.payload_bytes += len(frame)
                return frame
        self.raw_batches += 1
        self.payload_bytes += raw_len
        return None

    def decompress(self, payload, raw_len: int) -> bytes:
        """Inverse of :meth:`compress`: the ``raw_len`` original bytes.

        A payload of exactly ``raw_len`` bytes is raw and returned as bytes.
        Raises ``ValueError`` when the payload does not decompress to
        ``raw_len`` bytes.
        """
        view = memoryview(payload).cast("B")
        if view.nbytes == raw_len:
            return view.tobytes()
        if view.nbytes > raw_len:
            raise ValueError(f"payload of {view.nbytes} bytes is longer than its raw length {raw_len}")
        try:
            out = self._dctx.decompress(view, max_output_size=raw_len)
        except zstandard.ZstdError as e:
            raise ValueError(f"corrupt zstd payload: {e}") from None
        if len(out) != raw_len:
            raise ValueError(f"zstd payload decompressed to {len(out)} bytes, expected {raw_len}")
        return out

    def decompress_into(self, payload, out) -> None:
        """Decompress (or copy a raw payload) into the writable buffer ``out``."""
        dst = memoryview(out).cast("B")
        dst[:] = self.decompress(payload, dst.nbytes)

    @property
    def ratio(self) -> float:
        """Raw bytes per payload byte over all batches so far (1.0 before any)."""
        return self.raw_bytes / self.payload_bytes if self.payload_bytes else 1.0

    def stats(self) -> dict:
        return {
            "level": self.level,
            "batches": self.batches,
            "raw_batches": self.raw_batches,
            "raw_bytes": self.raw_bytes,
            "payload_bytes": self.payload_bytes,
            "ratio": self.ratio,
        }


class ZstdPageCodec:
    """Each page its own zstd frame, many pages per call (QEMU's per-page
    compression of compress-threads, with zstd).

    A batch frame would let zstd match a page against the others of its
    batch, so its ratio would grow with the batch size, which is an artifact
    of scaling (a real batch holds 1/memory_scale fewer pages than the batch
    it stands for). Page frames keep each page's ratio its own, whatever the
    batch. One compressor context per worker; the frames of a batch are made
    in one call into the C library (`multi_compress_to_buffer`).
    """

    def __init__(self, level: int = 1) -> None:
        self.level = int(level)
        self._cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=False)
        self._dctx = zstandard.ZstdDecompressor()

    def compress_pages(self, pages) -> tuple[list, np.ndarray]:
        """Frames of the rows of `pages` ((n, page) uint8, C-contiguous) and their lengths."""
        n, size = pages.shape
        if n == 0:
            return [], np.zeros(0, dtype=np.int64)
        seg = np.empty((n, 2), dtype=np.uint64)
        seg[:, 0] = np.arange(n, dtype=np.uint64) * size
        seg[:, 1] = size
        out = self._cctx.multi_compress_to_buffer(
            zstandard.BufferWithSegments(memoryview(pages.reshape(-1)), seg.tobytes()), threads=0)
        frames = [out[i] for i in range(n)]
        return frames, np.fromiter((len(f) for f in frames), dtype=np.int64, count=n)

    def decompress_pages(self, payload, lengths: np.ndarray, page_size: int) -> list:
        """The pages of frames laid back to back in `payload` with `lengths`; raises ValueError
        when a frame is corrupt or does not hold a page."""
        n = len(lengths)
        seg = np.empty((n, 2), dtype=np.uint64)
        seg[:, 1] = lengths
        seg[:, 0] = np.concatenate(([0], np.cumsum(lengths[:-1]))) if n else 0
        try:
            out = self._dctx.multi_decompress_to_buffer(
                zstandard.BufferWithSegments(memoryview(payload), seg.tobytes()),
                decompressed_sizes=np.full(n, page_size, dtype=np.uint64).tobytes(), threads=0)
        except zstandard.ZstdError as e:
            raise ValueError(f"corrupt zstd page frame: {e}") from None
        pages = [out[i] for i in range(n)]
        if any(len(p) != page_size for p in pages):
            raise ValueError("a zstd page frame did not decompress to one page")
        return pages
