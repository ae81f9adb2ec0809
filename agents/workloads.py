"""Guest workloads: which pages a guest writes, and how many operations it does.

Each workload turns a slice of emulated time into operations (what the
application would count: requests, page writes) and the real pages written.
Rates are given in emulated units; `memory_scale` converts page counts (a
real page stands for 1/memory_scale emulated pages). Pure: no threads, no
clocks; the guest runtime drives them.
"""
from __future__ import annotations

import numpy as np


class Workload:
    #: emulated CPU cost of one operation on a vCPU (seconds)
    op_cost_s = 2e-6

    def __init__(self, npages: int, memory_scale: float, rng: np.random.Generator) -> None:
        self.npages = npages
        self.scale = memory_scale
        self.rng = rng
        self._write_carry = 0.0

    def ops_rate(self) -> float:
        """Offered operations per emulated second."""
        raise NotImplementedError

    def step(self, ops: float) -> np.ndarray:
        """Real page numbers written by `ops` operations (may repeat)."""
        raise NotImplementedError

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
    """Writes pages chosen uniformly in a working set; one op = one page write."""

    op_cost_s = 1e-6

    def __init__(self, npages, memory_scale, rng, dirty_pages_per_s: float, working_set_pages: int) -> None:
        super().__init__(npages, memory_scale, rng)
        self.rate = dirty_pages_per_s
        self.ws = max(1, min(working_set_pages, npages))

    def ops_rate(self) -> float:
        return self.rate

    def step(self, ops: float) -> np.ndarray:
        return self.rng.integers(0, self.ws, self._real_writes(ops))


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

    def ops_rate(self) -> float:
        return self.rate

    def step(self, ops: float) -> np.ndarray:
        n = self._real_writes(ops * self.write_fraction)
        ranks = (self.rng.zipf(self.zipf_s, n) - 1) % self.ws
        return self.placement[ranks]


class Sweeper(Workload):
    """RapidWrite (S-memV §V): write `sweep` pages in order, then sleep, and again."""

    op_cost_s = 0.5e-6

    def __init__(self, npages, memory_scale, rng, sweep_pages: int, write_bytes_s: float, sleep_s: float) -> None:
        super().__init__(npages, memory_scale, rng)
        self.sweep = max(1, min(sweep_pages, npages))
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
        return UniformWriter(npages, memory_scale, rng, spec["dirty_pages_per_s"], ws())
    if kind == "hotset":
        return HotsetWriter(npages, memory_scale, rng, spec["ops_per_s"], spec.get("write_fraction", 0.1),
                            spec.get("zipf_s", 1.2), ws())
    if kind == "sweeper":
        return Sweeper(npages, memory_scale, rng, int(round(spec["sweep_gib"] * gib_pages)),
                       spec.get("write_mbytes_s", 1000) * 1e6, spec.get("sleep_s", 5))
    raise ValueError(f"unknown workload kind {kind!r}")
