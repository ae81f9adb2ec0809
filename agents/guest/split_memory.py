"""Remote paging after a split migration, as the guest's vCPUs meet it (S-memV §IV-E).

The VM runs on the main host, which holds only part of its memory; the
network page table (agents/split/paging.py `RemotePager`) says which host
holds each page. Before its vCPUs read or write pages, the guest checks
them there (QEMU with S-memV: a userfaultfd fault on a page not present);
for each page on a sub-host the main host asks that sub-host's memory
server for the faulting page first, then the rest of its chunk, and, to
stay within its memory, pages out its chunk with the smallest chunk history
(or a random one) to the same sub-host. The vCPUs really wait, but only
for the faulting page (the paper: QEMU-KVM handles it first and resumes
the vCPU as early as possible): the guest thread makes the requests (real
Ray calls to the sub-host's HostAgent, real page bytes written into the
main host's image) and is blocked until the emulated network has brought
the faulting page. The rest of the chunk comes behind it; a page of it the
guest touches before it has arrived waits for it.

The bytes cross the scenario's link between the main host and the sub-host
(cluster/topology.py `Topology.paging`): the pager books each fault's
messages on that LinkAgent (`carry_paging`), which queues them behind the
paging already on it at the rate a migration may take there (background
traffic and other migrations' batches share it) and says when each
arrives. If the real calls take longer than the emulated arrival the
excess is reported (`overrun_s`): the run is saturated there.

A fault over a paging link that is down waits, as TCP keeps a request
unacknowledged; it is asked again until the link is back (the wait is
`link_down_s`) or `tcp_user_timeout_ms` has passed: then the connection to
the memory server gives up and, S-memV having no fault tolerance (§VII),
the VM cannot go on: `VMLost` stops its vCPUs where they are and the
status says how many pages each host holds (`lost`).

The access history the source sent with the main host's pages goes on
being kept here (the guest's accesses are marked, collected and aged on
the same schedule), so page-out decisions follow the VM's current use.

Units: a real chunk stands for one emulated chunk (chunks scale with
memory, agents/techniques/split.py), so faults count the same at any
memory_scale; a real page's bytes stand for 1/memory_scale emulated pages,
so the faulting (emulated) page is memory_scale of a real page on the
link. Page and byte counts are emulated; times emulated seconds.
"""
from __future__ import annotations

import time

import numpy as np

from agents.datapath.clock import sleep_until
from agents.faults import VMLost
from agents.guest.remote_memory import LatencyHistogram
from agents.split.history import AccessHistory, bitmap_bytes, mark_accessed
from agents.split.paging import MAIN, RemotePager

PAGE = 4096


class SplitMemory:
    """The main host's remote pager, in the guest's process.

    `image`: the main host's image (n, 4096); `page_host`: uint8 (n,) after
    the split; `history`: uint8 (n,) page histories sent by the source;
    `servers`: sub-host number -> its HostAgent (memory server of migration
    `m`); `capacity`: chunks the main host holds; `links`: sub-host number ->
    (the LinkAgent between it and the main host, whether page-ins cross it the
    way it is listed); `collect_s`/`age_every`: the history's schedule (real s);
    `hosts`: the hosts' names (0 the main host); `timeout_ms`: the paging
    connections' tcp_user_timeout_ms (emulated), `timeout_s` the same in real s.
    """

    faults_on_reads = True
    LINK_DOWN_POLL_S = 0.005  # real: how often a fault over a link that is down asks again

    def __init__(self, image: np.ndarray, page_host: np.ndarray, history: np.ndarray, chunk_pages: int,
                 capacity: int, policy: str, servers: dict, m: int, links: dict,
                 dilation: float, memory_scale: float, collect_s: float, age_every: int, seed: int = 0,
                 hosts: list[str] | None = None, timeout_ms: float = 30_000, timeout_s: float | None = None) -> None:
        n = len(image)
        self.hosts = hosts or [f"host{d}" for d in range(1 + len(servers))]
        self.timeout_ms = timeout_ms
        self.timeout_s = timeout_ms / 1000 * dilation if timeout_s is None else timeout_s
        self.lost: dict | None = None
        self.image, self.servers, self.m, self.links = image, servers, m, links
        self.history = AccessHistory(n, chunk_pages)
        self.history.restore(history)
        chunk_host = page_host[::chunk_pages].copy()
        self.pager = RemotePager(chunk_host, chunk_pages, n, self.history.chunk, capacity, policy, seed)
        self.dilation, self.scale = dilation, memory_scale
        self.bitmap = np.zeros(bitmap_bytes(n), dtype=np.uint8)
        self.collect_s, self.age_every = collect_s, age_every
        self._next_collect, self._collections = time.monotonic() + collect_s, 0
        self.arrival = np.zeros(n)  # real time each page's bytes are (or were) in
        self.in_flight = np.zeros(n, dtype=bool)  # the rest of the last chunk, its real bytes not yet written
        self._pending = None  # (the Ray call bringing them, their pages)
        self.histogram = LatencyHistogram()
        self.faults = self.page_ins = self.page_outs = 0
        self.bytes_in = self.bytes_out = 0.0
        self.blocked_s = self.overrun_s = self.link_down_s = 0.0  # emulated
        self.first_fault = self.last_fault = None  # real monotonic
        self.written = np.zeros(n, dtype=bool)

    # --- what the guest calls ----------------------------------------------
    def ensure(self, idx: np.ndarray, in_order: bool = True) -> float:
        """Page in whatever of `idx` is not on the main host, and wait for pages of
        a chunk still on its way; returns real seconds blocked. `in_order` is the post-copy
        handler's (agents/guest/remote_memory.py); here every chunk away is faulted in turn either way."""
        self._account(idx)
        t0 = time.monotonic()
        settled = self._pending is not None and bool(self.in_flight[idx].any())
        if settled:
            self._settle()
        away = idx[self.pager.table[idx] != MAIN]
        for page in np.unique(away).tolist():  # one fault per chunk: the rest of it comes along
            if self.pager.table[page] != MAIN:
                self._fault(page)
        until = float(self.arrival[idx].max()) if len(idx) else 0.0
        if not (settled or len(away)) and until <= t0:
            return 0.0
        sleep_until(until)
        blocked = time.monotonic() - t0
        self.blocked_s += blocked / self.dilation
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

    def _fault(self, page: int) -> None:
        """The faulting page from its sub-host, written here and waited for; the rest of its
        chunk and the page-out asked for behind it (settled before anything touches them)."""
        import ray
        if self._pending is not None:
            self._settle()
        plan = self.pager.plan(page)
        server = self.servers[plan.host]
        t0 = time.monotonic()
        # The booking on the link and the faulting page's real bytes, asked for together.
        book = self._book(plan)
        booked = book()
        fetch = server.swap.remote(self.m, plan.page_in[:1], None, None)
        down, arrivals = ray.get(booked)
        if down:  # the request never crossed: the page stays on its sub-host while the link is down
            head = plan.page_in[:1]
            ray.get(server.swap.remote(self.m, head[:0], head, ray.get(fetch)))
            t0, arrivals = self._wait_for_link(plan, book)
            fetch = server.swap.remote(self.m, head, None, None)
        self.image[page] = ray.get(fetch)[0]
        first, rest = t0 + arrivals[0], t0 + arrivals[1]
        out = self.image[plan.page_out].copy() if plan.chunk_out is not None else None
        others = plan.page_in[1:]
        self._pending = (server.swap.remote(self.m, others, plan.page_out, out), others)
        self.in_flight[others] = True
        if out is not None:
            self.image[plan.page_out] = 0  # its frames are given back
        self.pager.apply(plan)
        self.arrival[page] = first
        if len(others):  # behind the faulting page, in order, until the chunk's last byte
            self.arrival[others] = first + (rest - first) * np.arange(1, len(others) + 1) / len(others)
        now = time.monotonic()
        self.overrun_s += max(0.0, (now - first) / self.dilation)
        self._record(plan, t0, max(first, now))

    def _book(self, plan):
        """A call that books the fault's bytes on the link to its sub-host."""
        link, forward = self.links[plan.host]
        page_real = PAGE * self.scale  # one emulated page, in real bytes on the link
        sizes = [page_real, len(plan.page_in) * PAGE - page_real]
        return lambda: link.carry_paging.remote(forward, sizes, len(plan.page_out) * PAGE)

    def _wait_for_link(self, plan, book) -> tuple[float, list[float]]:
        """The link to sub-host `plan.host` is down: ask again every LINK_DOWN_POLL_S until it
        is back (returns the real time of the booking that got through and its arrivals) or
        tcp_user_timeout_ms has passed (raises VMLost, the VM stopped here for good)."""
        import ray
        since = time.monotonic()
        while True:
            time.sleep(self.LINK_DOWN_POLL_S)
            t0 = time.monotonic()
            down, arrivals = ray.get(book())
            if not down:
                self.link_down_s += (t0 - since) / self.dilation
                return t0, arrivals
            if t0 - since >= self.timeout_s:
                self.link_down_s += (t0 - since) / self.dilation
                raise VMLost(self._give_up(plan.host))

    def _give_up(self, host: int) -> str:
        """The paging connection to sub-host `host` gave up: what the VM lost, kept in `lost`."""
        counts = np.bincount(self.pager.table, minlength=len(self.hosts)) / self.scale
        reason = (f"remote paging from sub-host \"{self.hosts[host]}\" got no answer for {self.timeout_ms:g} ms "
                  f"(tcp_user_timeout_ms): the paging link is down; the VM's pages there are out of reach "
                  f"and it cannot go on (S-memV has no fault tolerance)")
        self.lost = {"reason": reason, "host": self.hosts[host],
                     "pages_on_host": {name: float(c) for name, c in zip(self.hosts, counts)},
                     "pages_total": len(self.pager.table) / self.scale}
        return reason

    def _settle(self) -> None:
        """Write the rest of the last chunk once its real bytes are here."""
        import ray
        ref, pages = self._pending
        self._pending = None
        self.image[pages] = ray.get(ref)
        self.in_flight[pages] = False

    def _record(self, plan, t0: float, resumed: float) -> None:
        self.histogram.add((resumed - t0) / self.dilation * 1e6)
        self.faults += 1
        self.page_ins += len(plan.page_in)
        self.page_outs += len(plan.page_out)
        self.bytes_in += len(plan.page_in) * PAGE / self.scale
        self.bytes_out += len(plan.page_out) * PAGE / self.scale
        self.first_fault = self.first_fault or t0
        self.last_fault = resumed

    def status(self) -> dict:
        """Remote paging's figures, emulated: faults, pages in and out, latency, bandwidth."""
        span = (self.last_fault - self.first_fault) / self.dilation if self.faults else 0.0
        return {"faults": self.faults, "page_ins": self.page_ins / self.scale, "page_outs": self.page_outs / self.scale,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "blocked_s": self.blocked_s,
                "overrun_s": self.overrun_s, "link_down_s": self.link_down_s, "paging_span_s": span,
                "bandwidth_gbps": (self.bytes_in + self.bytes_out) * 8 / span / 1e9 if span > 0 else 0.0,
                "fault_latency": {k.replace("postcopy_latency_dist", "histogram"): v
                                  for k, v in self.histogram.summary().items()},
                "on_main_chunks": self.pager.on_main, "capacity_chunks": self.pager.capacity} | (
                    {"lost": self.lost} if self.lost else {})

    def where(self) -> np.ndarray:
        """The network page table (a copy): host per page, 0 the main host; every page
        asked for is written first, so the memory servers hold what it says."""
        if self._pending is not None:
            self._settle()
        return self.pager.table.copy()
