"""GuestAgent: a Ray actor that plays a VM's vCPUs.

Its workload (agents/guest/) writes into the image of the host the VM runs
on; at switchover it moves to the destination's image.
"""
from __future__ import annotations

import time

import ray

import numpy as np

from agents.actors.crossnode import GuestHandOff
from agents.datapath.channel import Channel
from agents.actors.reuse import Reusable
from agents.datapath.clock import precise_threads
from agents.datapath.shm import Region
from agents.guest.content import assign_classes, template_pools
from agents.guest.dirty_log import DirtyLog
from agents.guest.remote_memory import RemoteMemory
from agents.guest.split_memory import SplitMemory
from agents.techniques.swap import SwapFaults
from agents.guest.vcpus import Guest
from agents.guest.workloads import make_workload
from agents.split.history import bitmap_bytes


@ray.remote(num_cpus=0, max_concurrency=4)
class GuestAgent(GuestHandOff, Reusable):
    def __init__(self, name: str) -> None:
        """An empty VM: its process starts while the hosts make its image; `boot` gives it one."""
        self.note_threads()
        precise_threads()
        self.name = name
        self.guest: Guest | None = None

    def boot(self, image_path: str, workload: dict, content: dict, vcpus: int, memory_scale: float,
             dilation: float, fault_s: float, seed: int, io_bound: bool = False, track_access: bool = False) -> None:
        """Run on the image at `image_path` (made by its host), not started yet.
        `track_access`: mark every page read or written in the accessed bits next to the image
        (a VM that a split migration will move: its source keeps an access history)."""
        self.region = Region.attach(image_path)
        self.log_region = Region.attach(image_path + "-log")
        pages = self.region.pages()
        npages = len(pages)
        self.access_region = Region.attach(image_path + "-acc") if track_access else None
        access = self.access_region.array[:bitmap_bytes(npages)] if track_access else None
        self.guest = Guest(pages, make_workload(workload, npages, memory_scale, seed),
                           assign_classes(npages, content, seed), template_pools(seed),
                           vcpus, dilation, fault_s, seed, log=DirtyLog(self.log_region.array, npages),
                           io_bound=io_bound, access=access)
        self._dest: Region | None = None
        self.memory_scale = memory_scale

    def start(self) -> float:
        self.guest.start()
        return time.monotonic()

    def pause(self) -> float:
        return self.guest.pause()

    def resume(self) -> float:
        return self.guest.resume()

    def resume_on(self, dest_image_path: str, postcopy: dict | None = None, split: dict | None = None,
                  swap: dict | None = None) -> float:
        """Switchover: run on the destination's image (and its dirty log) from now on.

        `postcopy`: the image is not all there yet. `missing` (packed bits) marks
        the pages it lacks (QEMU's discard); accesses to them fault and are
        requested over the socket at `return_path` (agents/guest/remote_memory.py)."""
        self._dest = Region.attach(dest_image_path)
        self._dest_log = Region.attach(dest_image_path + "-log")
        pages = self._dest.pages()
        remote = None
        if postcopy is not None:
            self._received = Region.attach(dest_image_path + "-recv")
            received = self._received.array[:len(pages)]
            received[:] = 1 - np.unpackbits(postcopy["missing"], count=len(pages))
            back = Channel.connect(postcopy["return_path"]) if postcopy.get("return_path") else None
            remote = RemoteMemory(received, back, postcopy.get("vm", 0), self.guest.dilation, self.memory_scale,
                                  self.guest.workload.footprint)
        elif split is not None:
            remote = SplitMemory(pages, split["page_host"], split["history"], split["chunk_pages"], split["capacity"],
                                 split["policy"], split["servers"], split["migration"], split["links"],
                                 self.guest.dilation, self.memory_scale, split["collect_s"], split["age_every"],
                                 split.get("seed", 0), split.get("hosts"), split.get("timeout_ms", 30_000),
                                 split.get("timeout_s"))
        access = None
        if swap is not None:  # a destination that pages to swap: its kernel sees the accessed bits
            self._dest_access = Region.attach(dest_image_path + "-acc")
            self._received = Region.attach(dest_image_path + "-recv")
            access = self._dest_access.array[:bitmap_bytes(len(pages))]
            remote = SwapFaults(self._received.array[:len(pages)], swap["host"], swap["migration"], self.guest.dilation)
        return self.guest.resume(pages, DirtyLog(self._dest_log.array, len(pages)), remote=remote, access=access)

    def postcopy_status(self) -> dict:
        """Post-copy's figures on the destination (faults, latency, blocktime), or {} when none ran."""
        r = self.guest.remote
        return r.status(self.memory_scale) if r is not None else {}

    def split_status(self) -> dict:
        """Remote paging's figures after a split migration, or {} when none ran."""
        r = self.guest.remote
        return r.status() if isinstance(r, (SplitMemory, SwapFaults)) else {}

    def split_where(self) -> np.ndarray | None:
        """The main host's network page table now (host per page), or None."""
        r = self.guest.remote
        with self.guest._lock:  # between ticks: no fault half done
            return r.where() if isinstance(r, SplitMemory) else None

    def written_on_destination(self) -> np.ndarray:
        """Pages the guest wrote since a post-copy switch-over (empty when none)."""
        r = self.guest.remote
        return np.flatnonzero(r.written) if r is not None else np.empty(0, dtype=np.int64)

    def set_rate_factor(self, factor: float) -> None:
        """A scheduled event: scale the workload's offered rate (1 = as configured)."""
        self.guest.rate_factor = factor

    def progress(self) -> tuple[float, float, dict]:
        """(real time, cumulative operations) of the latest tick, and, while a
        migration logs its writes or throttles it, the vCPUs' throttle and dirty rates;
        after a split migration, `remote_paging`: its figures so far (`split_status`);
        after a post-copy switch, `postcopy_faults` and `postcopy_blocktime_s` so far
        (emulated faults and seconds, cumulative: the report's faults over time)."""
        s = self.guest.samples
        t, ops = s[-1] if s else (time.monotonic(), 0.0)
        g = self.guest
        extra = g.throttle.status() if g.logging or g.throttle.active else {}
        if isinstance(g.remote, SplitMemory):
            extra = extra | {"remote_paging": self.split_status()}
        elif isinstance(g.remote, RemoteMemory):
            extra = extra | {"postcopy_faults": g.remote.emulated_faults,
                             "postcopy_blocktime_s": g.remote.blocked_s / g.dilation}
        return t, ops, extra

    def timeline(self) -> tuple[list, float]:
        return list(self.guest.samples), self.guest.faults

    def stop(self) -> None:
        self.guest.stop()

    def close(self) -> None:
        if self.guest is not None:
            self.guest.stop()

