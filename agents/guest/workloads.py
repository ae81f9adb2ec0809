"""Guest workloads: which pages a guest writes, and how many operations it does.

Each workload turns a slice of emulated time into operations (what the
application would count: requests, page writes) and the real pages written.
Rates are given in emulated units; `memory_scale` converts page counts (a
real page stands for 1/memory_scale emulated pages). Pure: no threads, no
clocks; the guest runtime drives them.

Reads (`reads`): the pages an operation reads without writing them, for
the access history of split migration (agents/split/history.py; reads set
the EPT accessed bit as writes do): memcached's gets read their values,
GNU sort reads its input. Only the workloads with a read pattern return any.

Most workloads rewrite whole pages (`step`: the pages, filled by the guest
from its content templates). Those of the delta-compression experiments
write parts of pages themselves (`writes_in_place`, `write`): the lmbench-like
memory write benchmark, HD video transcoding and a transactional ERP.
"""
from __future__ import annotations

import numpy as np

from agents.guest.content import PAGE, bump_bands, write_runs


class Workload:
    #: emulated CPU cost of one operation on a vCPU (seconds)
    op_cost_s = 2e-6

    def __init__(self, npages: int, memory_scale: float, rng: np.random.Generator) -> None:
        self.npages = npages
        self.scale = memory_scale
        self.rng = rng
        self._write_carry = 0.0
        self._read_carry = 0.0

    #: True when the workload writes parts of pages itself (`write`), not whole pages (`step`)
    writes_in_place = False
    #: pages it may write, all from page 0 (its working set, sweep, frames, or log + session + tables)
    footprint = 0

    def write(self, pages: np.ndarray, ops: float) -> np.ndarray:
        """Do the writes of `ops` operations into `pages`; returns the real pages written."""
        raise NotImplementedError

    def ops_rate(self) -> float:
        """Offered operations per emulated second."""
        raise NotImplementedError

    def step(self, ops: float) -> np.ndarray:
        """Real page numbers written by `ops` operations (may repeat)."""
        raise NotImplementedError

    def reads(self, ops: float) -> np.ndarray:
        """Real page numbers read (not written) by `ops` operations (may repeat); none by default."""
        return np.empty(0, dtype=np.int64)

    def _real_reads(self, emulated_reads: float) -> int:
        want = emulated_reads * self.scale + self._read_carry
        n = int(want)
        self._read_carry = want - n
        return n

    def _real_writes(self, emulated_writes: float) -> int:
        want = emulated_writes * self.scale + self._write_carry
        n = int(want)
        self._write_carry = want - n
        return n


class Idle(Workload):
    """An idle guest: a timer heartbeat, no writes."""

    def ops_rate(self) -> float:
        return 100.0

    def step(self, ops: float) -> np.ndarray:
        return np.empty(0, dtype=np.int64)


class UniformWriter(Workload):
    """Writes pages chosen uniformly in a working set; one op = one page write.

    An optional hot set (the first `hot_pages` of the working set) is written
    at `hot_pages_per_s` on top, in step with the operations (e.g. memcached's
    hash table and LRU heads, touched by every get)."""

    op_cost_s = 1e-6

    def __init__(self, npages, memory_scale, rng, dirty_pages_per_s: float, working_set_pages: int,
                 hot_pages: int = 0, hot_pages_per_s: float = 0.0) -> None:
        super().__init__(npages, memory_scale, rng)
        self.rate = dirty_pages_per_s
        self.ws = max(1, min(working_set_pages, npages))
        self.hot = max(0, min(hot_pages, self.ws))
        self.hot_rate = hot_pages_per_s if self.hot else 0.0
        self._hot_carry = 0.0
        self.footprint = self.ws

    def ops_rate(self) -> float:
        return self.rate

    def step(self, ops: float) -> np.ndarray:
        idx = self.rng.integers(0, self.ws, self._real_writes(ops))
        if not self.hot_rate or not self.rate:
            return idx
        want = ops / self.rate * self.hot_rate * self.scale + self._hot_carry
        n = int(want)
        self._hot_carry = want - n
        return np.concatenate([idx, self.rng.integers(0, self.hot, n)])


class HotsetWriter(Workload):
    """memcached-like: Zipf-skewed keys over a working set; a fraction of ops are sets."""

    op_cost_s = 8e-6

    def __init__(self, npages, memory_scale, rng, ops_per_s: float, write_fraction: float,
                 zipf_s: float, working_set_pages: int) -> None:
        super().__init__(npages, memory_scale, rng)
        self.rate = ops_per_s
        self.write_fraction = write_fraction
        self.zipf_s = zipf_s
        self.ws = max(1, min(working_set_pages, npages))
        # Hot keys are spread over the working set, not packed at its start.
        self.placement = rng.permutation(self.ws)
        self.cdf = zipf_cdf(self.ws, zipf_s)
        self.footprint = self.ws

    def ops_rate(self) -> float:
        return self.rate

    def step(self, ops: float) -> np.ndarray:
        n = self._real_writes(ops * self.write_fraction)
        return self.placement[zipf_ranks(self.cdf, n, self.rng)]

    def reads(self, ops: float) -> np.ndarray:
        """The gets: each reads its value's page, Zipf-skewed like the sets."""
        n = self._real_reads(ops * (1.0 - self.write_fraction))
        return self.placement[zipf_ranks(self.cdf, n, self.rng)]


class ReadMostly(Workload):
    """A read-mostly hot set (GNU sort's input, memcached's values): reads
    pages uniformly in a read set that is never written, and writes pages
    uniformly in a (small) working set; one op = one page read or written.

    Layout: the working set is the first `working_set_pages` pages (the
    footprint), the read set the last `read_set_pages` of memory (so a split
    that fills its tail in page order does not take it by chance)."""

    op_cost_s = 1e-6

    def __init__(self, npages, memory_scale, rng, reads_per_s: float, read_set_pages: int,
                 dirty_pages_per_s: float = 0.0, working_set_pages: int = 0) -> None:
        super().__init__(npages, memory_scale, rng)
        self.ws = max(0, min(working_set_pages, npages - 1))
        self.read_hi = npages
        self.read_lo = max(self.ws, npages - max(1, read_set_pages))
        self.read_rate, self.write_rate = reads_per_s, dirty_pages_per_s if self.ws else 0.0
        self.footprint = self.ws

    def ops_rate(self) -> float:
        return self.read_rate + self.write_rate

    def _share(self, ops: float, rate: float) -> float:
        total = self.ops_rate()
        return ops * rate / total if total else 0.0

    def step(self, ops: float) -> np.ndarray:
        n = self._real_writes(self._share(ops, self.write_rate))
        return self.rng.integers(0, self.ws, n) if n else np.empty(0, dtype=np.int64)

    def reads(self, ops: float) -> np.ndarray:
        n = self._real_reads(self._share(ops, self.read_rate))
        return self.rng.integers(self.read_lo, self.read_hi, n)


def zipf_cdf(n: int, s: float) -> np.ndarray:
    """(n,) float64 CDF of Zipf(s) bounded to ranks 0..n-1 (P(rank k) ∝ (k+1)^-s); last entry 1.

    Bounded, not numpy's unbounded `zipf` folded back with a modulo, which
    puts the tail's mass (17% at s=1.2 over 4,096 ranks) on the wrong ranks.
    """
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -s)
    return cdf / cdf[-1]


def zipf_ranks(cdf: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) int64 ranks drawn from `cdf` by inverse transform."""
    ranks = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(ranks, len(cdf) - 1)  # guards u within rounding of 1


class Sweeper(Workload):
    """RapidWrite (S-memV §V): write `sweep` pages in order, then sleep, and again."""

    op_cost_s = 0.5e-6

    def __init__(self, npages, memory_scale, rng, sweep_pages: int, write_bytes_s: float, sleep_s: float) -> None:
        super().__init__(npages, memory_scale, rng)
        self.sweep = max(1, min(sweep_pages, npages))
        self.footprint = self.sweep
        self.rate = write_bytes_s / 4096
        self.sleep_s = sleep_s
        self.cursor = 0
        self.asleep_for = 0.0

    def ops_rate(self) -> float:
        return self.rate

    def advance(self, dt: float) -> float:
        """Emulated seconds of `dt` that are awake (the rest is the sleep)."""
        if self.asleep_for >= dt:
            self.asleep_for -= dt
            return 0.0
        awake = dt - self.asleep_for
        self.asleep_for = 0.0
        return awake

    def step(self, ops: float) -> np.ndarray:
        n = self._real_writes(ops)
        out = []
        while n > 0:
            take = min(n, self.sweep - self.cursor)
            out.append(np.arange(self.cursor, self.cursor + take))
            self.cursor += take
            n -= take
            if self.cursor >= self.sweep:
                self.cursor = 0
                self.asleep_for = self.sleep_s
                self._write_carry = 0.0
                break
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


class MemWriter(Workload):
    """lmbench-like memory write benchmark: `bytes_per_write` new bytes at a
    random offset of a random page of the working set, one op per write."""

    op_cost_s = 0.2e-6
    writes_in_place = True

    def __init__(self, npages, memory_scale, rng, writes_per_s: float, bytes_per_write: int,
                 working_set_pages: int) -> None:
        super().__init__(npages, memory_scale, rng)
        self.rate = writes_per_s
        self.nbytes = max(1, min(int(bytes_per_write), PAGE))
        self.ws = max(1, min(working_set_pages, npages))
        self.footprint = self.ws

    def ops_rate(self) -> float:
        return self.rate

    def write(self, pages: np.ndarray, ops: float) -> np.ndarray:
        n = self._real_writes(ops)
        idx = self.rng.integers(0, self.ws, n)
        write_runs(pages, idx, self.rng.integers(0, PAGE - self.nbytes + 1, n), self.nbytes, self.rng)
        return idx


class VideoTranscoder(Workload):
    """HD video transcoding: frame buffers rewritten `fps` times a second.

    Between two frames most of the picture stays; what moves is a part of
    each page of the frame buffers (`changed_fraction` of its bytes, at an
    offset that differs between neighbouring pages). One op is one frame.
    """

    writes_in_place = True
    GROUPS = 8

    def __init__(self, npages, memory_scale, rng, frame_pages: int, fps: float, changed_fraction: float) -> None:
        super().__init__(npages, memory_scale, rng)
        self.frame_pages = max(1, min(frame_pages, npages))
        self.footprint = self.frame_pages
        self.fps = fps
        self.op_cost_s = 0.5 / fps  # half a vCPU to transcode
        self.band = max(1, min(PAGE, int(round(changed_fraction * PAGE))))
        self.offsets = rng.integers(0, PAGE - self.band + 1, self.GROUPS)
        self._frame_carry = 0.0
        self._frame = 0

    def ops_rate(self) -> float:
        return self.fps

    def write(self, pages: np.ndarray, ops: float) -> np.ndarray:
        want = ops + self._frame_carry
        frames = int(want)
        self._frame_carry = want - frames
        if frames == 0:
            return np.empty(0, dtype=np.int64)
        self._frame += frames
        bump_bands(pages, 0, self.frame_pages, self.offsets, self.band, frames)
        return np.arange(self.frame_pages)


class Erp(Workload):
    """A transactional ERP. Each transaction (one op):

    * updates `writes_per_op` records of `record_bytes` in its tables, spread
      uniformly over the working set: small changes to many pages;
    * appends `log_bytes_per_op` to a circular redo log;
    * rolls its session context in and out of the work processes' session
      memory: `session_kib_per_op` rewritten whole, cycling through an area of
      `session_pages` (SAP's roll area), which no delta can shorten.

    Memory layout from page 0: log, session area, tables.
    """

    op_cost_s = 20e-6
    writes_in_place = True

    def __init__(self, npages, memory_scale, rng, ops_per_s: float, writes_per_op: int, record_bytes: int,
                 log_bytes_per_op: int, log_pages: int, session_pages: int, session_kib_per_op: float,
                 working_set_pages: int) -> None:
        super().__init__(npages, memory_scale, rng)
        self.rate = ops_per_s
        self.writes_per_op = writes_per_op
        self.record = max(1, min(record_bytes, PAGE))
        self.log_bytes = min(log_bytes_per_op, PAGE)
        self.log_pages = max(1, min(log_pages, npages // 4)) if self.log_bytes else 0
        self.session_pages = max(1, min(session_pages, npages // 4)) if session_kib_per_op and session_pages else 0
        self.session_bytes_per_op = session_kib_per_op * 1024
        self.first_table = self.log_pages + self.session_pages
        self.tables = max(1, min(working_set_pages, npages - self.first_table))
        self.footprint = self.first_table + self.tables
        self._log_cursor = 0  # log entries written, modulo the log's capacity
        self._session_cursor = 0
        self._carry = {"log": 0.0, "session": 0.0}

    def ops_rate(self) -> float:
        return self.rate

    def _real(self, key: str, emulated_units: float) -> int:
        want = emulated_units * self.scale + self._carry[key]
        n = int(want)
        self._carry[key] = want - n
        return n

    def write(self, pages: np.ndarray, ops: float) -> np.ndarray:
        n = self._real_writes(ops * self.writes_per_op)
        idx = self.first_table + self.rng.integers(0, self.tables, n)
        write_runs(pages, idx, self.rng.integers(0, PAGE // self.record, n) * self.record, self.record, self.rng)
        out = [idx]
        entries = self._real("log", ops) if self.log_pages else 0
        if entries:
            # Appended in order, wrapping around; an entry never straddles a page.
            per_page = PAGE // self.log_bytes
            k = (self._log_cursor + np.arange(entries, dtype=np.int64)) % (self.log_pages * per_page)
            self._log_cursor = int(k[-1] + 1)
            log_idx = k // per_page
            write_runs(pages, log_idx, (k % per_page) * self.log_bytes, self.log_bytes, self.rng)
            out.append(np.unique(log_idx))
        rolled = self._real("session", ops * self.session_bytes_per_op / PAGE) if self.session_pages else 0
        if rolled:
            rows = self.log_pages + (self._session_cursor + np.arange(min(rolled, self.session_pages))) % self.session_pages
            self._session_cursor = int((self._session_cursor + rolled) % self.session_pages)
            pages[rows] += np.uint8(1 + self.rng.integers(0, 255))  # every byte changes
            out.append(rows)
        return np.concatenate(out)


def make_workload(spec: dict, npages: int, memory_scale: float, seed: int) -> Workload:
    """Build from the scenario's `vms[].workload` table (sizes in GiB)."""
    rng = np.random.default_rng(seed)
    kind = spec["kind"]
    gib_pages = (1 << 30) / 4096 * memory_scale

    def ws() -> int:
        w = spec.get("working_set_gib")
        return npages if w is None else int(round(w * gib_pages))

    if kind == "idle":
        return Idle(npages, memory_scale, rng)
    if kind == "uniform":
        return UniformWriter(npages, memory_scale, rng, spec["dirty_pages_per_s"], ws(),
                             int(round(spec.get("hot_set_gib", 0.0) * gib_pages)), spec.get("hot_pages_per_s", 0.0))
    if kind == "hotset":
        return HotsetWriter(npages, memory_scale, rng, spec["ops_per_s"], spec.get("write_fraction", 0.1),
                            spec.get("zipf_s", 1.2), ws())
    if kind == "readmostly":
        return ReadMostly(npages, memory_scale, rng, spec["reads_per_s"], int(round(spec["read_set_gib"] * gib_pages)),
                          spec.get("dirty_pages_per_s", 0.0), int(round(spec.get("working_set_gib", 0.0) * gib_pages)))
    if kind == "sweeper":
        return Sweeper(npages, memory_scale, rng, int(round(spec["sweep_gib"] * gib_pages)),
                       spec.get("write_mbytes_s", 1000) * 1e6, spec.get("sleep_s", 5))
    mib_pages = gib_pages / 1024
    if kind == "memwrite":
        return MemWriter(npages, memory_scale, rng, spec["writes_per_s"], spec.get("bytes_per_write", 64), ws())
    if kind == "video":
        return VideoTranscoder(npages, memory_scale, rng, int(round(spec["frame_mib"] * mib_pages)),
                               spec.get("fps", 25), spec.get("changed_fraction", 0.1))
    if kind == "erp":
        return Erp(npages, memory_scale, rng, spec["ops_per_s"], spec.get("writes_per_op", 8),
                   spec.get("record_bytes", 128), spec.get("log_bytes_per_op", 256),
                   int(round(spec.get("log_mib", 64) * mib_pages)), int(round(spec.get("session_mib", 0) * mib_pages)),
                   spec.get("session_kib_per_op", 64), ws())
    raise ValueError(f"unknown workload kind {kind!r}")


def footprint_gib(spec: dict, memory_gib: float) -> float:
    """GiB from the first page that the workload `spec` (a scenario's
    `vms[].workload` table) may write: what `make_workload(...).footprint`
    covers, without building it."""
    kind, ws = spec["kind"], spec.get("working_set_gib")
    if kind in ("uniform", "hotset", "memwrite"):
        gib = memory_gib if ws is None else ws
    elif kind == "readmostly":
        gib = spec.get("working_set_gib", 0.0)  # its read set is never written
    elif kind == "sweeper":
        gib = spec["sweep_gib"]
    elif kind == "video":
        gib = spec["frame_mib"] / 1024
    elif kind == "erp":
        log = spec.get("log_mib", 64) / 1024 if spec.get("log_bytes_per_op", 256) else 0.0
        session = spec.get("session_mib", 0) / 1024 if spec.get("session_kib_per_op", 64) else 0.0
        gib = log + session + (memory_gib - log - session if ws is None else ws)
    else:
        gib = 0.0  # idle writes nothing
    return min(gib, memory_gib)
