"""GuestAgent: a Ray actor that plays a VM's vCPUs.

Its workload (agents/guest/) writes into the image of the host the VM runs
on; at switchover it moves to the destination's image.
"""
from __future__ import annotations

import time

import ray

from agents.datapath.clock import precise_threads
from agents.datapath.shm import Region
from agents.guest.content import assign_classes, template_pools
from agents.guest.dirty_log import DirtyLog
from agents.guest.vcpus import Guest
from agents.guest.workloads import make_workload


@ray.remote(num_cpus=0, max_concurrency=4)
class GuestAgent:
    def __init__(self, name: str, image_path: str, workload: dict, content: dict, vcpus: int,
                 memory_scale: float, dilation: float, fault_s: float, seed: int, io_bound: bool = False) -> None:
        precise_threads()
        self.name = name
        self.region = Region.attach(image_path)
        self.log_region = Region.attach(image_path + "-log")
        pages = self.region.pages()
        npages = len(pages)
        self.guest = Guest(pages, make_workload(workload, npages, memory_scale, seed),
                           assign_classes(npages, content, seed), template_pools(seed),
                           vcpus, dilation, fault_s, seed, log=DirtyLog(self.log_region.array, npages),
                           io_bound=io_bound)
        self._dest: Region | None = None

    def start(self) -> float:
        self.guest.start()
        return time.monotonic()

    def pause(self) -> float:
        return self.guest.pause()

    def resume(self) -> float:
        return self.guest.resume()

    def resume_on(self, dest_image_path: str) -> float:
        """Switchover: run on the destination's image (and its dirty log) from now on."""
        self._dest = Region.attach(dest_image_path)
        self._dest_log = Region.attach(dest_image_path + "-log")
        pages = self._dest.pages()
        return self.guest.resume(pages, DirtyLog(self._dest_log.array, len(pages)))

    def set_rate_factor(self, factor: float) -> None:
        """A scheduled event: scale the workload's offered rate (1 = as configured)."""
        self.guest.rate_factor = factor

    def progress(self) -> tuple[float, float, dict]:
        """(real time, cumulative operations) of the latest tick, and, while a
        migration logs its writes or throttles it, the vCPUs' throttle and dirty rates."""
        s = self.guest.samples
        t, ops = s[-1] if s else (time.monotonic(), 0.0)
        g = self.guest
        return t, ops, g.throttle.status() if g.logging or g.throttle.active else {}

    def timeline(self) -> tuple[list, float]:
        return list(self.guest.samples), self.guest.faults

    def stop(self) -> None:
        self.guest.stop()

    def close(self) -> None:
        self.guest.stop()

