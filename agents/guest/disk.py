"""Virtual disks: sparse file-backed images and the guest's disk I/O.

A `DiskImage` is a sparse file of 4 KiB blocks (real bytes: the emulated
size times memory_scale, as for memory). At creation `used_fraction` of its
extents are filled with pseudo-random bytes and the rest left as holes (a
thin disk); `allocated` tracks which extents hold data, so a copy can skip
the holes as vMotion skips unallocated VMFS blocks.

A `DiskWorkload` is the guest's I/O in physical units: read and write IOPS,
request sizes, random or sequential, over a span of the disk. Presets:
- ds2: the seed's DS2 SQL Server database disk, about 1,250 read and 200
  write IOPS (vMotion 5.1 paper, "Test scenario"); 8 KiB requests, SQL
  Server's page size; random; a closed loop of 12 clients (the seed's
  "load of 12 DS2 users").
- dbench: PMigrate Table 8's DBench VM. Its total disk send grew 3.8 GB
  over the 256 s vanilla migration and 1.2 GB over the 77 s PMigrate one,
  about 15 MB/s of fresh writes: 240 write IOPS of 64 KiB, sequential.
- soliddb-8/16/32/64: the seed's Table 2 (write IOPS and MB/s on the
  database disk at 8..64 clients); request size = MB/s / IOPS.

`DiskWorkloadRunner` runs one in a thread: each request waits for the
datastore (agents/datapath/datastore.py: the device is shared with any
copy) and then really reads or writes the image; writes go through a
`write` callable so a storage migration's I/O mirror can intercept them.

Open or closed loop. With `clients = 0` the requests are offered at the
workload's IOPS (open loop; a request still waits for the one before it).
With `clients = N > 0` the workload is a closed loop of N clients (DS2's
users, a database's outstanding I/Os): each client thinks for Z, issues
one request, waits for its completion, and thinks again, so by Little's law
the throughput is X = N / (Z + R) with R the mean request latency. The
workload's IOPS are its throughput on its datastore unloaded (R = R0, the
device's service time of one request plus its latency); Z = N / IOPS - R0.
Latency the guest meets (the bulk copy queued ahead of it on the source
datastore, a mirrored write waiting for the destination in write-blocking
mode, a slower datastore after the move) lowers X, and X is the
application's throughput (DS2's orders per second follow its completed
I/Os: vMotion 5.1 seed, "The drop in the write IOPS during the disk copy
phase was consistent with the drop in the SQL Server throughput").

One real request stands for 1/memory_scale emulated ones; its own service
on a device is booked as theirs together, so the latency an emulated
request meets is the booked one less that batch's service beyond a single
request's (`_latency_s`); booked, not measured, so that this machine's
scheduling delays (amplified by a small dilation) do not count as the
device's. R is a moving average of those latencies.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from agents.datapath.clock import sleep_until
from agents.datapath.datastore import DatastoreModel, Device, IoCounts
from agents.verify import chunk_digests

BLOCK = 4096
EXTENT = 64 * 1024  # allocation unit tracked for holes (VMFS-like; QEMU's default cluster size)
# Weight of the newest request in a closed loop's mean latency R. High: one real request
# already stands for 1/memory_scale emulated ones (an average over many clients), and a
# low weight would keep the clients slow long after the latency fell (each real request
# is paced by R itself, so few come to lower it).
LATENCY_EWMA = 0.5


class DiskImage:
    """A sparse file of `nbytes` (a multiple of 4 KiB) with its allocation map."""

    def __init__(self, path: str, nbytes: int, allocated: np.ndarray) -> None:
        self.path, self.nbytes, self.allocated = path, nbytes, allocated
        self._fd = os.open(path, os.O_RDWR)

    @classmethod
    def create(cls, path: str, nbytes: int, used_fraction: float = 1.0, seed: int = 0,
               fill: bool = True) -> DiskImage:
        """A new image: `used_fraction` of its extents filled with pseudo-random bytes
        (when `fill`), the rest holes. A destination is created with fill=False."""
        if nbytes <= 0 or nbytes % BLOCK:
            raise ValueError(f"a disk's size must be a positive multiple of {BLOCK} bytes; got {nbytes}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, nbytes)
        os.close(fd)
        n = -(-nbytes // EXTENT)
        rng = np.random.default_rng(seed)
        used = rng.random(n) < used_fraction if fill else np.zeros(n, dtype=bool)
        image = cls(path, nbytes, used)
        if fill:
            image._fill(rng)
        return image

    def _fill(self, rng: np.random.Generator, batch: int = 256) -> None:
        ext = np.flatnonzero(self.allocated)
        for i in range(0, len(ext), batch):  # runs of extents, written one extent at a time
            chunk = ext[i:i + batch]
            data = rng.integers(0, 256, size=(len(chunk), EXTENT), dtype=np.uint8)
            for e, row in zip(chunk, data):
                os.pwrite(self._fd, memoryview(row)[: self.nbytes - e * EXTENT], int(e) * EXTENT)

    def pread(self, offset: int, n: int) -> bytes:
        return os.pread(self._fd, n, offset)

    def pwrite(self, offset: int, data) -> None:
        os.pwrite(self._fd, data, offset)
        self.allocated[offset // EXTENT:(offset + len(data) - 1) // EXTENT + 1] = True

    def allocated_bytes(self) -> int:
        return int(self.allocated.sum()) * EXTENT

    def digests(self) -> np.ndarray:
        """(ceil(blocks / 16), 16) uint8 mmh3 digests of runs of 16 blocks (agents/verify.py)."""
        blocks = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.nbytes // BLOCK, BLOCK))
        try:
            return chunk_digests(blocks)
        finally:
            del blocks

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class DiskWorkload:
    """Guest disk I/O in physical units."""

    read_iops: float = 0.0
    write_iops: float = 0.0
    read_kib: float = 8.0
    write_kib: float = 8.0
    pattern: str = "random"  # random | sequential
    span_fraction: float = 1.0  # the part of the disk the requests fall in (from its start)
    clients: int = 0  # > 0: a closed loop of this many clients (the IOPS are its unloaded throughput)

    def __post_init__(self) -> None:
        if self.read_iops < 0 or self.write_iops < 0:
            raise ValueError("read_iops and write_iops must be >= 0")
        if self.read_kib <= 0 or self.write_kib <= 0:
            raise ValueError("read_kib and write_kib must be > 0")
        if self.pattern not in ("random", "sequential"):
            raise ValueError(f"pattern must be random or sequential; got {self.pattern!r}")
        if self.clients < 0:
            raise ValueError(f"clients must be >= 0; got {self.clients!r}")

    @property
    def iops(self) -> float:
        return self.read_iops + self.write_iops

    def write_mbytes_s(self) -> float:
        return self.write_iops * self.write_kib * 1024 / 1e6

    def request_bytes(self, write: bool) -> int:
        """One request's size in bytes (a multiple of 4 KiB)."""
        return int((self.write_kib if write else self.read_kib) * 1024) // BLOCK * BLOCK or BLOCK

    def unloaded_latency_s(self, model: DatastoreModel) -> float:
        """R0: the mean emulated seconds one request takes on `model` with nothing else on it."""
        random = self.pattern == "random"
        each = [model.service_s(w, 1, self.request_bytes(w), random) + model.latency_ms / 1000 for w in (False, True)]
        return (self.read_iops * each[0] + self.write_iops * each[1]) / self.iops

    def think_s(self, model: DatastoreModel) -> float:
        """Z, a closed-loop client's think time (emulated s): N / IOPS - R0 on the datastore it starts on."""
        return max(0.0, self.clients / self.iops - self.unloaded_latency_s(model))


def _soliddb(iops: float, mbytes_s: float) -> DiskWorkload:
    return DiskWorkload(write_iops=iops, write_kib=mbytes_s * 1e6 / iops / 1024)


DISK_PRESETS: dict[str, DiskWorkload] = {
    "ds2": DiskWorkload(read_iops=1250, write_iops=200, read_kib=8, write_kib=8, clients=12),
    "dbench": DiskWorkload(write_iops=240, write_kib=64, pattern="sequential", span_fraction=0.25),
    "soliddb-8": _soliddb(906, 13.68),
    "soliddb-16": _soliddb(1444, 22.21),
    "soliddb-32": _soliddb(2378, 36.68),
    "soliddb-64": _soliddb(3220, 50.12),
}


# Fewer real requests in a window than this, and their rate is too noisy to report (at 20, one
# request more or less moves it by 5%; at memory_scale 1/256 a 0.5 s warm-up of DS2 holds about 2).
MIN_MEASURED_REQUESTS = 20


def window_rates(done: np.ndarray, marks: list[float], scale: float, dilation: float) -> list[tuple[float, int]]:
    """(emulated requests per emulated second, real requests) in each window between consecutive
    real times `marks`; `done`: the real completion times. Each real request stands for
    1/`scale` emulated ones, each real second for 1/`dilation` emulated ones."""
    counts = np.histogram(done, bins=marks)[0] if len(marks) > 1 else []
    return [(float(c) / scale / ((b - a) / dilation) if b > a else 0.0, int(c))
            for c, a, b in zip(counts, marks, marks[1:])]


def measured_rates(names: tuple[str, ...], windows: list[tuple[float, int]],
                   least: int = MIN_MEASURED_REQUESTS) -> dict:
    """The windows' rates by name, None for a window with fewer than `least` real requests, whose
    reason is under `not_measured` (present only when one is not)."""
    out: dict = {}
    why: dict = {}
    for name, (rate, count) in zip(names, windows):
        out[name] = rate if count >= least else None
        if count < least:
            why[name] = (f"{count} real disk requests in the window, fewer than {least}: too few for a rate "
                         f"(raise emulation.memory_scale or the window)")
    return out | ({"not_measured": why} if why else {})


@dataclass
class IoStats(IoCounts):
    """A runner's completed requests (real counts; latencies in real seconds)."""

    latency_s: float = 0.0
    completions: list = field(default_factory=list)  # real monotonic time of each completion


class DiskWorkloadRunner:
    """Runs a `DiskWorkload` against an image on a device, in a thread.

    `write(offset, data)` performs a guest write (default: the image's own);
    a storage migration swaps it for its I/O mirror, and `retarget` moves the
    guest onto the destination's image and device at switch-over.
    """

    def __init__(self, workload: DiskWorkload, image: DiskImage, device: Device, seed: int = 0) -> None:
        self.w, self.image, self.device = workload, image, device
        self.write = image.pwrite
        self.stats = IoStats()
        self._rng = np.random.default_rng(seed)
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # held across one request: pause and retarget wait for it
        self._cursor = 0
        self._thread: threading.Thread | None = None
        self.started_at = 0.0
        self.think_s = workload.think_s(device.model) if workload.clients else 0.0  # Z, emulated s
        self.latency_avg = workload.unloaded_latency_s(device.model) if workload.iops else 0.0  # R, emulated s

    def start(self) -> None:
        self.started_at = time.monotonic()
        if self.w.iops > 0:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="disk-workload")
            self._thread.start()

    def pause(self) -> None:
        """The VM stops: no request is in flight when this returns."""
        self._running.clear()
        with self._lock:
            pass

    def resume(self) -> None:
        self._running.set()

    def retarget(self, image: DiskImage, device: Device) -> None:
        with self._lock:
            self.image, self.device, self.write = image, device, image.pwrite

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _requests(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n` requests: (is_write, offset in blocks of the request's start), vectorised."""
        w = self.w
        is_write = self._rng.random(n) < w.write_iops / w.iops
        span = max(1, int(self.image.nbytes * w.span_fraction) // BLOCK)
        if w.pattern == "random":
            blocks = self._rng.integers(0, span, n)
        else:
            size = np.where(is_write, w.write_kib, w.read_kib) * 1024 // BLOCK
            blocks = (self._cursor + np.concatenate([[0], np.cumsum(size)[:-1]])) % span
            self._cursor = int(blocks[-1] + size[-1]) % span
        return is_write, blocks

    def _loop(self, batch: int = 64) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            for is_write, block in zip(*self._requests(batch)):
                if self._stop.is_set():
                    return
                self._running.wait()
                interval = self._interval()
                due = max(due + interval, time.monotonic() - interval)  # no catching up after a pause
                sleep_until(due)
                latency = self._one(bool(is_write), int(block) * BLOCK)
                if latency is not None:
                    self.latency_avg += LATENCY_EWMA * (latency - self.latency_avg)

    def _interval(self) -> float:
        """Real seconds between two real requests: open loop at the IOPS; closed loop at
        N / (Z + R) with R the moving average of the latencies met."""
        dev, w = self.device, self.w
        rate = w.clients / (self.think_s + self.latency_avg) if w.clients else w.iops
        return dev.dilation / (rate * dev.scale)

    def _one(self, is_write: bool, offset: int) -> float | None:
        """Issue one real request; the emulated latency one of the requests it stands for met
        (None: not issued, the VM paused meanwhile)."""
        with self._lock:
            if not self._running.is_set():  # paused while this request waited for its turn: not issued
                return None
            t0 = time.monotonic()
            size = min(self.w.request_bytes(is_write), self.image.nbytes - offset)
            random = self.w.pattern == "random"
            booked = self.device.reserve(is_write, size, random, t=t0)
            sleep_until(booked)
            mirror = 0.0
            if is_write:
                mirror = self.write(offset, self._rng.bytes(size)) or 0.0
            else:
                self.image.pread(offset, size)
            done = time.monotonic()
            self.stats.latency_s += done - t0
            self.stats.completions.append(done)
            self.stats.add(is_write, 1, size)
            return _latency_s(self.device, is_write, size, random, booked - t0 + mirror)


def _latency_s(dev: Device, write: bool, nbytes: int, random: bool, real_s: float) -> float:
    """The emulated latency of one of the requests a real request of `nbytes` stands for, from
    its booked real latency `real_s` (the device's queue, service and latency as booked, plus
    the mirror's wait; not this process's scheduling): its batch's service beyond one
    request's is not waited by any single request."""
    one = dev.model.service_s(write, 1, nbytes, random) * dev.dilation
    return max(0.0, real_s - (dev.real_service_s(write, 1, nbytes, random) - one)) / dev.dilation
