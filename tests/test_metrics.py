"""Prometheus: a real server scrapes the exporter during a real run and sees figures move."""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import LIVEMIG, ROOT, scenario_text

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None and not os.environ.get("LIVEMIG_REQUIRE_PROMETHEUS"),
    reason="the Prometheus server is not installed (apt-get install prometheus)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(prom_port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]


@needs_prometheus
def test_prometheus_scrapes_a_running_migration(tmp_path):
    assert PROMETHEUS, "LIVEMIG_REQUIRE_PROMETHEUS is set but prometheus is not installed"
    exporter, prom = _free_port(), _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
        f"scrape_configs:\n  - job_name: livemig\n    static_configs:\n      - targets: ['127.0.0.1:{exporter}']\n")
    server = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        f = tmp_path / "s.toml"
        writer = '{ kind = "uniform", dirty_pages_per_s = 4000, working_set_gib = 0.25 }'
        f.write_text(scenario_text("scraped", memory_gib=1, workload=writer, gbps=1, dilation=0.5))
        run = subprocess.Popen([LIVEMIG, "run", str(f), "--out", str(tmp_path / "out"), "--quiet",
                                "--metrics-port", str(exporter)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen: list[float] = []
        names: set[str] = set()
        deadline = time.monotonic() + 120
        while run.poll() is None and time.monotonic() < deadline:
            try:
                res = _query(prom, 'sum(livemig_pages_sent_total{vm="vm"})')
                if res:
                    seen.append(float(res[0]["value"][1]))
                    names |= {m["metric"]["__name__"] for m in _query(prom, '{__name__=~"livemig_.*"}')}
            except OSError:
                pass
            time.sleep(0.5)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        # Prometheus saw the counter grow while the migration ran.
        assert len(seen) >= 3, seen
        assert seen[-1] > seen[0] > 0 or (seen[-1] > 0 and len(set(seen)) > 1), seen
        for name in ("livemig_pages_sent_total", "livemig_memory_sent_bytes_total", "livemig_remaining_bytes",
                     "livemig_link_throughput_bytes_per_second", "livemig_phase", "livemig_iterations"):
            assert name in names, (name, names)
    finally:
        server.terminate()
        server.wait(10)


def test_exporter_serves_livemig_metrics():
    """Without a Prometheus server: the exporter itself speaks the text format."""
    from cluster.metrics import MetricsExporter
    port = _free_port()
    m = MetricsExporter(port)
    try:
        m.finish("vm1", {"downtime_ms": 250.0, "total_time_s": 10.0, "verified": True, "status": "completed",
                         "app": {"ops_per_s_before": 100.0}, "iteration_log": []})
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'livemig_downtime_seconds{vm="vm1"} 0.25' in body
        assert 'livemig_verified_ratio{vm="vm1"} 1.0' in body
    finally:
        m.close()
