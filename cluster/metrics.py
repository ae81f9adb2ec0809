"""Prometheus exporter: the run's timeline as `livemig_*` metrics on 127.0.0.1.

It listens to the timeline (cluster/timeline.py): every record the
orchestrator adds updates the figures here, and a custom collector yields
them as absolute values when Prometheus scrapes, so counters are exactly the
timeline's sums, per VM. No actor touches Prometheus. Names follow the
Prometheus naming guide (base units, `_total` on counters); labels are
bounded (vm, host, link, stage, phase, encoding, technique, window; a
fault's kind and outcome; a disk mirror's mode, a disk request's op,
remote paging's direction). Values
are emulated units, like every figure livemig reports.

Emulated time: Prometheus stamps samples in real time, so at a dilation
other than 1, `rate()` of an emulated counter is per real second. The
emulated clock is exported as `livemig_emulated_time_seconds`; a rate per
emulated second is `increase(c[w]) / delta(livemig_emulated_time_seconds[w])`,
right at any dilation (the dashboards in grafana/ are written that way).
"""
from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

PHASES = ("disk-copy", "setup", "precopy", "stop-and-copy", "postcopy-switch", "postcopy-active", "switchover", "completed",
          "cancelled", "aborted", "failed")
ENCODINGS = {"normal": "normal_bytes", "zero": "zero_bytes", "compressed": "encoded_bytes"}
PAGE_ENCODINGS = ("normal", "zero", "compressed", "delta")
# Downtime buckets, 1 ms to 30 s (seconds).
DOWNTIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Counters: name without `_total` -> (help, label names).
COUNTERS = {
    "livemig_memory_sent_bytes": ("Memory bytes sent on the wire, by encoding", ("vm", "encoding")),
    "livemig_memory_delivered_bytes": ("Memory bytes the destination acknowledged (what the links carried; "
                                       "the timeline's transfer_rate), all encodings", ("vm",)),
    "livemig_pages_sent": ("Pages sent, by encoding", ("vm", "encoding")),
    "livemig_link_sent_bytes": ("Migration bytes carried by a link", ("link",)),
    "livemig_link_background_bytes": ("Background (non-migration) bytes carried by a link", ("link",)),
    "livemig_guest_operations": ("Operations the guest application completed", ("vm",)),
    "livemig_cpu_seconds": ("Emulated CPU seconds charged on a host, by pipeline stage", ("host", "stage")),
    "livemig_xbzrle_cache_misses": ("XBZRLE cache misses (pages not in the cache), at the end of a migration",
                                    ("vm",)),
    "livemig_xbzrle_pages": ("Pages found in the XBZRLE cache (QEMU's xbzrle-cache pages: deltas, unchanged "
                             "pages and overflows alike), at the end of a migration", ("vm",)),
    "livemig_xbzrle_cache_overflows": ("XBZRLE encodings that overflowed (sent whole)", ("vm",)),
    "livemig_postcopy_faults": ("Post-copy remote page faults on the destination", ("vm",)),
    "livemig_migrations": ("Migrations finished, by technique and status", ("technique", "status")),
    # Storage migration (agents/techniques/storage.py's disk-progress events; absolute values).
    "livemig_disk_copied_bytes": ("Disk bytes the bulk copy wrote at the destination", ("vm",)),
    "livemig_disk_mirrored_bytes": ("Guest-written disk bytes the I/O mirror wrote at the destination", ("vm",)),
    "livemig_disk_mirrored_writes": ("Guest disk writes the I/O mirror sent to the destination", ("vm",)),
    "livemig_disk_mirror_switches": ("Switches of the mirror into a mode (QEMU's copy-mode)", ("vm", "mode")),
    "livemig_guest_disk_requests": ("The guest's disk requests completed, by operation", ("vm", "op")),
    "livemig_guest_disk_bytes": ("The guest's disk bytes read and written", ("vm", "op")),
    # Split migration's remote paging (the guest's samples after the switch-over; absolute values).
    "livemig_remote_faults": ("Remote page faults on the main host after a split migration", ("vm",)),
    "livemig_remote_pages": ("Pages paged in from and out to the memory servers", ("vm", "direction")),
    "livemig_remote_paging_bytes": ("Bytes paged in from and out to the memory servers", ("vm", "direction")),
    "livemig_remote_blocked_seconds": ("Time the guest's vCPUs were blocked on remote faults", ("vm",)),
    "livemig_faults": ("Faults injected by the scenario's events, by kind and outcome (cluster/faults.py)",
                       ("kind", "outcome")),
}
# Gauges: key -> (name, help, label names).
GAUGES = {
    "clock": ("livemig_emulated_time_seconds", "The emulated clock: seconds since the guests started", ()),
    "iterations": ("livemig_iteration", "Pre-copy iteration in progress (0 outside pre-copy)", ("vm",)),
    "remaining": ("livemig_remaining_bytes", "Dirty bytes still to send", ("vm",)),
    "dirty_rate": ("livemig_dirty_pages_per_second", "Pages dirtied per emulated second in the last iteration",
                   ("vm",)),
    "expected_downtime": ("livemig_expected_downtime_seconds",
                          "Remaining bytes over the last iteration's bandwidth (QEMU's expected-downtime)", ("vm",)),
    "link_capacity": ("livemig_link_capacity_bytes_per_second", "A link's shaped capacity", ("link",)),
    "link_utilisation": ("livemig_link_utilisation_ratio", "A link's throughput over its capacity, last interval",
                         ("link",)),
    "phase": ("livemig_phase", "1 for the phase a VM's migration is in", ("vm", "phase")),
    "migration_seconds": ("livemig_migration_seconds", "Migration time so far", ("vm",)),
    "guest_ops": ("livemig_guest_window_operations_per_second",
                  "Guest throughput before, during and after the migration (result.json's app figures)",
                  ("vm", "window")),
    "verified": ("livemig_verified", "1 if the destination image verified page for page, 0 if not", ("vm",)),
    "throttle": ("livemig_throttle_ratio", "Share of the vCPUs' time taken by auto-converge's throttle", ("vm",)),
    "postcopy_blocktime": ("livemig_postcopy_blocktime_seconds", "Time the guest was blocked on remote faults",
                           ("vm",)),
    "disk_len": ("livemig_disk_job_length_bytes", "The mirror job's length (QEMU's len): grows as the guest "
                 "rewrites copied blocks", ("vm",)),
    "disk_offset": ("livemig_disk_job_offset_bytes", "The mirror job's progress (QEMU's offset)", ("vm",)),
    "disk_remaining": ("livemig_disk_remaining_bytes", "Disk bytes the mirror job still has to copy (len - offset)",
                       ("vm",)),
    "disk_mode": ("livemig_disk_mirror_mode", "1 for the mirror's mode: background (asynchronous) or "
                  "write-blocking (synchronous)", ("vm", "mode")),
    "disk_ready": ("livemig_disk_mirror_ready", "1 once the bulk copy is done (QEMU's ready)", ("vm",)),
    "disk_synced": ("livemig_disk_mirror_actively_synced", "1 when ready and nothing in flight (QEMU's "
                    "actively-synced)", ("vm",)),
    "disk_buffer": ("livemig_disk_mirror_buffer_bytes", "The shared transmit buffer's fill", ("vm",)),
    "disk_latency": ("livemig_disk_write_latency_seconds", "The guest's mean disk write latency in each mirror mode "
                     "so far", ("vm", "mode")),
    "split_pages": ("livemig_split_assigned_pages", "Pages the split gave each host: the main host and each memory "
                    "server", ("vm", "host")),
}
MIRROR_MODES = ("background", "write-blocking")
DISK_COUNTERS = {"copied_bytes": "livemig_disk_copied_bytes", "mirrored_bytes": "livemig_disk_mirrored_bytes",
                 "mirrored_writes": "livemig_disk_mirrored_writes"}
DISK_IO = {"livemig_guest_disk_requests": ("reads", "writes"), "livemig_guest_disk_bytes": ("read_bytes", "write_bytes")}
REMOTE = {"livemig_remote_pages": ("page_ins", "page_outs"), "livemig_remote_paging_bytes": ("bytes_in", "bytes_out")}


class MetricsExporter:
    def __init__(self, port: int, addr: str = "127.0.0.1") -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[tuple, float]] = {name: {} for name in COUNTERS}
        self.gauges: dict[str, dict[tuple, float]] = {name: {} for name in GAUGES}
        self.downtime: dict[tuple, list[float]] = {}  # (vm, technique) -> observed downtimes (s)
        self.fault_latency: dict[tuple, dict] = {}  # (vm,) -> {"counts": [...], "sum": s}
        self.remote_latency: dict[tuple, dict] = {}  # (vm,) -> {"counts": [...], "sum": s}, absolute
        self._destinations: dict[str, list[str]] = {}
        self._technique: dict[str, str] = {}
        self._started: dict[str, float] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)

    # --- fed by the timeline -----------------------------------------------------
    def observe(self, r: dict) -> None:
        with self._lock:
            clock = self.gauges["clock"]
            clock[()] = max(clock.get((), 0.0), r["t"])
            handler = _HANDLERS.get(r["kind"])
            if handler:
                handler(self, r)

    def _add(self, counter: str, key: tuple, v: float | None) -> None:
        c = self.counters[counter]
        c[key] = c.get(key, 0.0) + (v or 0.0)

    def _migration(self, r: dict) -> None:
        vm, g = r["vm"], self.gauges
        for enc, key in ENCODINGS.items():
            self._add("livemig_memory_sent_bytes", (vm, enc), r[key])
        self._add("livemig_memory_delivered_bytes", (vm,), r.get("delivered_bytes"))
        for enc in PAGE_ENCODINGS:
            self._add("livemig_pages_sent", (vm, enc), r[f"pages_{enc}"])
        g["iterations"][(vm,)] = r["iteration"]
        g["remaining"][(vm,)] = r["remaining"]
        if r.get("dirty_pages_rate") is not None:
            g["dirty_rate"][(vm,)] = r["dirty_pages_rate"]
        if r.get("expected_downtime_s") is not None:
            g["expected_downtime"][(vm,)] = r["expected_downtime_s"]
        g["migration_seconds"][(vm,)] = r["t"] - self._started.get(vm, r["t"])
        self._phase(vm, r["phase"])

    def _phase(self, vm: str, phase: str) -> None:
        for p in PHASES:
            self.gauges["phase"][(vm, p)] = 1.0 if p == phase else 0.0

    def _link(self, r: dict) -> None:
        key = (r["link"],)
        self._add("livemig_link_sent_bytes", key, r.get("bytes"))
        self._add("livemig_link_background_bytes", key, r.get("background_bytes"))
        cap = r.get("capacity_bytes_s")
        if cap:
            self.gauges["link_capacity"][key] = cap
            self.gauges["link_utilisation"][key] = r["throughput_bytes_s"] / cap

    def _host(self, r: dict) -> None:
        for stage, s in (r.get("cpu_seconds") or {}).items():
            self._add("livemig_cpu_seconds", (r["host"], stage), s)

    def _guest(self, r: dict) -> None:
        self._add("livemig_guest_operations", (r["vm"],), r.get("operations"))
        if "throttle_pct" in r:
            self.gauges["throttle"][(r["vm"],)] = r["throttle_pct"] / 100
        if r.get("remote_paging"):
            self._remote_paging(r["vm"], r["remote_paging"])

    def _remote_paging(self, vm: str, rp: dict) -> None:
        """A split migration's remote paging so far (cumulative figures: set, not added)."""
        c = self.counters
        c["livemig_remote_faults"][(vm,)] = rp.get("faults", 0)
        c["livemig_remote_blocked_seconds"][(vm,)] = rp.get("blocked_s", 0.0)
        for name, keys in REMOTE.items():
            for direction, key in zip(("in", "out"), keys):
                c[name][(vm, direction)] = rp.get(key, 0.0)
        lat = rp.get("fault_latency") or {}
        if lat.get("histogram") is not None:
            self.remote_latency[(vm,)] = {"counts": list(lat["histogram"]),
                                          "sum": (lat.get("mean_us") or 0.0) * rp.get("faults", 0) / 1e6}

    def _disk_progress(self, r: dict) -> None:
        """A storage migration's mirror job so far (agents/techniques/storage.py): cumulative figures."""
        vm, g, c = r["vm"], self.gauges, self.counters
        g["disk_len"][(vm,)], g["disk_offset"][(vm,)] = r["len"], r["offset"]
        g["disk_remaining"][(vm,)] = max(0.0, r["len"] - r["offset"])
        g["disk_ready"][(vm,)] = 1.0 if r.get("ready") else 0.0
        g["disk_synced"][(vm,)] = 1.0 if r.get("actively_synced") else 0.0
        g["disk_buffer"][(vm,)] = r.get("buffer_fill") or 0.0
        self._mirror_mode(vm, r["mode"])
        for mode, ms in (r.get("write_latency_ms") or {}).items():
            g["disk_latency"][(vm, mode)] = ms / 1000
        for key, name in DISK_COUNTERS.items():
            if key in r:
                c[name][(vm,)] = r[key]
        io = r.get("guest_io") or {}
        for name, keys in DISK_IO.items():
            for op, key in zip(("read", "write"), keys):
                if key in io:
                    c[name][(vm, op)] = io[key]

    def _mirror_mode(self, vm: str, mode: str) -> None:
        for m in MIRROR_MODES:
            self.gauges["disk_mode"][(vm, m)] = 1.0 if m == mode else 0.0
            self.counters["livemig_disk_mirror_switches"].setdefault((vm, m), 0.0)

    def _event(self, r: dict) -> None:
        vm, ev = r.get("vm"), r["event"]
        if ev == "migration-start":
            self._started[vm] = r["t"]
            self._technique[vm] = r.get("technique", "unknown")
            self._destinations[vm] = r.get("destinations") or [r.get("destination")]
            # Present from the start, so a one-iteration migration's panels are not empty.
            for name in ("dirty_rate", "iterations", "throttle"):
                self.gauges[name].setdefault((vm,), 0.0)
            self._phase(vm, "setup")
        elif ev == "iteration" and r.get("dirty_pages_rate") is not None:
            self.gauges["dirty_rate"][(vm,)] = r["dirty_pages_rate"]
        elif ev == "throttle" and r.get("throttle_pct") is not None:
            self.gauges["throttle"][(vm,)] = r["throttle_pct"] / 100
        elif ev == "throttle-stop":
            self.gauges["throttle"][(vm,)] = 0.0
        elif ev == "fault-outcome":
            self._add("livemig_faults", (r["fault"], r["outcome"]), 1)
        elif ev == "disk-progress":
            self._disk_progress(r)
        elif ev == "mirror-mode":
            self._mirror_mode(vm, r["mode"])
            self._add("livemig_disk_mirror_switches", (vm, r["mode"]), 1)
        elif ev == "disk-synced":
            self.gauges["disk_synced"][(vm,)] = 1.0 if r.get("synced") else 0.0
        elif ev == "split":
            hosts = self._destinations.get(vm) or []
            for k, n in enumerate(r.get("pages_by_host") or []):
                self.gauges["split_pages"][(vm, hosts[k] if k < len(hosts) else f"destination-{k}")] = n

    def finish(self, vm: str, result: dict) -> None:
        """A migration's final figures (cluster/collect.py, itself from the timeline)."""
        with self._lock:
            g = self.gauges
            technique = result.get("technique") or self._technique.get(vm, "unknown")
            self.downtime.setdefault((vm, technique), []).append(result["downtime_ms"] / 1000)
            g["migration_seconds"][(vm,)] = result["total_time_s"]
            g["verified"][(vm,)] = 1.0 if result["verified"] else 0.0
            g["remaining"][(vm,)] = 0.0 if result["status"] == "completed" else g["remaining"].get((vm,), 0.0)
            self._phase(vm, result["status"])
            self._add("livemig_migrations", (technique, result["status"]), 1)
            for window in ("before", "during", "after"):
                v = result["app"].get(f"ops_per_s_{window}")
                if v is not None:
                    g["guest_ops"][(vm, window)] = v
            self._finish_xbzrle(vm, (result.get("compression") or {}).get("xbzrle"))
            self._finish_postcopy(vm, result.get("postcopy"))
            self._finish_disk(vm, result.get("disk"))
            rp = (result.get("split") or {}).get("remote_paging")
            if rp:
                self._remote_paging(vm, rp)

    def _finish_disk(self, vm: str, d: dict | None) -> None:
        """A storage migration's final mirror figures (result.json's `disk`), as absolute values."""
        if not d or "mirror" not in d:
            return
        mirror, c, g = d["mirror"], self.counters, self.gauges
        c["livemig_disk_mirrored_bytes"][(vm,)] = mirror["mirrored_bytes"]
        c["livemig_disk_mirrored_writes"][(vm,)] = mirror["mirrored_writes"]
        c["livemig_disk_copied_bytes"][(vm,)] = d["bytes_sent"] - mirror["mirrored_bytes"]
        g["disk_remaining"][(vm,)] = 0.0 if d.get("verified") else g["disk_remaining"].get((vm,), 0.0)
        if "actively_synced" in d:
            g["disk_synced"][(vm,)] = 1.0 if d["actively_synced"] else 0.0

    def _finish_xbzrle(self, vm: str, x: dict | None) -> None:
        if x:
            self._add("livemig_xbzrle_cache_misses", (vm,), x.get("cache_miss"))
            self._add("livemig_xbzrle_pages", (vm,), x.get("pages"))
            self._add("livemig_xbzrle_cache_overflows", (vm,), x.get("overflow"))

    def _finish_postcopy(self, vm: str, pc: dict | None) -> None:
        if not pc:
            return
        self._add("livemig_postcopy_faults", (vm,), pc.get("faults"))
        self.gauges["postcopy_blocktime"][(vm,)] = (pc.get("blocktime_ms") or 0.0) / 1000
        dist = pc.get("postcopy_latency_dist") or []
        if dist:
            h = self.fault_latency.setdefault((vm,), {"counts": [], "sum": 0.0})
            h["counts"] = [a + b for a, b in _zip_longest(h["counts"], dist)]
            h["sum"] += (pc.get("postcopy_latency_us") or 0.0) * sum(dist) / 1e6

    # --- read by Prometheus --------------------------------------------------------
    def collect(self):
        with self._lock:
            for name, (help_, labels) in COUNTERS.items():
                yield _family(CounterMetricFamily, name, help_, labels, self.counters[name])
            for key, (name, help_, labels) in GAUGES.items():
                yield _family(GaugeMetricFamily, name, help_, labels, self.gauges[key])
            yield self._downtime_family()
            yield _log2_us_family("livemig_postcopy_fault_latency_seconds",
                                  "Post-copy remote fault latency (QEMU's postcopy-latency-dist: "
                                  "bucket N holds [2^N, 2^(N+1)) us)", self.fault_latency)
            yield _log2_us_family("livemig_remote_fault_latency_seconds",
                                  "A split migration's remote fault latency on the main host "
                                  "(bucket N holds [2^N, 2^(N+1)) us)", self.remote_latency)

    def _downtime_family(self):
        fam = HistogramMetricFamily("livemig_downtime_seconds", "Downtime of each finished migration (1 ms to 30 s)",
                                    labels=["vm", "technique"])
        for key, obs in self.downtime.items():
            buckets = [(_le(b), float(sum(o <= b for o in obs))) for b in DOWNTIME_BUCKETS]
            fam.add_metric(list(key), buckets + [("+Inf", float(len(obs)))], sum_value=sum(obs))
        return fam

    @staticmethod
    def declared() -> dict[str, tuple[str, ...]]:
        """Every metric as Prometheus exposes it (counters with `_total`, histograms with
        `_bucket`, `_sum`, `_count`) -> its label names."""
        out = {f"{name}_total": tuple(labels) for name, (_, labels) in COUNTERS.items()}
        out |= {name: tuple(labels) for name, _, labels in GAUGES.values()}
        for name, labels in (("livemig_downtime_seconds", ("vm", "technique")),
                             ("livemig_postcopy_fault_latency_seconds", ("vm",)),
                             ("livemig_remote_fault_latency_seconds", ("vm",))):
            out |= {f"{name}_bucket": labels + ("le",), f"{name}_sum": labels, f"{name}_count": labels}
        return out

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_HANDLERS = {"migration": MetricsExporter._migration, "link": MetricsExporter._link, "host": MetricsExporter._host,
             "guest": MetricsExporter._guest, "event": MetricsExporter._event}


def _le(bound: float) -> str:
    return f"{bound:g}" if bound < 1e-3 or bound >= 1e3 else repr(float(bound))


def _log2_us_family(name: str, help_: str, hists: dict):
    """A histogram from counts in log2 microsecond buckets (QEMU's latency-dist: bucket N
    holds [2^N, 2^(N+1)) us), as Prometheus's cumulative buckets in seconds."""
    fam = HistogramMetricFamily(name, help_, labels=["vm"])
    for key, h in hists.items():
        cum, buckets = 0.0, []
        for n, c in enumerate(h["counts"]):
            cum += c
            buckets.append((_le(2.0 ** (n + 1) / 1e6), cum))
        fam.add_metric(list(key), buckets + [("+Inf", cum)], sum_value=h["sum"])
    return fam


def _zip_longest(a: list, b: list):
    n = max(len(a), len(b))
    return zip(a + [0] * (n - len(a)), b + [0] * (n - len(b)))


def _family(cls, name: str, help_: str, labels, values: dict):
    fam = cls(name, help_, labels=list(labels))
    for key, v in values.items():
        fam.add_metric(list(key), v)
    return fam
