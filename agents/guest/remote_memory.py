"""Remote memory: the destination's side of post-copy, as the guest's vCPUs meet it.

After a post-copy switch-over the guest runs on the destination's image
before all of it is there. A "received" map in shared memory next to that
image (one byte per page; the destination's receivers set a page's byte
once they have restored it) says which pages are present. Before its vCPUs
touch pages, the guest checks them here (QEMU: a userfaultfd fault on a
missing page); missing ones are faults: their page requests go to the
source over the return path (QEMU's MIG_RP_MSG_REQ_PAGES), and the vCPUs
wait until every faulted page has arrived. Each fault's latency, from the
access to the page's arrival, goes into a histogram with QEMU 10.1's
power-of-two microsecond buckets (query-migrate's postcopy-latency-dist:
bucket N counts latencies in [2^N, 2^(N+1)) us); the time the vCPUs were
blocked is QEMU's postcopy-blocktime.

The emulated vCPUs share one thread, so a fault blocks them all, and faults
are taken one after the other: blocktime here is the whole VM's, QEMU's
worst case. A tick's writes are done in order: the first missing page
faults, and the writes after it look at the received map only once it is
resolved (a page that arrived meanwhile no longer faults; one the push sent
meanwhile is waited for on the stream).

Scaling: a real page stands for 1/memory_scale emulated pages, so one real
fault stands for that many emulated faults, taken in a row at full scale.
The guest therefore stays blocked for their latencies together (the real
fault's latency over memory_scale), unless every page it may write
(`footprint`) has arrived first: at full scale its faults would end there.
The faults counted are those the blocked time covers (at least the real
ones, at most 1/memory_scale each). That keeps blocktime and the guest's
throughput independent of memory_scale, in the regime where faults block the
guest most of the time as well as where they are rare. Only writes are modelled (the
workloads' reads touch no pages), so faults come from writes. A page is
requested at most once; the source sends each page at most once, so a page
already on its way is waited for, not fetched again.
"""
from __future__ import annotations

import time

import numpy as np

from agents.datapath.channel import KIND_PAGE_REQUEST, Channel

BUCKETS = 24  # QEMU 10.1's histogram: [1 us, 2 us) ... [2^23 us, 2^24 us) (about 16.8 s); longer ones in the last
POLL_S = 20e-6  # how often a blocked vCPU looks at the received map


def latency_bucket(latency_us: float) -> int:
    """The bucket of a latency: N for [2^N, 2^(N+1)) microseconds; under 1 us goes to 0."""
    if latency_us < 2:
        return 0
    return min(BUCKETS - 1, int(np.floor(np.log2(latency_us))))


class LatencyHistogram:
    """Fault latencies: power-of-two buckets (QEMU's view) and every measured value with the
    number of emulated faults it stands for, so that the mean and percentiles weigh each value
    as the buckets do."""

    def __init__(self) -> None:
        self.counts = [0.0] * BUCKETS
        self.values_us: list[float] = []
        self.weights: list[float] = []

    def add(self, latency_us: float, weight: float = 1.0) -> None:
        """One measured fault, standing for `weight` faults (emulated)."""
        self.counts[latency_bucket(latency_us)] += weight
        self.values_us.append(latency_us)
        self.weights.append(weight)

    def percentile(self, q: float) -> float | None:
        """The latency under which `q` percent of the (weighted) faults fall."""
        if not self.values_us:
            return None
        v, w = np.asarray(self.values_us), np.asarray(self.weights)
        order = np.argsort(v, kind="stable")
        cum = np.cumsum(w[order])
        at = int(np.searchsorted(cum, q / 100 * cum[-1], side="left"))
        return float(v[order][min(at, len(v) - 1)])

    def summary(self) -> dict:
        v = self.values_us
        return {"postcopy_latency_dist": [int(round(c)) for c in self.counts],
                "bucket_us": "bucket N counts faults resolved in [2^N, 2^(N+1)) us",
                "mean_us": float(np.average(v, weights=self.weights)) if v else None,
                "p50_us": self.percentile(50), "p99_us": self.percentile(99),
                "max_us": max(v) if v else None}


class RemoteMemory:
    """The destination's fault handler. `received`: the shared map (uint8 per
    page, non-zero once present); `requests`: the return path to the source;
    `dilation`: real seconds per emulated second (figures are emulated)."""

    def __init__(self, received: np.ndarray, requests: Channel | None, vm: int, dilation: float,
                 memory_scale: float = 1.0, footprint: int = 0) -> None:
        self.received = received
        self.scale = memory_scale
        self.footprint = received[:footprint or len(received)]
        self.requests = requests
        self.vm = vm
        self.dilation = dilation
        n = len(received)
        self.requested = np.zeros(n, dtype=bool)
        self.written = np.zeros(n, dtype=bool)  # pages the guest wrote here (for verification)
        self.histogram = LatencyHistogram()
        self.faults = 0  # real pages found missing on access
        self.emulated_faults = 0.0  # the emulated faults they stand for
        self.page_requests = 0
        self.requested_twice = 0
        self.blocked_s = 0.0  # real

    def missing(self, idx: np.ndarray) -> np.ndarray:
        """The distinct pages of `idx` that are not here yet."""
        return np.unique(idx[self.received[idx] == 0])

    def ensure(self, idx: np.ndarray, in_order: bool = True) -> float:
        """Fault in the missing pages of `idx` and wait for them; returns the real seconds blocked.

        `in_order`: `idx` are writes done one after the other (a vCPU's): the first missing
        page faults, and only once it (and the faults it stands for) is resolved does the next
        write look, so a page that arrived meanwhile, or is on its way by then, is met as it is
        at that moment (at full scale each fault is its own draw in time; cluster/
        predict_postcopy.py integrates the same way). Otherwise every missing page faults at once."""
        if not in_order:
            return self._fault(self.missing(idx))
        blocked, at = 0.0, 0
        while at < len(idx):
            miss = np.flatnonzero(self.received[idx[at:]] == 0)
            if not len(miss):
                break
            at += int(miss[0])
            blocked += self._fault(idx[at:at + 1])
            at += 1
        return blocked

    def _fault(self, missing: np.ndarray) -> float:
        """Request `missing` (distinct, not here), wait for them and the faults they stand for."""
        if not len(missing):
            return 0.0
        t0 = time.monotonic()
        self._request(missing, t0)
        latencies = self._wait(missing, t0)
        blocked = self._stand_for(latencies, t0)
        self.blocked_s += blocked
        return blocked

    def wrote(self, idx: np.ndarray) -> None:
        """The guest wrote these pages here: they differ from the source's frozen copy by right."""
        self.written[idx] = True

    def _request(self, pages: np.ndarray, t0: float) -> None:
        self.faults += len(pages)
        again = self.requested[pages]
        self.requested_twice += int(np.count_nonzero(again))
        fresh = pages[~again]
        self.requested[fresh] = True
        self.page_requests += len(fresh)
        if self.requests is None:
            return
        for p in fresh.tolist():  # the page number rides in the descriptor's 64-bit field
            self.requests.send(KIND_PAGE_REQUEST, self.vm, 0, 1, p, 0, t0)

    def _wait(self, pages: np.ndarray, t0: float) -> list[float]:
        """Until every page is here; returns their latencies (real seconds)."""
        waiting, latencies = pages, []
        while len(waiting):
            here = self.received[waiting] != 0
            if here.any():
                latencies += [time.monotonic() - t0] * int(np.count_nonzero(here))
                waiting = waiting[~here]
                continue
            time.sleep(POLL_S)
        return latencies

    def _stand_for(self, latencies: list[float], t0: float) -> float:
        """Stay blocked as long as the emulated faults these real ones stand for; returns real seconds blocked."""
        target = t0 + sum(latencies) / self.scale
        while time.monotonic() < target and not self.footprint.all():
            time.sleep(min(1e-3, max(0.0, target - time.monotonic())))
        blocked = time.monotonic() - t0
        mean = sum(latencies) / len(latencies)
        stand_for = min(len(latencies) / self.scale, max(len(latencies), blocked / mean if mean > 0 else 0.0))
        self.emulated_faults += stand_for
        weight = stand_for / len(latencies)
        for lat in latencies:
            self.histogram.add(lat / self.dilation * 1e6, weight)
        return blocked

    def status(self, memory_scale: float) -> dict:
        """Figures in emulated units: faults and requests per emulated page, times in emulated seconds."""
        return {"faults_measured": self.faults, "faults": self.emulated_faults,
                "page_requests": self.page_requests / memory_scale, "requested_twice": self.requested_twice,
                "blocktime_s": self.blocked_s / self.dilation, **self.histogram.summary(),
                "missing_pages": int(np.count_nonzero(self.received == 0)),
                "pages_written": int(np.count_nonzero(self.written)) / memory_scale}
