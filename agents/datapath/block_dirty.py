"""Disk dirty-bitmap migration (PMigrate-KVM §5, Figure 2; QEMU's old block
migration, block-migration.c): the alternative to the I/O mirror.

Guest writes go to the source disk only and set bits in a dirty bitmap of
chunks (QEMU's BLK_MIG_BLOCK_SIZE, 1 MiB); nothing is mirrored. A disk
producer thread sends the whole allocated disk in the first pass (the bulk
phase), then, pass after pass, the chunks dirtied since the previous pass
(the bitmap fetched and reset atomically), pipelined with the sending and
the destination's disk writer (the transmit buffer, data path and writer of
`MirrorJob`). At switch-over, with the VM stopped, `quiesce()` ends the pass
under way (its unsent chunks go back into the bitmap) and one final pass
sends every dirty chunk: those bytes are part of the downtime.

A write sets its bits after it reaches the source, under the bitmap's lock,
and a pass fetches and clears the bits under the same lock before reading
the chunks; so a chunk written during a pass is either read after the write
or sent again in the next pass: no stale chunk can remain at the end.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from agents.datapath.mirror import MirrorJob
from agents.guest.disk import BLOCK, EXTENT


class DirtyBitmapJob(MirrorJob):
    """Pass-based disk migration over a dirty bitmap of `chunk_bytes` chunks.
    Same constructor as `MirrorJob` plus `chunk_bytes` (a multiple of 4 KiB)."""

    def __init__(self, *args, chunk_bytes: int = 1 << 20, **kw) -> None:
        super().__init__(*args, **kw)
        if chunk_bytes <= 0 or chunk_bytes % BLOCK:
            raise ValueError(f"chunk_bytes must be a positive multiple of {BLOCK}; got {chunk_bytes}")
        self.chunk = chunk_bytes
        nchunks = -(-self.src.nbytes // chunk_bytes)
        self.bitmap = np.zeros(nchunks, dtype=bool)
        self._bitmap_lock = threading.Lock()
        self._quiesce = threading.Event()
        self._final_done = threading.Event()
        self.passes: list[dict] = []  # number, chunks, bytes (real), duration (emulated s), final

    # --- the guest's writes: source only, and a bit set --------------------------
    def guest_write(self, offset: int, data) -> None:
        t0 = time.monotonic()
        self.src.pwrite(offset, data)
        with self._bitmap_lock:
            self.bitmap[offset // self.chunk:(offset + len(data) - 1) // self.chunk + 1] = True
        self.stats.guest_writes += 1
        lat = self.stats.write_latency_s[self.switch.mode]
        lat[0] += 1
        lat[1] += (time.monotonic() - t0) / self.dilation

    def harvest(self) -> np.ndarray:
        """The dirty chunks since the last harvest (the bitmap reset atomically)."""
        with self._bitmap_lock:
            idx = np.flatnonzero(self.bitmap)
            self.bitmap[idx] = False
        return idx

    def dirty_bytes(self) -> int:
        return int(self.bitmap.sum()) * self.chunk

    # --- the disk producer ---------------------------------------------------------
    def _allocated_chunks(self) -> np.ndarray:
        """Chunks that overlap an allocated extent (the holes are not sent)."""
        c = np.arange(len(self.bitmap))
        first = c * self.chunk // EXTENT
        last = np.minimum((c + 1) * self.chunk, self.src.nbytes) - 1
        counts = np.concatenate([[0], np.cumsum(self.src.allocated)])
        return np.flatnonzero(counts[last // EXTENT + 1] > counts[first])

    def _copy(self) -> None:
        self._pass(self._allocated_chunks(), final=False)
        self.stats.copy_done_t = self.now()
        while not self._quiesce.is_set() and not self.buffer.closed:
            todo = self.harvest()
            if len(todo):
                self._pass(todo, final=False)
            else:
                self._quiesce.wait(0.01)
        if not self.buffer.closed:
            self._pass(self.harvest(), final=True)
        self._final_done.set()

    def _pass(self, chunks: np.ndarray, final: bool) -> None:
        """Send `chunks` in order; stopped by quiesce (not the final pass), the rest go back in the bitmap."""
        t0, sent = self.now(), 0
        self.read_behind.restart()  # the wait between passes is the schedule's
        for k, c in enumerate(chunks.tolist()):
            if self.buffer.closed or (self._quiesce.is_set() and not final):
                with self._bitmap_lock:
                    self.bitmap[chunks[k:]] = True
                break
            start = c * self.chunk
            n = min(self.chunk, self.src.nbytes - start)
            self._paced_read(n, random=len(self.passes) > 0)
            self._enqueue(start, self.src.pread(start, n), self.buffer.capacity)
            self.cursor = start + n
            sent += n
        self.passes.append({"number": len(self.passes) + 1, "chunks": len(chunks), "bytes": sent,
                            "duration_s": self.now() - t0, "final": final})

    # --- switch-over ------------------------------------------------------------------
    def quiesce(self) -> None:
        """The VM has stopped: end the pass under way and send every dirty chunk once more."""
        self._quiesce.set()

    def wait_synced(self, timeout: float) -> bool:
        """Quiesced, the final pass enqueued and everything written at the destination."""
        deadline = time.monotonic() + timeout
        if not self._final_done.wait(timeout):
            return False
        return self.buffer.wait_empty(max(0.0, deadline - time.monotonic()))
