"""Prometheus exporter: the run's figures as `livemig_*` metrics on 127.0.0.1.

The driver polls the actors a few times per second and updates these from
the figures they report, so no actor touches Prometheus per page or per
batch. Names carry their unit; labels are bounded (vm, link, phase,
encoding). Values are emulated units, like every figure livemig reports.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

PHASES = ("setup", "precopy", "stop-and-copy", "switchover", "completed", "aborted", "failed")


class MetricsExporter:
    def __init__(self, port: int, addr: str = "127.0.0.1") -> None:
        r = self.registry = CollectorRegistry()
        self.bytes_sent = Counter("livemig_memory_sent_bytes", "Memory bytes sent on the wire (emulated)", ["vm", "encoding"], registry=r)
        self.pages_sent = Counter("livemig_pages_sent", "Pages sent, by encoding (emulated pages)", ["vm", "encoding"], registry=r)
        self.iterations = Gauge("livemig_iterations", "Pre-copy iteration in progress", ["vm"], registry=r)
        self.remaining = Gauge("livemig_remaining_bytes", "Dirty bytes still to send", ["vm"], registry=r)
        self.dirty_rate = Gauge("livemig_dirty_pages_per_second", "Pages dirtied per emulated second in the last iteration", ["vm"], registry=r)
        self.link_tp = Gauge("livemig_link_throughput_bytes_per_second", "Migration throughput on a link", ["link"], registry=r)
        self.phase = Gauge("livemig_phase", "1 for the phase a VM's migration is in", ["vm", "phase"], registry=r)
        self.downtime = Gauge("livemig_downtime_seconds", "Downtime of the finished migration", ["vm"], registry=r)
        self.total_time = Gauge("livemig_migration_seconds", "Migration time so far (emulated seconds)", ["vm"], registry=r)
        self.guest_ops = Gauge("livemig_guest_operations_per_second", "Guest application throughput", ["vm", "window"], registry=r)
        self.verified = Gauge("livemig_verified_ratio", "1 if the destination image verified", ["vm"], registry=r)
        self._last: dict = {}
        self._server, self._thread = start_http_server(port, addr=addr, registry=r)

    def _inc(self, counter, key: tuple, value: float) -> None:
        prev = self._last.get((id(counter), key), 0.0)
        if value > prev:
            counter.labels(*key).inc(value - prev)
            self._last[(id(counter), key)] = value

    def update_progress(self, vm: str, links: list[str], state, status: dict, scale) -> None:
        ms = scale.memory_scale
        normal = status.get("pages_normal", 0) / ms
        zero = status.get("pages_zero", 0) / ms
        self._inc(self.pages_sent, (vm, "normal"), normal)
        self._inc(self.pages_sent, (vm, "zero"), zero)
        self._inc(self.bytes_sent, (vm, "normal"), normal * 4096)
        self._inc(self.bytes_sent, (vm, "zero"), zero)
        # Compressed and delta pages by encoding; their bytes on the wire together under
        # "compressed" (zstd frames and XBZRLE deltas, with the deltas' headers).
        for enc in ("compressed", "delta"):
            self._inc(self.pages_sent, (vm, enc), status.get(f"pages_{enc}", 0) / ms)
        encoded = (status.get("payload_bytes", 0) - status.get("pages_normal", 0) * 4096) / ms
        self._inc(self.bytes_sent, (vm, "compressed"), encoded)
        self.iterations.labels(vm).set(state.iteration)
        self.remaining.labels(vm).set(state.remaining_bytes)
        # Throughput is measured over all of the migration's links together.
        self.link_tp.labels(links[0] if len(links) == 1 else "all").set(state.throughput_bytes_s)
        self.total_time.labels(vm).set(state.elapsed_s)
        if "dirty_pages_per_s" in status:
            self.dirty_rate.labels(vm).set(status["dirty_pages_per_s"])
        for p in PHASES:
            self.phase.labels(vm, p).set(1 if p == state.phase else 0)

    def finish(self, vm: str, result: dict) -> None:
        self.downtime.labels(vm).set(result["downtime_ms"] / 1000)
        self.total_time.labels(vm).set(result["total_time_s"])
        self.verified.labels(vm).set(1 if result["verified"] else 0)
        for p in PHASES:
            self.phase.labels(vm, p).set(1 if p == result["status"] else 0)
        app = result["app"]
        for window in ("before", "during", "after"):
            v = app.get(f"ops_per_s_{window}")
            if v is not None:
                self.guest_ops.labels(vm, window).set(v)
        log = result["iteration_log"]
        if len(log) > 1 and log[-2]["duration_s"] > 0:
            self.dirty_rate.labels(vm).set(log[-1]["pages"] / log[-2]["duration_s"])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
