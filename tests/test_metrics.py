"""Prometheus: a real server scrapes the exporter during a real run and sees figures move."""
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster import dashboard_pictures
from cluster.dashboard_pictures import free_port as _free_port
from tests.conftest import LIVEMIG, ROOT, scenario_text

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None and not os.environ.get("LIVEMIG_REQUIRE_PROMETHEUS"),
    reason="the Prometheus server is not installed (apt-get install prometheus)")


def start_prometheus(tmp_path, exporter: int, prom: int) -> subprocess.Popen:
    """Debian's Prometheus scraping the exporter every 200 ms, its API on `prom` (cluster/dashboard_pictures.py)."""
    assert PROMETHEUS, "LIVEMIG_REQUIRE_PROMETHEUS is set but prometheus is not installed"
    return dashboard_pictures.start_prometheus(tmp_path, exporter, prom, PROMETHEUS)


def _query(prom_port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]


def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _values(body: str, name: str) -> dict:
    """{labels as a sorted tuple: value} of one sample name in a scrape."""
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


@needs_prometheus
def test_prometheus_scrapes_a_running_migration(tmp_path):
    """At dilation 2: Prometheus sees the figures move, the final ones stay up with --linger,
    a scrape taken mid-run passes `promtool check metrics`, and bytes over the emulated clock
    give the emulated transfer rate (bytes over real time would give half of it)."""
    exporter, prom = _free_port(), _free_port()
    server = start_prometheus(tmp_path, exporter, prom)
    try:
        f = tmp_path / "s.toml"
        writer = '{ kind = "uniform", dirty_pages_per_s = 4000, working_set_gib = 0.25 }'
        f.write_text(scenario_text("scraped", memory_gib=0.75, workload=writer, gbps=1, dilation=2))
        run = subprocess.Popen([LIVEMIG, "run", str(f), "--out", str(tmp_path / "out"), "--quiet",
                                "--metrics-port", str(exporter), "--linger", "4"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen: list[float] = []
        names: set[str] = set()
        scrapes: list[str] = []
        started = time.time()
        deadline = time.monotonic() + 150
        while run.poll() is None and time.monotonic() < deadline:
            try:
                body = _scrape(exporter)
                if _values(body, "livemig_phase").get((("phase", "precopy"), ("vm", "vm"))) == 1.0:
                    scrapes.append(body)
                res = _query(prom, 'sum(livemig_pages_sent_total{vm="vm"})')
                if res:
                    seen.append(float(res[0]["value"][1]))
                    names |= {m["metric"]["__name__"] for m in _query(prom, '{__name__=~"livemig_.*"}')}
                verified = _query(prom, 'livemig_verified{vm="vm"}')
                if verified and float(verified[0]["value"][1]) == 1.0:
                    break  # the final figures reached Prometheus while the exporter lingers
            except OSError:
                pass
            time.sleep(0.4)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert verified and float(verified[0]["value"][1]) == 1.0, "the final figures were never scraped"
        # Prometheus saw the counter grow while the migration ran.
        assert len(seen) >= 3, seen
        assert seen[-1] > seen[0] > 0 or (seen[-1] > 0 and len(set(seen)) > 1), seen
        for name in ("livemig_pages_sent_total", "livemig_memory_sent_bytes_total", "livemig_remaining_bytes",
                     "livemig_link_sent_bytes_total", "livemig_phase", "livemig_iteration",
                     "livemig_emulated_time_seconds", "livemig_cpu_seconds_total", "livemig_guest_operations_total",
                     "livemig_downtime_seconds_bucket", "livemig_expected_downtime_seconds",
                     "livemig_memory_delivered_bytes_total"):
            assert name in names, (name, names)
        assert len(scrapes) >= 3, len(scrapes)
        check = subprocess.run(["promtool", "check", "metrics"], input=scrapes[len(scrapes) // 2],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        _check_emulated_rate(scrapes[0], scrapes[-1], json.loads((tmp_path / "out" / "result.json").read_text()))
        _check_transfer_panel(prom, started, time.time())
    finally:
        server.terminate()
        server.wait(10)


def _check_transfer_panel(prom: int, start: float, end: float) -> None:
    """The pipeline dashboard's transfer-rate panel, as Prometheus computes it over the run at
    dilation 2: what was sent and what was delivered each peak at the link's emulated rate
    (1 Gbit/s), not at half of it."""
    from cluster.dashboards import TRANSFER
    for expr, legend in TRANSFER.queries:
        url = f"http://127.0.0.1:{prom}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": expr.replace("$vm", ".*"), "start": start, "end": end, "step": 0.5})
        series = json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]
        values = [float(v) for s in series for _, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
        assert values and 0.7 * 125e6 < max(values) < 1.15 * 125e6, (legend, max(values, default=None))


def _check_emulated_rate(first: str, last: str, result: dict) -> None:
    """Bytes sent between two scrapes over the emulated time between them: the link's
    rate (1 Gbit/s, a little less on the wire), not half of it as per real second."""
    sent = [sum(_values(b, "livemig_memory_sent_bytes_total").values()) for b in (first, last)]
    clock = [_values(b, "livemig_emulated_time_seconds")[()] for b in (first, last)]
    assert clock[1] - clock[0] > 0.5, clock
    rate = (sent[1] - sent[0]) / (clock[1] - clock[0])
    assert 0.6 * 125e6 < rate < 1.1 * 125e6, (rate, result["avg_throughput_mbytes_s"])


def test_exporter_serves_livemig_metrics():
    """Without a Prometheus server: the exporter itself speaks the text format."""
    from cluster.metrics import MetricsExporter
    port = _free_port()
    m = MetricsExporter(port)
    try:
        m.finish("vm1", {"downtime_ms": 250.0, "total_time_s": 10.0, "verified": True, "status": "completed",
                         "technique": "precopy",
                         "app": {"ops_per_s_before": 100.0}, "iteration_log": []})
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'livemig_downtime_seconds_bucket{le="0.25",technique="precopy",vm="vm1"} 1.0' in body
        assert 'livemig_downtime_seconds_bucket{le="0.1",technique="precopy",vm="vm1"} 0.0' in body
        assert 'livemig_downtime_seconds_sum{technique="precopy",vm="vm1"} 0.25' in body
        assert 'livemig_verified{vm="vm1"} 1.0' in body
    finally:
        m.close()


def test_the_exporter_counts_what_the_destination_acknowledged():
    """`delivered_bytes` of the timeline's migration records (cluster/collect.py counters_of) summed
    per VM as livemig_memory_delivered_bytes_total, beside what was posted (livemig_memory_sent_bytes)."""
    from cluster.metrics import MetricsExporter
    port = _free_port()
    m = MetricsExporter(port)
    try:
        for t, posted, delivered in ((0.5, 3e6, 1e6), (1.0, 2e6, 4e6)):
            m.observe({"kind": "migration", "t": t, "vm": "vm1", "phase": "precopy", "iteration": 1,
                       "remaining": 0.0, "normal_bytes": posted, "zero_bytes": 0.0, "encoded_bytes": 0.0,
                       "delivered_bytes": delivered, **{f"pages_{e}": 0 for e in ("normal", "zero", "compressed",
                                                                                  "delta")}})
        body = _scrape(port)
        assert _values(body, "livemig_memory_delivered_bytes_total") == {(("vm", "vm1"),): 5e6}
        assert sum(_values(body, "livemig_memory_sent_bytes_total").values()) == 5e6
    finally:
        m.close()
