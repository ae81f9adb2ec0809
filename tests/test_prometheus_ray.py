"""grafana/prometheus.yml scrapes both livemig and Ray's own metrics endpoint, as it claims: a real
Prometheus runs that configuration against a real run and gets `ray_*` series next to `livemig_*`.

Ray's discovery file (/tmp/ray/prom_metrics_service_discovery.json) is machine-wide: every Ray
started on this machine rewrites it, so another engineer's run would take the test over. The
test reads the run's own session directory instead (Ray names it after the driver's pid, and
writes its metrics port there) and gives Prometheus a discovery file of its own, in the format
Ray writes; everything else in the configuration is grafana/prometheus.yml's."""
import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from cluster.dashboard_pictures import free_port, start_prometheus, wait_ready
from tests.conftest import LIVEMIG, ROOT, scenario_text
from tests.test_metrics import PROMETHEUS, needs_prometheus

RAY_TMP = Path("/tmp/ray")
RAY_DISCOVERY = "/tmp/ray/prom_metrics_service_discovery.json"


def config_for(exporter: int, discovery: Path) -> dict:
    """grafana/prometheus.yml with the exporter's port, our discovery file, and 1 s scrapes."""
    cfg = yaml.safe_load((ROOT / "grafana" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["livemig"]["static_configs"][0]["targets"] == ["127.0.0.1:9477"]
    assert jobs["ray"]["file_sd_configs"][0]["files"] == [RAY_DISCOVERY]
    jobs["livemig"]["static_configs"][0]["targets"] = [f"127.0.0.1:{exporter}"]
    jobs["ray"]["file_sd_configs"][0]["files"] = [str(discovery)]
    jobs["ray"]["scrape_interval"] = jobs["ray"]["scrape_timeout"] = "1s"
    return cfg


def ray_metrics_port(pid: int, timeout_s: float = 90) -> int:
    """The metrics export port of the Ray session driver `pid` started (its session directory's file)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for f in RAY_TMP.glob(f"session_*_{pid}/metrics_export_port_*"):
            text = f.read_text().strip()
            if text.isdigit():
                return int(text)
        time.sleep(0.3)
    raise TimeoutError(f"no Ray session of pid {pid} with a metrics port under {RAY_TMP}")


def _query(prom: int, expr: str) -> list:
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]


@pytest.mark.slow  # 30-50 s: a real run kept up while Prometheus scrapes Ray's endpoint
@needs_prometheus
def test_the_shipped_configuration_scrapes_livemig_and_rays_own_metrics(tmp_path):
    exporter, prom = free_port(), free_port()
    f = tmp_path / "s.toml"
    f.write_text(scenario_text("ray-metrics", memory_gib=0.5, gbps=1, dilation=2,
                               workload='{ kind = "uniform", dirty_pages_per_s = 4000, working_set_gib = 0.125 }'))
    run = subprocess.Popen([LIVEMIG, "run", str(f), "--out", str(tmp_path / "out"), "--quiet",
                            "--metrics-port", str(exporter), "--linger", "10"], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = None
    try:
        port = ray_metrics_port(run.pid)
        discovery = tmp_path / "ray-discovery.json"  # Ray's own format
        discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{port}"]}]))
        config = json.dumps(config_for(exporter, discovery))  # JSON is YAML
        server = start_prometheus(tmp_path, exporter, prom, PROMETHEUS, config)
        wait_ready(prom)
        seen: dict[str, bool] = {}
        deadline = time.monotonic() + 120
        while run.poll() is None and time.monotonic() < deadline and not all(seen.values() or [False]):
            time.sleep(0.5)
            try:
                seen = {"ray up": any(s["value"][1] == "1" for s in _query(prom, 'up{job="ray"}')),
                        "ray_node_*": bool(_query(prom, 'count({job="ray", __name__=~"ray_node_.+"})')),
                        "livemig up": any(s["value"][1] == "1" for s in _query(prom, 'up{job="livemig"}')),
                        "livemig clock": bool(_query(prom, "livemig_emulated_time_seconds"))}
            except OSError:
                continue
        assert seen and all(seen.values()), seen
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
