"""Datastores: how fast a storage device serves reads and writes.

A `DatastoreModel` is a device's figures in physical units: read and write
IOPS (random 4-8 KiB requests), read and write MB/s (large sequential
requests) and a fixed per-request latency (fabric and protocol). A request's
service time on the device is

    random:      max(n / iops, bytes / MBps)
    sequential:  bytes / MBps

so a disk spindle serves 4 KiB at random at its IOPS and 1 MiB in sequence at
its MB/s, as datasheets quote them; the latency is added to every request's
completion without occupying the device.

`Device` plays one datastore in real time: requests are served one after
another (FIFO, like `TokenBucket`'s line), each occupying the device for its
service time; guest I/O and the bulk copy of a storage migration share it, so
the copy slows the guest down as in the seed's Figures 4 and 5. Real counts
map onto emulated ones through the run's scaling: a real request of `n` bytes
stands for 1/memory_scale emulated requests of `n` bytes (rates in bytes
scale with memory_scale, request sizes do not), and an emulated second lasts
`dilation` real seconds.

Presets (values and their sources):
- fast-san: 8 Gbit/s Fibre Channel array (EMC VNX/CLARiiON class, 2012):
  800 MB/s per port read, 600 MB/s write, 30,000 / 20,000 IOPS from a
  cached array front end, 0.5 ms. The seed's DS2 source ("a higher
  performance SAN").
- slow-san: 4 Gbit/s FC array: 400 MB/s read, 300 MB/s write, 15,000 /
  8,000 IOPS, 1 ms. The seed's DS2 destination ("a slightly slower SAN"):
  its 300 MB/s write bound is the seed's "around 2.3 Gbps" of network use.
- local-ssd: Intel SSD DC S3700 800 GB datasheet (2012): 75,000 read and
  36,000 write IOPS (4 KiB random), 500 / 460 MB/s sequential, 0.1 ms.
- hdd: 7,200 rpm SATA (Seagate Constellation ES.3 datasheet): 8.5 ms average
  seek plus 4.16 ms rotation gives about 79 random IOPS, 175 MB/s sustained.
- nfs: NFSv3 filer behind 10 GbE (NetApp FAS class): 1,100 MB/s on the wire,
  20,000 / 10,000 IOPS, 1 ms round trip and server time.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

from agents.datapath.clock import sleep_until

MB = 1e6


@dataclass(frozen=True)
class DatastoreModel:
    """A storage device's performance in physical units (IOPS, MB/s, ms)."""

    read_iops: float
    write_iops: float
    read_mbytes_s: float
    write_mbytes_s: float
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("read_iops", "write_iops", "read_mbytes_s", "write_mbytes_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)!r}")
        if not self.latency_ms >= 0:
            raise ValueError(f"latency_ms must be >= 0; got {self.latency_ms!r}")

    def service_s(self, write: bool, nreq: float, nbytes: float, random: bool) -> float:
        """Emulated seconds the device is busy with `nreq` requests of `nbytes` in all."""
        iops, mbs = (self.write_iops, self.write_mbytes_s) if write else (self.read_iops, self.read_mbytes_s)
        transfer = nbytes / (mbs * MB)
        return max(nreq / iops, transfer) if random else transfer

    def max_iops(self, write: bool, request_bytes: int, random: bool = True) -> float:
        """Requests per emulated second the device alone can serve."""
        return 1.0 / self.service_s(write, 1, request_bytes, random)

    def describe(self) -> dict:
        return asdict(self)


PRESETS: dict[str, DatastoreModel] = {
    "fast-san": DatastoreModel(30_000, 20_000, 800, 600, 0.5),
    "slow-san": DatastoreModel(15_000, 8_000, 400, 300, 1.0),
    "local-ssd": DatastoreModel(75_000, 36_000, 500, 460, 0.1),
    "hdd": DatastoreModel(79, 75, 175, 175, 0.0),
    "nfs": DatastoreModel(20_000, 10_000, 1_100, 1_100, 1.0),
}


@dataclass
class IoCounts:
    """Requests and bytes read and written (real units)."""

    reads: int = 0
    writes: int = 0
    read_bytes: int = 0
    write_bytes: int = 0

    def add(self, write: bool, nreq: int, nbytes: int) -> None:
        if write:
            self.writes += nreq
            self.write_bytes += nbytes
        else:
            self.reads += nreq
            self.read_bytes += nbytes


@dataclass
class DeviceCounters(IoCounts):
    """What a device served (real units; times in real seconds)."""

    busy_s: float = 0.0


class Device:
    """One datastore served in real time, FIFO.

    `reserve(...)` books a request and returns the real monotonic time at
    which it completes (queueing, service, latency); `io(...)` books it and
    sleeps until then. Thread-safe: the guest's I/O and the copy threads
    share one device.
    """

    def __init__(self, model: DatastoreModel, memory_scale: float = 1.0, dilation: float = 1.0) -> None:
        if not 0 < memory_scale <= 1 or dilation <= 0:
            raise ValueError(f"memory_scale must be in (0, 1] and dilation > 0; got {memory_scale}, {dilation}")
        self.model, self.scale, self.dilation = model, memory_scale, dilation
        self.counters = DeviceCounters()
        self._free_at = 0.0
        self._lock = threading.Lock()

    def real_service_s(self, write: bool, nreq: int, nbytes: int, random: bool) -> float:
        """Real seconds `nreq` real requests of `nbytes` real bytes occupy the device."""
        return self.model.service_s(write, nreq / self.scale, nbytes / self.scale, random) * self.dilation

    def reserve(self, write: bool, nbytes: int, random: bool, nreq: int = 1, t: float | None = None) -> float:
        """Book a request offered at real time `t` (now by default); its real completion time."""
        t = time.monotonic() if t is None else t
        busy = self.real_service_s(write, nreq, nbytes, random)
        with self._lock:
            self._free_at = max(self._free_at, t) + busy
            done = self._free_at
            self.counters.busy_s += busy
            self.counters.add(write, nreq, nbytes)
        return done + self.model.latency_ms * 1e-3 * self.dilation

    def io(self, write: bool, nbytes: int, random: bool, nreq: int = 1) -> float:
        """Book a request now and wait for its completion; the real seconds it took."""
        t0 = time.monotonic()
        sleep_until(self.reserve(write, nbytes, random, nreq, t0))
        return time.monotonic() - t0
