"""S-memV split migration (Suetake et al., IEEE CLOUD 2018, §III-IV): the `split` technique.

A large VM goes to one main host and one or more sub-hosts at once. At the
start, the source splits the VM's memory by chunks with its access history
(agents/split/: the 8-bit aging history, the histogram split without
sorting, or a random split for comparison): the chunks most likely to be
used, as many as the main host holds, go to the main host; the others
straight to the memory servers on the sub-hosts, in parallel, each over its
own pipeline and connections (PMigrate's, agents/datapath/pipeline.py).
The split is made once: a page re-sent in a later round goes to the same
host as before, and no remote paging happens during the migration. The
iterations, the stop rule and the stop-and-copy are pre-copy's
(agents/techniques/precopy.py, inherited); the stop-and-copy also sends the
main host the network page table (a byte per page: which host holds it)
and the access history of its pages (a byte per page), with the CPU and
device state.

After the switch-over the VM runs on the main host and pages remotely
(agents/guest/split_memory.py). A failed or cancelled migration leaves the
VM running on its source, whose memory the migration only read.
"""
from __future__ import annotations

import threading
import time
from typing import ClassVar

import numpy as np

from agents.datapath.clock import sleep_until
from agents.datapath.rate_limit import RateLimit
from agents.split.history import chunk_or, nchunks_of
from agents.split.splitting import assign_hosts, lru_split, page_hosts, random_split
from agents.techniques.precopy import PrecopyMigration

GIB = 1 << 30


def chunk_problem(chunk_pages: int, memory_scale: float) -> str | None:
    """Why `chunk_pages` cannot be emulated at `memory_scale` (None: it can): a real
    chunk stands for one emulated chunk, so it must be a whole number of real pages."""
    real = chunk_pages * memory_scale
    if real >= 1 - 1e-9 and abs(real - round(real)) <= 1e-9 * real:
        return None
    step = 1 / memory_scale
    multiple = f"a multiple of {step:g} pages" if abs(step - round(step)) <= 1e-9 * step else "a larger chunk"
    return (f"{chunk_pages} pages at emulation.memory_scale {memory_scale:g} is {real:g} real pages; a chunk must be "
            f"a whole number of real pages (at least one): use {multiple} or raise memory_scale")


def real_chunk_pages(chunk_pages: int, memory_scale: float) -> int:
    """Real pages per chunk: the chunk scales with memory, so a VM has as many
    chunks (and remote paging as many faults) at any memory_scale. ValueError
    when that is not a whole number of real pages (`chunk_problem`)."""
    problem = chunk_problem(chunk_pages, memory_scale)
    if problem:
        raise ValueError(problem)
    return int(round(chunk_pages * memory_scale))


def capacities(hosts_gib: list[float], state_bytes: float, chunk_real: int, memory_scale: float) -> list[int]:
    """Chunks each destination holds: the main host's memory less the VM's
    state, then each sub-host's (rounded up: together they hold the VM)."""
    chunk_emu = chunk_real * 4096 / memory_scale
    main = int((hosts_gib[0] * GIB - state_bytes) // chunk_emu)
    return [max(0, main)] + [int(-(-g * GIB // chunk_emu)) for g in hosts_gib[1:]]


class NicPacer(RateLimit):
    """The shared pacer of a split migration's pipelines: a token bucket with a
    burst of BURST_S at the rate, so the time a consumer spends packing a batch
    is not added to the time its bytes take (a link at line rate stays at
    line rate when one host alone has pages to send)."""

    BURST_S = 0.02

    def pace(self, nbytes: int) -> float:
        with self._lock:
            if not self.rate:
                return time.monotonic()
            self._paid_until = max(self._paid_until, time.monotonic() - self.BURST_S) + nbytes / self.rate
            until = self._paid_until
        sleep_until(until)
        return until


def _over_hosts(name: str, combine, doc: str) -> property:
    """A SplitSink property: SourcePipeline's `name` combined over every host's pipeline."""
    return property(lambda self: combine(getattr(p, name) for p in self.pipelines), doc=doc)


class SplitSink:
    """The source's pipelines to the destination hosts (0: main, 1..k: sub-hosts),
    behind the one sink a technique sends to: each page goes to the pipeline
    of its host (`route`), the hosts' shares in parallel threads; the state
    goes to the main host once every page has arrived."""

    def __init__(self, pipelines: list) -> None:
        self.pipelines = pipelines
        self.page_host: np.ndarray | None = None
        self.pool, self.lock = pipelines[0].pool, pipelines[0].lock  # what the host's poll reports
        # One pacer for all: the source's NIC is shared by the links to its hosts, and
        # whichever host has pages to send may use all of it (work-conserving).
        self.limit = NicPacer()
        for p in pipelines:
            p.limit = self.limit
        self.cap: float | None = None  # the migration's own cap (real bytes/s)
        self.nic: float | None = None  # the source NIC's share for this migration (cluster/orchestrate.py)

    def route(self, page_host: np.ndarray) -> None:
        self.page_host = page_host

    def send_pages(self, vm: int, image: np.ndarray, idx: np.ndarray, phase: str, should_stop=lambda: False,
                   at: float | None = None) -> int:
        hosts = self.page_host[idx]
        parts = [(p, idx[hosts == h]) for h, p in enumerate(self.pipelines)]
        parts = [(p, part) for p, part in parts if len(part)]
        wire = [0] * len(parts)
        errors: list[BaseException] = []

        def send(k: int, pipeline, part) -> None:
            try:
                wire[k] = pipeline.send_pages(vm, image, part, phase, should_stop, at)
            except BaseException as exc:  # re-raised in the migration thread
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(k, p, part), daemon=True) for k, (p, part) in enumerate(parts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return sum(wire)

    # SourcePipeline's figures over every host's pipeline.
    pages_sent = _over_hosts("pages_sent", sum, "Real pages handed to the wire so far.")
    drift_s = _over_hosts("drift_s", sum, "Real seconds passes ended after their stamps.")
    handover_late_s = _over_hosts("handover_late_s", max, "The stop-and-copy's worst lateness after its stamps.")
    pass_ended_at = _over_hosts("pass_ended_at", max, "When the last pass's sending ended (on its last host).")

    def send_state(self, vm: int, state_bytes: int, at: float | None = None) -> None:
        restored = self.drain()  # every host's memory first
        self.pipelines[0].send_state(vm, state_bytes, None if at is None else max(at, restored))

    def set_rate_limit(self, rate_bytes_s: float | None) -> None:
        """The migration's cap over all its hosts together (None: none but the NIC's)."""
        self.cap = rate_bytes_s
        self._pace()

    def set_nic_rate(self, rate_bytes_s: float | None) -> None:
        """What the source's NIC gives this migration's links together (real bytes/s)."""
        self.nic = rate_bytes_s
        self._pace()

    def _pace(self) -> None:
        rates = [r for r in (self.cap, self.nic) if r]
        self.limit.set_rate(min(rates) if rates else None)

    def drain(self) -> float:
        return max(p.drain() for p in self.pipelines)

    def close(self) -> None:
        for p in self.pipelines:
            p.close()


class SplitMigration(PrecopyMigration):
    """Pre-copy to a main host and sub-hosts with an LRU (or random) split by chunks."""

    name: ClassVar[str] = "split"
    splits: ClassVar[bool] = True  # connections to every destination host (cluster/topology.py)

    @classmethod
    def from_options(cls, ctx, o) -> "SplitMigration":
        self = super().from_options(ctx, o)
        self.chunk_pages = real_chunk_pages(o.chunk_pages, ctx.memory_scale)
        self.policy_name = o.split_policy
        self.seed = int(ctx.destination.get("seed", 0))
        self.capacity = capacities(ctx.destination["hosts_gib"], self.state_bytes, self.chunk_pages,
                                   ctx.memory_scale)
        self.page_host = self.sent_history = None
        self.split_report: dict = {}
        return self

    def run(self):
        try:
            self._split()
        except ValueError as exc:  # the hosts cannot hold it after all: nothing was sent
            self.abort("failed", f"split: {exc}")
            self.result.started_at = time.monotonic()
            return self._cancel()
        return super().run()

    def _split(self) -> None:
        """Decide every chunk's host from the access history at the start (§IV-A)."""
        t0 = time.monotonic()
        npages = len(self.image)
        hist = self.ctx.access_history
        page_hist = hist.page.copy() if hist is not None else np.zeros(npages, dtype=np.uint8)
        chunk_hist = (hist.chunk.copy() if hist is not None and hist.chunk_pages == self.chunk_pages
                      else chunk_or(page_hist, self.chunk_pages))
        nchunks = nchunks_of(npages, self.chunk_pages)
        if self.policy_name == "random":
            main = random_split(nchunks, self.capacity[0], np.random.default_rng(self.seed))
        else:
            main = lru_split(chunk_hist, self.capacity[0])
        chunk_host = assign_hosts(main, self.capacity[1:])
        self.page_host = page_hosts(chunk_host, self.chunk_pages, npages)
        self.sent_history = page_hist
        self.sink.route(self.page_host)
        counts = np.bincount(self.page_host, minlength=len(self.capacity))
        # The main host also gets the network page table and its pages' history: a byte per page each.
        self.state_bytes += (npages + int(counts[0])) / self.scale
        self.split_report = {
            "policy": self.policy_name, "chunk_pages": self.chunk_pages / self.scale,
            "chunks": nchunks, "capacity_chunks": self.capacity,
            "pages_by_host": [int(c / self.scale) for c in counts],
            "history_collected": hist is not None, "split_s": time.monotonic() - t0}
        self.ctx.record("split", **{k: v for k, v in self.split_report.items() if k != "capacity_chunks"})

    def report(self) -> dict:
        return super().report() | {"split": self.split_report}
