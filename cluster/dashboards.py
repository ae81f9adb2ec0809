"""Grafana dashboards, built in code with grafana-foundation-sdk and committed as JSON.

`python -m cluster.dashboards` writes `grafana/dashboards/<name>.json`; a test
checks the committed files equal what this module generates, and another runs
every panel's query against a real Prometheus that scraped a real run.

Dashboards: an overview (progress of every migration, dirty against transfer
rate, per-link throughput, guest throughput with phase annotations, results)
and one per technique family (parallel pipeline, compression, convergence and
post-copy, storage, split). Rates are per emulated second: a counter's increase over
the emulated clock's (`livemig_emulated_time_seconds`), so the panels are right
at any dilation (cluster/metrics.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

OUT = Path(__file__).resolve().parent.parent / "grafana" / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${DS_PROMETHEUS}")
WINDOW = "5s"  # rate window: the README's Prometheus scrapes every second
PAGE = 4096
VM = 'vm=~"$vm"'


def per_emulated_s(increase_expr: str) -> str:
    """An increase over WINDOW divided by the emulated seconds in WINDOW: a rate per emulated second."""
    return f"({increase_expr}) / scalar(delta(livemig_emulated_time_seconds[{WINDOW}]))"


def inc(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (increase({metric}{{{selector}}}[{WINDOW}]))"


@dataclass
class P:
    """One panel: its kind (timeseries, stat, state, bars), title, unit, description and
    queries as (PromQL, legend)."""
    kind: str
    title: str
    unit: str
    description: str
    queries: list[tuple[str, str]]
    width: int = 12


def per_vm(kind: str, title: str, unit: str, description: str, metric: str, width: int = 12) -> P:
    """A panel of one per-VM metric, as it is, a series per VM."""
    return P(kind, title, unit, description, [(f"{metric}{{{VM}}}", "{{vm}}")], width)


def per_s(title: str, unit: str, description: str, metric: str, by: str = "vm", legend: str = "{{vm}}") -> P:
    """A time-series panel of one counter per emulated second, summed by `by`, filtered by VM."""
    return P("timeseries", title, unit, description, [(per_emulated_s(inc(metric, by, VM)), legend)])


def latency_stats(what: str, histogram: str) -> list[P]:
    """The p99 and the mean of a latency histogram, per VM."""
    return [P("stat", f"{what} p99", "s", "From the latency histogram.",
              [(f"histogram_quantile(0.99, sum by (le, vm) ({histogram}_bucket{{{VM}}}))", "{{vm}}")], 6),
            P("stat", f"{what} mean", "s", "Sum over count of the latency histogram.",
              [(f"{histogram}_sum{{{VM}}} / {histogram}_count{{{VM}}}", "{{vm}}")], 6)]


TRANSFER = P("timeseries", "Transfer rate", "Bps",
             "Memory bytes per emulated second, per VM: sent (posted to the wire) and delivered (acknowledged "
             "by the destination: what the links carried, the report's transfer rate).",
             [(per_emulated_s(inc("livemig_memory_sent_bytes_total", "vm", VM)), "{{vm}} sent"),
              (per_emulated_s(inc("livemig_memory_delivered_bytes_total", "vm", VM)), "{{vm}} delivered")])
LINKS = P("timeseries", "Link throughput", "Bps",
          "Migration and background bytes per emulated second on each link.",
          [(per_emulated_s(inc("livemig_link_sent_bytes_total", "link")), "{{link}} migration"),
           (per_emulated_s(inc("livemig_link_background_bytes_total", "link")), "{{link}} background"),
           ("livemig_link_capacity_bytes_per_second", "{{link}} capacity")])

OVERVIEW = [
    P("state", "Phase", "", "The phase each VM's migration is in.",
      [(f'max by (vm, phase) (livemig_phase{{{VM}}}) == 1', "{{vm}} {{phase}}")], 24),
    per_vm("timeseries", "Bytes remaining", "bytes", "Dirty bytes still to send (the progress of each migration).",
           "livemig_remaining_bytes"),
    per_vm("timeseries", "Iteration", "none", "Pre-copy iteration in progress.",
           "livemig_iteration"),
    P("timeseries", "Dirty rate against transfer rate", "Bps",
      "Bytes dirtied per emulated second in the last iteration (dashed in the report) against bytes the "
      "destination acknowledged (delivered, as the report's transfer rate).",
      [(f"livemig_dirty_pages_per_second{{{VM}}} * {PAGE}", "{{vm}} dirty"),
       (per_emulated_s(inc("livemig_memory_delivered_bytes_total", "vm", VM)), "{{vm}} transfer")]),
    LINKS,
    P("timeseries", "Guest operations per second", "ops",
      "The guest application's operations per emulated second; the phases are annotated.",
      [(per_emulated_s(inc("livemig_guest_operations_total", "vm", VM)), "{{vm}}")]),
    P("timeseries", "Link utilisation", "percentunit", "Throughput over capacity, last interval.",
      [("livemig_link_utilisation_ratio", "{{link}}")]),
    per_vm("timeseries", "Expected downtime", "s", "Remaining bytes over the last iteration's bandwidth (QEMU's).",
           "livemig_expected_downtime_seconds"),
    P("timeseries", "Emulated seconds per real second", "none", "1 / dilation while a run goes.",
      [(f"delta(livemig_emulated_time_seconds[{WINDOW}]) / {WINDOW[:-1]}", "clock")]),
    P("stat", "Downtime", "s", "Mean downtime of the finished migrations, per VM.",
      [(f"livemig_downtime_seconds_sum{{{VM}}} / livemig_downtime_seconds_count{{{VM}}}", "{{vm}}")], 6),
    per_vm("stat", "Migration time", "s", "Migration time so far (final once finished).",
           "livemig_migration_seconds", 6),
    per_vm("stat", "Verified", "none", "1: the destination image verified page for page.",
           "livemig_verified", 6),
    P("stat", "Migrations finished", "none", "By technique and status.",
      [("sum by (technique, status) (livemig_migrations_total)", "{{technique}} {{status}}")], 6),
    P("bars", "Guest throughput before, during, after", "ops", "result.json's application figures.",
      [(f"livemig_guest_window_operations_per_second{{{VM}}}", "{{vm}} {{window}}")], 24),
    P("bars", "Faults injected, by kind and outcome", "none",
      "The scenario's fault events and how each ended (cluster/faults.py): survived, aborted-vm-safe, vm-lost, "
      "no-effect; 0 when the run injected none.",
      [("sum by (kind, outcome) (livemig_faults_total) or on() vector(0)", "{{kind}} {{outcome}}")], 24),
]

PIPELINE = [
    P("timeseries", "CPU per host and stage", "none",
      "Emulated cores busy per host and pipeline stage (scan/encode/send, receive, sync).",
      [(per_emulated_s(inc("livemig_cpu_seconds_total", "host, stage")), "{{host}} {{stage}}")]),
    P("timeseries", "Pages sent per second", "none", "Pages per emulated second, by encoding.",
      [(per_emulated_s(inc("livemig_pages_sent_total", "encoding", VM)), "{{encoding}}")]),
    TRANSFER,
    LINKS,
]

COMPRESSION = [
    P("timeseries", "Bytes sent by encoding", "Bps", "Wire bytes per emulated second, by encoding.",
      [(per_emulated_s(inc("livemig_memory_sent_bytes_total", "encoding", VM)), "{{encoding}}")]),
    P("timeseries", "Pages sent by encoding", "none", "Pages so far, by encoding.",
      [(f"sum by (encoding) (livemig_pages_sent_total{{{VM}}})", "{{encoding}}")]),
    per_vm("stat", "XBZRLE pages", "none",
           "Pages found in the XBZRLE cache, QEMU's xbzrle-cache pages: sent as deltas, skipped unchanged or "
           "overflowed (at the end of each migration).",
           "livemig_xbzrle_pages_total", 8),
    per_vm("stat", "XBZRLE cache misses", "none", "Pages not in the XBZRLE cache.",
           "livemig_xbzrle_cache_misses_total", 8),
    per_vm("stat", "XBZRLE overflows", "none", "Deltas larger than the page, sent whole.",
           "livemig_xbzrle_cache_overflows_total", 8),
]

CONVERGENCE = [
    per_vm("timeseries", "Throttle", "percentunit", "Share of the vCPUs' time auto-converge takes.",
           "livemig_throttle_ratio"),
    P("timeseries", "Dirty rate", "Bps", "Bytes dirtied per emulated second in the last iteration.",
      [(f"livemig_dirty_pages_per_second{{{VM}}} * {PAGE}", "{{vm}}")]),
    P("timeseries", "Downtime distribution", "none", "Finished migrations by downtime bucket (1 ms to 30 s).",
      [(f"sum by (le) (livemig_downtime_seconds_bucket{{{VM}}})", "le {{le}}")]),
    per_vm("stat", "Post-copy faults", "none", "Remote page faults on the destination.",
           "livemig_postcopy_faults_total", 6),
    P("stat", "Post-copy fault latency p99", "s", "From the fault latency histogram.",
      [(f"histogram_quantile(0.99, sum by (le, vm) (livemig_postcopy_fault_latency_seconds_bucket{{{VM}}}))",
        "{{vm}}")], 6),
    P("stat", "Post-copy mean fault latency", "s", "Sum over count of the fault latency histogram.",
      [(f"livemig_postcopy_fault_latency_seconds_sum{{{VM}}} / "
        f"livemig_postcopy_fault_latency_seconds_count{{{VM}}}", "{{vm}}")], 6),
    per_vm("stat", "Post-copy blocktime", "s", "Time the guest was blocked on remote faults.",
           "livemig_postcopy_blocktime_seconds", 6),
]

STORAGE = [
    P("timeseries", "Disk copy progress", "bytes",
      "The mirror job's length and offset (QEMU's len and offset) and what remains; len grows as the guest "
      "rewrites blocks already copied.",
      [(f"livemig_disk_job_length_bytes{{{VM}}}", "{{vm}} len"), (f"livemig_disk_job_offset_bytes{{{VM}}}",
                                                                   "{{vm}} offset"),
       (f"livemig_disk_remaining_bytes{{{VM}}}", "{{vm}} remaining")]),
    P("timeseries", "Disk transfer rate", "Bps",
      "Disk bytes written at the destination per emulated second: bulk copy and mirrored guest writes.",
      [(per_emulated_s(inc("livemig_disk_copied_bytes_total", "vm", VM)), "{{vm}} bulk copy"),
       (per_emulated_s(inc("livemig_disk_mirrored_bytes_total", "vm", VM)), "{{vm}} mirrored")]),
    P("state", "Mirror mode", "",
      "Background (asynchronous, through the buffer) or write-blocking (synchronous: a guest write completes "
      "once the destination has it).", [(f'max by (vm, mode) (livemig_disk_mirror_mode{{{VM}}}) == 1',
                                         "{{vm}} {{mode}}")], 12),
    P("timeseries", "Mirror ready and actively synced", "none",
      "QEMU's ready (the bulk copy is done) and actively-synced (ready and nothing in flight).",
      [(f"livemig_disk_mirror_ready{{{VM}}}", "{{vm}} ready"),
       (f"livemig_disk_mirror_actively_synced{{{VM}}}", "{{vm}} actively synced")]),
    per_vm("timeseries", "Mirror buffer fill", "bytes", "The transmit buffer mirrored writes and the bulk copy share.",
           "livemig_disk_mirror_buffer_bytes"),
    per_s("Mirrored writes per second", "none", "Guest writes the I/O mirror sent, per emulated second.",
          "livemig_disk_mirrored_writes_total"),
    per_s("Guest disk IOPS", "none", "The guest's disk requests per emulated second, by operation.",
          "livemig_guest_disk_requests_total", "vm, op", "{{vm}} {{op}}"),
    per_s("Guest disk throughput", "Bps", "The guest's disk bytes per emulated second, by operation.",
          "livemig_guest_disk_bytes_total", "vm, op", "{{vm}} {{op}}"),
    P("timeseries", "Guest write latency by mirror mode", "s", "Mean guest disk write latency in each mode so far.",
      [(f"livemig_disk_write_latency_seconds{{{VM}}}", "{{vm}} {{mode}}")]),
    P("stat", "Mirror mode switches", "none", "Switches into each mode so far.",
      [(f"sum by (vm, mode) (livemig_disk_mirror_switches_total{{{VM}}})", "{{vm}} {{mode}}")], 6),
    P("stat", "Mirrored bytes", "bytes", "Guest-written bytes the mirror sent after the copy.",
      [(f"livemig_disk_mirrored_bytes_total{{{VM}}}", "{{vm}}")], 6),
    LINKS,
]

SPLIT = [
    P("bars", "Pages given to each host", "none",
      "The split's placement: pages for the main host and for each memory server (S-memV §IV-A).",
      [(f"livemig_split_assigned_pages{{{VM}}}", "{{vm}} {{host}}")], 12),
    LINKS,
    per_s("Remote page-ins and page-outs per second", "none",
          "Pages brought from and evicted to the memory servers, per emulated second, after the switch-over.",
          "livemig_remote_pages_total", "vm, direction", "{{vm}} {{direction}}"),
    per_s("Remote-paging bandwidth", "Bps", "Remote-paging bytes per emulated second, in and out.",
          "livemig_remote_paging_bytes_total", "vm, direction", "{{vm}} {{direction}}"),
    per_s("Remote faults per second", "none", "Remote page faults on the main host per emulated second.",
          "livemig_remote_faults_total"),
    P("timeseries", "Remote fault latency distribution", "none", "Faults by latency bucket (log2 microseconds).",
      [(f"sum by (le) (livemig_remote_fault_latency_seconds_bucket{{{VM}}})", "le {{le}}")]),
    *latency_stats("Remote fault latency", "livemig_remote_fault_latency_seconds"),
    per_vm("stat", "Blocked on remote faults", "s", "Time the vCPUs waited for remote pages so far.",
           "livemig_remote_blocked_seconds_total", 6),
    per_vm("stat", "Remote faults", "none", "Remote page faults so far.", "livemig_remote_faults_total", 6),
]

DASHBOARDS = {
    "overview": ("livemig: overview", "livemig-overview", OVERVIEW),
    "pipeline": ("livemig: parallel pipeline (PMigrate)", "livemig-pipeline", PIPELINE),
    "compression": ("livemig: compression (zstd, XBZRLE)", "livemig-compression", COMPRESSION),
    "convergence-postcopy": ("livemig: convergence and post-copy", "livemig-convergence-postcopy", CONVERGENCE),
    "storage": ("livemig: storage (disk copy, I/O mirror)", "livemig-storage", STORAGE),
    "split": ("livemig: split migration (S-memV)", "livemig-split", SPLIT),
}
PANEL_BUILDERS = {"timeseries": timeseries.Panel, "stat": stat.Panel, "state": statetimeline.Panel,
                  "bars": bargauge.Panel}


def _panel(p: P):
    b = (PANEL_BUILDERS[p.kind]().title(p.title).description(p.description).datasource(DS)
         .span(p.width).height(8 if p.kind != "stat" else 5))
    if p.unit:
        b = b.unit(p.unit)
    for ref, (expr, legend) in zip("ABCDEFGH", p.queries):
        b = b.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS))
    return b


def build(name: str) -> dict:
    """One dashboard as Grafana's JSON model (a dict)."""
    title, uid, panels = DASHBOARDS[name]
    d = (dashboard.Dashboard(title).uid(uid).tags(["livemig"]).refresh("1s").time("now-15m", "now")
         .timezone("browser").editable()
         .with_variable(dashboard.DatasourceVariable("DS_PROMETHEUS").label("Prometheus").type("prometheus"))
         .with_variable(dashboard.QueryVariable("vm").label("VM").datasource(DS)
                        .query("label_values(livemig_phase, vm)").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
                        .multi(True).include_all(True).all_value(".*"))
         .annotation(dashboard.AnnotationQuery().name("Phases").datasource(DS).enable(True)
                     .icon_color("rgba(255, 96, 96, 1)")
                     .expr(f'livemig_phase{{{VM}, phase!~"setup|completed"}} == 1')))
    for p in panels:
        d = d.with_panel(_panel(p))
    model = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(d.build()))
    for i, panel in enumerate(model["panels"], 1):
        panel["id"] = i
        panel["options"] = panel.get("options") or {}  # Grafana wants an object where the SDK leaves null
    return model


def render(name: str) -> str:
    return json.dumps(build(name), indent=2, sort_keys=True) + "\n"


def queries(model: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target and annotation of a dashboard model."""
    out = [(p["title"], t["expr"]) for p in model["panels"] for t in p.get("targets", [])]
    out += [(f"annotation {a['name']}", a["expr"]) for a in model["annotations"]["list"] if a.get("expr")]
    return out


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DASHBOARDS:
        p = out / f"{name}.json"
        p.write_text(render(name))
        paths.append(p)
    return paths


if __name__ == "__main__":
    for path in write():
        print(path)
