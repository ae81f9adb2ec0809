"""Swap-assisted migration's destination: a VM bigger than its host's free memory, paged to a swap device (S-memV §II, §V).

The baseline S-memV compares against: a destination with only a share of
the VM's memory free, whose kernel pages the VM's memory out to local
storage while the migration writes into it, and in again when the VM
touches it after. Here:

- `SwapDevice`: an SSD or HDD as an access time per I/O plus a transfer
  rate (emulated seconds). The presets: the paper's swap devices, a
  Crucial MX300 275 GB SATA SSD (datasheet: 530 MB/s sequential read,
  510 MB/s sequential write; ~0.1 ms per random 4 KiB read at queue depth
  1) and a 1 TB SATA 7200 rpm HDD (~150 MB/s sustained; 8.5 ms average
  seek plus 4.2 ms half a rotation, as in WD Blue / Seagate Barracuda
  datasheets).
- `SwapSpace`: the resident set of one VM image on the destination, LRU by
  access stamps (the kernel's referenced bits: stamped when a page is
  received or accessed), and a real swap file its victims' bytes are
  written to and read back from. Linux's granularity sets the I/O sizes:
  page-outs are written in swap clusters of 256 pages (SWAPFILE_CLUSTER,
  mm/swapfile.c), page-ins read page-cluster = 3, i.e. 8 pages, around the
  faulting one (swap read-ahead). A page the migration re-sends while it
  is swapped out is first read in (the kernel faults it in before QEMU's
  write can land; one fault per 8-page read-ahead window), then overwritten.
- Seeks: an HDD (Linux's queue/rotational = 1) pays its access time per
  seek, not per request: the re-sent pages of a batch come in address
  order, and their slots were written in that order (reclaim takes the
  LRU's tail, oldest received first, and the allocator hands out a
  cluster's slots in ascending order), so reading them back is one seek
  per run of consecutive slots, the rest streamed through the drive's
  read-ahead at its sequential rate. The guest's own faults after the
  migration land anywhere: each pays the access time, as on an SSD.

Costs are emulated seconds; `memory_scale` turns real pages into the
emulated pages they stand for (a real page is 1/memory_scale of them).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np

PAGE = 4096
SWAP_CLUSTER = 256  # pages written per swap-out I/O (Linux SWAPFILE_CLUSTER)
READ_AHEAD = 8  # pages read per swap-in I/O (Linux page-cluster = 3)


@dataclass(frozen=True)
class SwapDevice:
    name: str
    access_s: float  # per I/O: seek + rotation (HDD) or command latency (SSD)
    read_bytes_s: float
    write_bytes_s: float
    rotational: bool = False  # an HDD: consecutive reads stream without a seek each

    def write_s(self, emulated_pages: float) -> float:
        """Emulated seconds to write `emulated_pages` in swap clusters."""
        ios = np.ceil(emulated_pages / SWAP_CLUSTER) if emulated_pages > 0 else 0
        return float(ios * self.access_s + emulated_pages * PAGE / self.write_bytes_s)

    def read_s(self, faults: float, emulated_pages: float, seeks: float | None = None) -> float:
        """Emulated seconds to serve `faults` page-ins reading `emulated_pages` in all; on a
        rotational device whose reads make `seeks` runs of consecutive slots, one access per run."""
        ios = seeks if self.rotational and seeks is not None else faults
        return float(ios * self.access_s + emulated_pages * PAGE / self.read_bytes_s)


DEVICES = {
    "ssd": SwapDevice("ssd", 0.1e-3, 530e6, 510e6),
    "hdd": SwapDevice("hdd", 12.7e-3, 150e6, 150e6, rotational=True),
}


class SwapSpace:
    """The resident pages of `image` ((n, 4096) uint8) within `capacity` real
    pages, the rest in a swap file. `resident`: uint8 (n,) map, 1 where the
    page is in memory (may be shared memory the guest reads). Errors:
    ValueError for a capacity below one page."""

    def __init__(self, image: np.ndarray, capacity: int, device: SwapDevice, memory_scale: float,
                 resident: np.ndarray | None = None, directory: str | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"a swap-assisted destination needs at least one resident page, got {capacity}")
        n = len(image)
        self.image, self.capacity, self.device, self.scale = image, capacity, device, memory_scale
        self.resident = resident if resident is not None else np.zeros(n, dtype=np.uint8)
        self.resident[:] = 0
        self.present = np.zeros(n, dtype=bool)  # has contents (received), resident or swapped
        self.stamp = np.zeros(n, dtype=np.int64)
        self.clock = 0
        self.slot = np.full(n, -1, dtype=np.int64)
        self.file = tempfile.TemporaryFile(dir=directory, prefix="livemig-swap-")  # gone when closed
        self.free_slots = np.arange(n - 1, -1, -1, dtype=np.int64)
        self.nfree = n
        self.swapped_out = self.swapped_in = 0  # real pages
        self.faults = 0
        self.device_s = 0.0  # emulated

    @property
    def resident_count(self) -> int:
        return int(np.count_nonzero(self.resident.astype(bool) & self.present))

    def touch(self, idx: np.ndarray) -> None:
        """Pages accessed (the referenced bit): most recently used now."""
        self.clock += 1
        self.stamp[idx] = self.clock

    def received(self, idx: np.ndarray, data_written) -> float:
        """The migration writes pages `idx` (`data_written()` does the write once
        they are resident); returns the emulated device seconds it cost."""
        swapped = idx[self.slot[idx] >= 0]
        # QEMU writes a batch in page order: swap read-ahead serves the next pages of each fault,
        # and an HDD seeks once per run of consecutive slots.
        cost = self._page_in(swapped, faults=len(np.unique(swapped // READ_AHEAD)),
                             seeks=len(_runs(np.sort(self.slot[swapped]))))
        self.resident[idx] = 1
        self.present[idx] = True
        self.touch(idx)
        data_written()
        return cost + self._make_room(exclude=idx)

    def access(self, idx: np.ndarray) -> float:
        """The guest touches pages `idx`: swapped ones are read in (with
        read-ahead), victims written out. Returns emulated device seconds."""
        fresh = idx[~self.present[idx]]  # never written: a zero-fill fault, no I/O
        self.present[fresh] = True
        self.resident[fresh] = 1
        out = idx[self.slot[idx] >= 0]
        cost, ahead = 0.0, idx[:0]
        if len(out):
            faults = np.unique(out)
            ahead = self._read_ahead(faults)
            cost += self._page_in(ahead, faults=len(faults))
            self.touch(ahead)  # read-ahead pages enter the swap cache as recently used
        self.touch(idx)
        return cost + self._make_room(exclude=np.concatenate([idx, ahead]))

    def contents(self) -> np.ndarray:
        """The whole image as the VM sees it: resident pages and swapped ones read back (a copy)."""
        full = self.image.copy()
        out = np.flatnonzero(self.slot >= 0)
        if len(out):
            full[out] = self._read(self.slot[out])
        return full

    def close(self) -> None:
        self.file.close()

    # --- the mechanism ---------------------------------------------------------------
    def _read_ahead(self, faults: np.ndarray) -> np.ndarray:
        """The faulting pages and up to READ_AHEAD - 1 after each that are swapped out too."""
        cand = (faults[:, None] + np.arange(READ_AHEAD)[None, :]).reshape(-1)
        cand = np.unique(cand[cand < len(self.image)])
        return cand[self.slot[cand] >= 0]

    def _page_in(self, pages: np.ndarray, faults: int | None = None, seeks: int | None = None) -> float:
        if not len(pages):
            return 0.0
        self.image[pages] = self._read(self.slot[pages])
        self._free(pages)
        self.resident[pages] = 1
        self.swapped_in += len(pages)
        n_faults = len(pages) if faults is None else faults
        self.faults += n_faults
        # A seek is one however many emulated pages a real page stands for: not scaled.
        cost = self.device.read_s(n_faults / self.scale, len(pages) / self.scale, seeks)
        self.device_s += cost
        return cost

    def _make_room(self, exclude: np.ndarray) -> float:
        over = self.resident_count - self.capacity
        if over <= 0:
            return 0.0
        keep = self.stamp.copy()
        keep[(self.resident == 0) | ~self.present] = np.iinfo(np.int64).max
        keep[exclude] = np.iinfo(np.int64).max - 1  # just written or touched: not the victims
        victims = np.argpartition(keep, over - 1)[:over]
        victims = np.sort(victims[(self.resident[victims] == 1) & self.present[victims]])
        # Written in page order to ascending slots, as reclaim and the swap allocator do.
        slots = np.sort(self.free_slots[self.nfree - len(victims): self.nfree])
        self.nfree -= len(victims)
        self._write(slots, self.image[victims])
        self.slot[victims] = slots
        self.image[victims] = 0  # the frames go to whoever needed them
        self.resident[victims] = 0
        self.swapped_out += len(victims)
        cost = self.device.write_s(len(victims) / self.scale)
        self.device_s += cost
        return cost

    def _free(self, pages: np.ndarray) -> None:
        slots = self.slot[pages]
        self.free_slots[self.nfree: self.nfree + len(slots)] = slots
        self.nfree += len(slots)
        self.slot[pages] = -1

    def _write(self, slots: np.ndarray, data: np.ndarray) -> None:
        """Write pages to their swap slots, one pwrite per run of consecutive slots."""
        fd = self.file.fileno()
        order = np.argsort(slots, kind="stable")
        ordered = np.ascontiguousarray(data[order])
        for lo, hi, first in _runs(slots[order]):
            os.pwrite(fd, memoryview(ordered[lo:hi]).cast("B"), first * PAGE)

    def _read(self, slots: np.ndarray) -> np.ndarray:
        """Read the pages in `slots`, one pread per run of consecutive slots."""
        fd = self.file.fileno()
        order = np.argsort(slots, kind="stable")
        out = np.empty((len(slots), PAGE), dtype=np.uint8)
        for lo, hi, first in _runs(slots[order]):
            out[order[lo:hi]] = np.frombuffer(os.pread(fd, (hi - lo) * PAGE, first * PAGE),
                                              dtype=np.uint8).reshape(hi - lo, PAGE)
        return out

    def status(self) -> dict:
        """Emulated pages swapped out and in, faults, and the device's busy seconds."""
        return {"device": self.device.name, "capacity_pages": self.capacity / self.scale,
                "swapped_out_pages": self.swapped_out / self.scale, "swapped_in_pages": self.swapped_in / self.scale,
                "swap_faults": self.faults / self.scale, "device_busy_s": self.device_s,
                "resident_pages": self.resident_count / self.scale}


def _runs(sorted_slots: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, stop, first slot) of each run of consecutive values in `sorted_slots`."""
    if not len(sorted_slots):
        return []
    breaks = np.flatnonzero(np.diff(sorted_slots) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [len(sorted_slots)]))
    return [(int(a), int(b), int(sorted_slots[a])) for a, b in zip(starts, stops)]
