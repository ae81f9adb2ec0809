"""Prometheus exporter: the run's timeline as `livemig_*` metrics on 127.0.0.1.

It listens to the timeline (cluster/timeline.py): every record the
orchestrator adds updates the figures here, and a custom collector yields
them as absolute values when Prometheus scrapes, so counters are exactly the
timeline's sums, per VM. No actor touches Prometheus. Names carry their
unit; labels are bounded (vm, link, phase, encoding, window; a fault's kind and outcome). Values are
emulated units, like every figure livemig reports.
"""
from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PHASES = ("setup", "precopy", "stop-and-copy", "switchover", "completed", "cancelled", "aborted", "failed")
ENCODINGS = {"normal": "normal_bytes", "zero": "zero_bytes", "compressed": "encoded_bytes"}
PAGE_ENCODINGS = ("normal", "zero", "compressed", "delta")


class MetricsExporter:
    def __init__(self, port: int, addr: str = "127.0.0.1") -> None:
        self._lock = threading.Lock()
        self.bytes_sent: dict[tuple, float] = {}  # (vm, encoding) -> bytes
        self.pages_sent: dict[tuple, float] = {}
        self.faults: dict[tuple, int] = {}  # (kind, outcome) -> faults injected (cluster/faults.py)
        self.gauges: dict[str, dict[tuple, float]] = {name: {} for name in _GAUGES}
        self._started: dict[str, float] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)

    # --- fed by the timeline -----------------------------------------------------
    def observe(self, r: dict) -> None:
        with self._lock:
            kind = r["kind"]
            if kind == "migration":
                self._migration(r)
            elif kind == "link":
                self.gauges["link_throughput"][(r["link"],)] = r["throughput_bytes_s"]
            elif kind == "guest":
                self.gauges["guest_ops"][(r["vm"], "current")] = r["ops_per_s"]
            elif kind == "event" and r["event"] == "iteration" and r.get("dirty_pages_rate") is not None:
                self.gauges["dirty_rate"][(r["vm"],)] = r["dirty_pages_rate"]
            elif kind == "event" and r["event"] == "fault-outcome":
                key = (r["fault"], r["outcome"])
                self.faults[key] = self.faults.get(key, 0) + 1
            elif kind == "event" and r["event"] == "migration-start":
                self._started[r["vm"]] = r["t"]

    def _migration(self, r: dict) -> None:
        vm = r["vm"]
        for enc, key in ENCODINGS.items():
            self.bytes_sent[(vm, enc)] = self.bytes_sent.get((vm, enc), 0.0) + r[key]
        for enc in PAGE_ENCODINGS:
            self.pages_sent[(vm, enc)] = self.pages_sent.get((vm, enc), 0.0) + r[f"pages_{enc}"]
        g = self.gauges
        g["iterations"][(vm,)] = r["iteration"]
        g["remaining"][(vm,)] = r["remaining"]
        g["migration_seconds"][(vm,)] = r["t"] - self._started.get(vm, r["t"])
        for p in PHASES:
            g["phase"][(vm, p)] = 1.0 if p == r["phase"] else 0.0

    def finish(self, vm: str, result: dict) -> None:
        """A migration's final figures (cluster/collect.py, itself from the timeline)."""
        with self._lock:
            g = self.gauges
            g["downtime"][(vm,)] = result["downtime_ms"] / 1000
            g["migration_seconds"][(vm,)] = result["total_time_s"]
            g["verified"][(vm,)] = 1.0 if result["verified"] else 0.0
            for p in PHASES:
                g["phase"][(vm, p)] = 1.0 if p == result["status"] else 0.0
            for window in ("before", "during", "after"):
                v = result["app"].get(f"ops_per_s_{window}")
                if v is not None:
                    g["guest_ops"][(vm, window)] = v

    # --- read by Prometheus --------------------------------------------------------
    def collect(self):
        with self._lock:
            yield _family(CounterMetricFamily, "livemig_memory_sent_bytes", "Memory bytes sent on the wire (emulated), by encoding",
                          _COUNTERS["livemig_memory_sent_bytes"], self.bytes_sent)
            yield _family(CounterMetricFamily, "livemig_pages_sent", "Pages sent, by encoding (emulated pages)",
                          _COUNTERS["livemig_pages_sent"], self.pages_sent)
            yield _family(CounterMetricFamily, "livemig_faults", "Faults injected, by kind and outcome "
                          "(cluster/faults.py)", _COUNTERS["livemig_faults"], self.faults)
            for name, (metric, help_, labels) in _GAUGES.items():
                yield _family(GaugeMetricFamily, metric, help_, labels, self.gauges[name])

    @staticmethod
    def declared() -> dict[str, tuple[str, ...]]:
        """Every metric as Prometheus exposes it (counters with `_total`) -> its label names."""
        out = {f"{name}_total": tuple(labels) for name, labels in _COUNTERS.items()}
        return out | {metric: tuple(labels) for metric, _, labels in _GAUGES.values()}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_COUNTERS = {"livemig_memory_sent_bytes": ["vm", "encoding"], "livemig_pages_sent": ["vm", "encoding"],
             "livemig_faults": ["kind", "outcome"]}
_GAUGES = {
    "iterations": ("livemig_iterations", "Pre-copy iteration in progress", ["vm"]),
    "remaining": ("livemig_remaining_bytes", "Dirty bytes still to send", ["vm"]),
    "dirty_rate": ("livemig_dirty_pages_per_second", "Pages dirtied per emulated second in the last iteration", ["vm"]),
    "link_throughput": ("livemig_link_throughput_bytes_per_second", "Throughput on a link (emulated bytes/s)", ["link"]),
    "phase": ("livemig_phase", "1 for the phase a VM's migration is in", ["vm", "phase"]),
    "downtime": ("livemig_downtime_seconds", "Downtime of the finished migration", ["vm"]),
    "migration_seconds": ("livemig_migration_seconds", "Migration time so far (emulated seconds)", ["vm"]),
    "guest_ops": ("livemig_guest_operations_per_second", "Guest application throughput", ["vm", "window"]),
    "verified": ("livemig_verified_ratio", "1 if the destination image verified", ["vm"]),
}


def _family(cls, name: str, help_: str, labels: list[str], values: dict):
    fam = cls(name, help_, labels=labels)
    for key, v in values.items():
        fam.add_metric(list(key), v)
    return fam
