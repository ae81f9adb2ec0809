"""Shared-memory regions: guest images, wire rings, in /dev/shm.

Every region of a run is a file named `livemig-<run>-<what>` in /dev/shm,
mapped as a numpy array. The run id is in the name so that tear-down (also
after Ctrl-C or a crash) can remove exactly what a run created, and so that
`sweep_stale` can remove what dead runs left behind.
"""
from __future__ import annotations

import glob
import mmap
import os

import numpy as np

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
PREFIX = "livemig-"
PAGE = 4096
# Not in Python 3.11's mmap module; the Linux value.
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def region_path(run_id: str, what: str) -> str:
    return os.path.join(SHM_DIR, f"{PREFIX}{run_id}-{what}")


class Region:
    """A named shared-memory byte region mapped as a numpy uint8 array."""

    def __init__(self, path: str, nbytes: int, create: bool) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, nbytes)
            else:
                nbytes = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.array = np.frombuffer(self._mmap, dtype=np.uint8)
        self.nbytes = nbytes

    @classmethod
    def create(cls, path: str, nbytes: int) -> "Region":
        return cls(path, nbytes, create=True)

    @classmethod
    def attach(cls, path: str) -> "Region":
        return cls(path, 0, create=False)

    def pages(self, page_size: int = 4096) -> np.ndarray:
        return self.array[: self.nbytes // page_size * page_size].reshape(-1, page_size)

    def prefault(self) -> None:
        """Allocate and map every page now, so that first-touch costs stay out of
        the migration clock. Keeps the contents; call it before others write."""
        if not self.nbytes:
            return
        try:
            # One call populates the whole map writable (Linux 5.14+).
            self._mmap.madvise(MADV_POPULATE_WRITE)
        except (OSError, ValueError):
            # A write per page (x |= 0 is a real store; x = x is skipped by numpy).
            touch = self.array[::PAGE]
            np.bitwise_or(touch, 0, out=touch)

    def close(self) -> None:
        self.array = None  # drop the exported buffer before closing the map
        try:
            self._mmap.close()
        except BufferError:
            pass  # a view is still alive somewhere; the map goes with the process

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def resident_bytes(path: str, smaps: str = "/proc/self/smaps") -> int:
    """Bytes of the file `path` that this process has mapped and resident (Rss in `smaps`):
    pages it can touch without a fault. 0 where it is not mapped or the kernel has no smaps."""
    total, mine = 0, False
    try:
        with open(smaps) as f:
            for line in f:
                head = line.split(maxsplit=5)
                if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line: range perms offset dev inode [path]
                    mine = len(head) == 6 and head[5].rstrip("\n") == path
                elif mine and head[0] == "Rss:":
                    total += int(head[1]) * 1024
    except OSError:
        return 0
    return total


def remove_run(run_id: str) -> int:
    """Remove every region of a run; returns how many were removed."""
    n = 0
    for path in glob.glob(os.path.join(SHM_DIR, f"{PREFIX}{run_id}-*")):
        try:
            os.unlink(path)
            n += 1
        except FileNotFoundError:
            pass
    return n


def run_bytes(run_id: str) -> int:
    """Bytes really allocated by every region of a run (st_blocks: a sparse region counts what is touched)."""
    total = 0
    for path in glob.glob(os.path.join(SHM_DIR, f"{PREFIX}{run_id}-*")):
        try:
            total += os.stat(path).st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def driver_gone(path: str) -> bool:
    """Whether the run that named `path` ("livemig-<pid>_<id>-...") has lost its driver process."""
    pid = os.path.basename(path)[len(PREFIX):].split("-", 1)[0].split("_", 1)[0]
    return pid.isdigit() and not os.path.exists(f"/proc/{pid}")


def sweep_stale() -> int:
    """Remove regions of runs whose driver process is gone (run ids start with its pid)."""
    n = 0
    for path in glob.glob(os.path.join(SHM_DIR, f"{PREFIX}*")):
        if driver_gone(path):
            try:
                os.unlink(path)
                n += 1
            except FileNotFoundError:
                pass
    return n
