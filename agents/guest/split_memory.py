"""Remote paging after a split migration, as the guest's vCPUs meet it (S-memV §IV-E).

The VM runs on the main host, which holds only part of its memory; the
network page table (agents/split/paging.py `RemotePager`) says which host
holds each page. Before its vCPUs read or write pages, the guest checks
them there (QEMU with S-memV: a userfaultfd fault on a page not present);
for each page on a sub-host the main host asks that sub-host's memory
server for the faulting page first, then the rest of its chunk, and, to
stay within its memory, pages out its chunk with the smallest chunk history
(or a random one) to the same sub-host. The vCPUs really wait: the guest
thread makes the requests (real Ray calls to the sub-host's HostAgent,
real page bytes written into the main host's image) and is blocked at
least as long as the emulated network would take: a round trip plus the
chunk's bytes at the link's rate. If the real calls take longer than that
the excess is reported (`overrun_s`): the run is saturated there.

The access history the source sent with the main host's pages goes on
being kept here (the guest's accesses are marked, collected and aged on
the same schedule), so page-out decisions follow the VM's current use.

Units: a real chunk stands for one emulated chunk (chunks scale with
memory, agents/techniques/split.py), so faults count the same at any
memory_scale; page and byte counts are emulated; times emulated seconds.
"""
from __future__ import annotations

import time

import numpy as np

from agents.guest.remote_memory import LatencyHistogram
from agents.split.history import AccessHistory, bitmap_bytes, mark_accessed
from agents.split.paging import MAIN, RemotePager

PAGE = 4096


class SplitMemory:
    """The main host's remote pager, in the guest's process.

    `image`: the main host's image (n, 4096); `page_host`: uint8 (n,) after
    the split; `history`: uint8 (n,) page histories sent by the source;
    `servers`: sub-host number -> its HostAgent (memory server of migration
    `m`); `capacity`: chunks the main host holds; `link`: (one-way delay s,
    bytes/s), emulated; `collect_s`/`age_every`: the history's schedule (real s).
    """

    faults_on_reads = True

    def __init__(self, image: np.ndarray, page_host: np.ndarray, history: np.ndarray, chunk_pages: int,
                 capacity: int, policy: str, servers: dict, m: int, link: tuple[float, float],
                 dilation: float, memory_scale: float, collect_s: float, age_every: int, seed: int = 0) -> None:
        n = len(image)
        self.image, self.servers, self.m = image, servers, m
        self.history = AccessHistory(n, chunk_pages)
        self.history.restore(history)
        chunk_host = page_host[::chunk_pages].copy()
        self.pager = RemotePager(chunk_host, chunk_pages, n, self.history.chunk, capacity, policy, seed)
        self.one_way_s, self.rate = link
        self.dilation, self.scale = dilation, memory_scale
        self.chunk_bytes = chunk_pages * PAGE / memory_scale  # emulated
        self.bitmap = np.zeros(bitmap_bytes(n), dtype=np.uint8)
        self.collect_s, self.age_every = collect_s, age_every
        self._next_collect, self._collections = time.monotonic() + collect_s, 0
        self.histogram = LatencyHistogram()
        self.faults = self.page_ins = self.page_outs = 0
        self.bytes_in = self.bytes_out = 0.0
        self.blocked_s = self.overrun_s = 0.0  # emulated
        self.first_fault = self.last_fault = None  # real monotonic
        self.written = np.zeros(n, dtype=bool)

    # --- what the guest calls ----------------------------------------------
    def ensure(self, idx: np.ndarray) -> float:
        """Page in whatever of `idx` is not on the main host; returns real seconds blocked."""
        self._account(idx)
        away = idx[self.pager.table[idx] != MAIN]
        blocked = 0.0
        for page in np.unique(away).tolist():  # one fault per chunk: the rest of it comes along
            if self.pager.table[page] != MAIN:
                blocked += self._fault(page)
        return blocked

    def wrote(self, idx: np.ndarray) -> None:
        self.written[idx] = True

    # --- the mechanism ---------------------------------------------------------
    def _account(self, idx: np.ndarray) -> None:
        mark_accessed(self.bitmap, idx)
        now = time.monotonic()
        if now >= self._next_collect:
            self.history.collect(self.bitmap)
            self._collections += 1
            if self._collections % self.age_every == 0:
                self.history.age()
            self._next_collect = now + self.collect_s

    def _fault(self, page: int) -> float:
        import ray
        plan = self.pager.plan(page)
        server = self.servers[plan.host]
        t0 = time.monotonic()
        self.image[page] = ray.get(server.swap.remote(self.m, plan.page_in[:1], None, None))[0]
        first = time.monotonic() - t0
        out = self.image[plan.page_out].copy() if plan.chunk_out is not None else None
        rest = ray.get(server.swap.remote(self.m, plan.page_in[1:], plan.page_out, out))
        self.image[plan.page_in[1:]] = rest
        if out is not None:
            self.image[plan.page_out] = 0  # its frames are given back
        self.pager.apply(plan)
        return self._wait(t0, first, plan)

    def _wait(self, t0: float, first_real: float, plan) -> float:
        """Block until the emulated network would have brought the chunk; record the fault."""
        rtt = 2 * self.one_way_s
        first_emu = rtt + PAGE / self.rate
        chunk_emu = rtt + self.chunk_bytes / self.rate
        target = t0 + chunk_emu * self.dilation
        now = time.monotonic()
        if now < target:
            time.sleep(target - now)
        blocked_real = time.monotonic() - t0
        self.overrun_s += max(0.0, (now - target) / self.dilation)
        self.histogram.add(max(first_emu, first_real / self.dilation) * 1e6)
        self.faults += 1
        self.page_ins += len(plan.page_in)
        self.page_outs += len(plan.page_out)
        self.bytes_in += len(plan.page_in) * PAGE / self.scale
        self.bytes_out += len(plan.page_out) * PAGE / self.scale
        self.blocked_s += blocked_real / self.dilation
        self.first_fault = self.first_fault or t0
        self.last_fault = time.monotonic()
        return blocked_real

    def status(self) -> dict:
        """Remote paging's figures, emulated: faults, pages in and out, latency, bandwidth."""
        span = (self.last_fault - self.first_fault) / self.dilation if self.faults else 0.0
        return {"faults": self.faults, "page_ins": self.page_ins / self.scale, "page_outs": self.page_outs / self.scale,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "blocked_s": self.blocked_s,
                "overrun_s": self.overrun_s, "paging_span_s": span,
                "bandwidth_gbps": (self.bytes_in + self.bytes_out) * 8 / span / 1e9 if span > 0 else 0.0,
                "fault_latency": {k.replace("postcopy_latency_dist", "histogram"): v
                                  for k, v in self.histogram.summary().items()},
                "on_main_chunks": self.pager.on_main, "capacity_chunks": self.pager.capacity}

    def where(self) -> np.ndarray:
        """The network page table (a copy): host per page, 0 the main host."""
        return self.pager.table.copy()
