"""The Grafana dashboards: generated from cluster/dashboards.py, committed as the same JSON, querying
only what cluster/metrics.py exports, and every panel's query answered by a real Prometheus that
scraped a real run of every technique family."""
import json
import math
import re
import shutil
import subprocess
import time

import pytest

from cluster import dashboards
from cluster.dashboard_pictures import RUNS, query_range
from cluster.metrics import MetricsExporter
from tests.conftest import LIVEMIG, ROOT
from tests.test_metrics import _free_port, needs_prometheus, start_prometheus

DS_UID = "${DS_PROMETHEUS}"
METRIC = re.compile(r"livemig_[a-z_]+")
SELECTOR = re.compile(r"(livemig_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
NAMES = list(dashboards.DASHBOARDS)


@pytest.fixture(scope="module")
def models() -> dict[str, dict]:
    return {name: json.loads((dashboards.OUT / f"{name}.json").read_text()) for name in NAMES}


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[str, ...]]:
    """Exposition name -> label names, as a real exporter declares and serves them."""
    exporter = MetricsExporter(0)  # port 0: the OS picks a free one
    try:
        served = {family.name for family in exporter.registry.collect()}
        declared = exporter.declared()
        assert {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in declared} == served
        return declared
    finally:
        exporter.close()


def _all_queries(models) -> list[tuple[str, str, str]]:
    return [(name, title, expr) for name, m in models.items() for title, expr in dashboards.queries(m)]


@pytest.mark.parametrize("name", NAMES)
def test_committed_json_is_what_the_code_generates(name):
    committed = (dashboards.OUT / f"{name}.json").read_text()
    assert committed == dashboards.render(name), f"run `python -m cluster.dashboards` and commit {name}.json"


def test_dashboard_model(models):
    uids = [m["uid"] for m in models.values()]
    assert len(set(uids)) == len(uids)
    for m in models.values():
        assert m["refresh"] == "1s" and m["time"] == {"from": "now-15m", "to": "now"}
        variables = {v["name"]: v for v in m["templating"]["list"]}
        assert variables["DS_PROMETHEUS"]["type"] == "datasource"
        assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
        assert variables["vm"]["query"] == "label_values(livemig_phase, vm)"
        assert variables["vm"]["datasource"]["uid"] == DS_UID
        ids = [p["id"] for p in m["panels"]]
        assert len(ids) == len(set(ids))
    assert any(a["name"] == "Phases" for a in models["overview"]["annotations"]["list"])


def test_every_panel_has_a_title_a_datasource_and_queries(models):
    for m in models.values():
        for p in m["panels"]:
            assert p.get("title") and p["datasource"] == {"type": "prometheus", "uid": DS_UID}, p
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["expr"].strip() and t["datasource"]["uid"] == DS_UID, p["title"]


def test_queries_use_only_exported_metrics_and_labels(models, exported):
    used = set()
    for name, title, expr in _all_queries(models):
        names = set(METRIC.findall(expr))
        assert names, f"{name}/{title}: no livemig metric in {expr!r}"
        assert names <= exported.keys(), f"{name}/{title}: unknown {names - exported.keys()}"
        used |= names
        for metric, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                assert label in exported[metric], f"{title}: {metric} has no label {label!r}"
        for metric in names:  # the VM filter is applied wherever the metric has a vm label
            if "vm" in exported[metric]:
                assert re.search(re.escape(metric) + r'\{[^}]*vm=~"\$vm"', expr), f"{title}: {metric} without $vm"
    assert used == exported.keys(), f"metrics with no panel: {exported.keys() - used}"


def test_rates_are_per_emulated_second(models):
    """No panel divides a counter by real time: every increase() goes over the emulated clock."""
    for name, title, expr in _all_queries(models):
        assert "rate(" not in expr.replace("irate(", "rate("), f"{name}/{title}: {expr}"
        if "increase(" in expr:
            assert "delta(livemig_emulated_time_seconds" in expr, f"{name}/{title}: {expr}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_queries_and_prometheus_config_pass_promtool(models, tmp_path):
    rules = {"groups": [{"name": "livemig", "rules": [
        {"record": f"livemig:check:{i}", "expr": expr.replace("$vm", ".*")}
        for i, (_, _, expr) in enumerate(_all_queries(models))]}]}
    (tmp_path / "rules.yml").write_text(json.dumps(rules))  # JSON is YAML
    r = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["promtool", "check", "config", str(ROOT / "grafana" / "prometheus.yml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def _has_data(series: list) -> bool:
    return any(math.isfinite(float(v)) for s in series for _, v in s["values"])


def _panels_without_data(models, tmp_path, scenario: str, names: list[str]) -> list[str]:
    """Run `scenario` scraped by a real Prometheus; the queries of dashboards `names` that return nothing."""
    exporter, prom = _free_port(), _free_port()
    server = start_prometheus(tmp_path, exporter, prom)
    try:
        start = time.time()
        run = subprocess.run([LIVEMIG, "run", str(ROOT / "tests" / "data" / scenario), "--quiet",
                              "--out", str(tmp_path / "out"), "--metrics-port", str(exporter), "--linger", "3"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        end = time.time()
        return [f"{name}/{title}: {expr}" for name, title, expr in _all_queries({n: models[n] for n in names})
                if not _has_data(query_range(prom, expr.replace("$vm", ".*"), start, end))]
    finally:
        server.terminate()
        server.wait(10)


def test_every_dashboard_is_checked_by_a_run():
    assert sorted(n for names in RUNS.values() for n in names) == sorted(NAMES)


@needs_prometheus
def test_every_panel_returns_data_from_a_real_run(models, tmp_path):
    empty = _panels_without_data(models, tmp_path, "families.toml", RUNS["families.toml"])
    assert not empty, "panels without data:\n" + "\n".join(empty)
    _counters_are_each_vms_own(tmp_path / "out")


@pytest.mark.slow  # 35-46 s: Ray, a disk copy, a split migration and 2 s of remote paging
@needs_prometheus
def test_storage_and_split_panels_return_data_from_a_real_run(models, tmp_path):
    """A storage migration (disk copy and I/O mirror) and a split migration (with remote paging after it)."""
    empty = _panels_without_data(models, tmp_path, "storage-split.toml", RUNS["storage-split.toml"])
    assert not empty, "panels without data:\n" + "\n".join(empty)
    _storage_and_split_counters_are_the_results(tmp_path / "out")


def _counters_are_each_vms_own(out) -> None:
    """The exporter's counters, fed the run's timeline, are each VM's own figures of result.json
    (they once counted every earlier VM's pages too)."""
    result = json.loads((out / "result.json").read_text())
    m = MetricsExporter(0)
    try:
        for line in (out / "timeline.jsonl").read_text().splitlines():
            m.observe(json.loads(line))
        for v in result["vms"]:
            assert {e: m.counters["livemig_pages_sent"][(v["vm"], e)] for e in v["pages"]} == v["pages"], v["vm"]
            sent = sum(m.counters["livemig_memory_sent_bytes"][(v["vm"], e)] for e in ("normal", "zero", "compressed"))
            assert sent == pytest.approx(v["memory_bytes_sent"], rel=1e-9), v["vm"]
            # Everything sent was acknowledged by the run's end (the timeline's transfer_rate counts it).
            delivered = m.counters["livemig_memory_delivered_bytes"][(v["vm"],)]
            assert delivered == pytest.approx(v["memory_bytes_sent"], rel=1e-9), v["vm"]
            c = v.get("compression") or {}
            if c.get("xbzrle"):  # QEMU's xbzrle pages count every cache hit: deltas, unchanged pages and overflows
                x = c["xbzrle"]
                hits = v["pages"]["delta"] + c["unchanged_pages"] + x["overflow"]
                assert x["pages"] == pytest.approx(hits, rel=0.01), c
    finally:
        m.close()


def _storage_and_split_counters_are_the_results(out) -> None:
    """Fed the run's timeline and results, the exporter's disk and remote-paging counters are
    result.json's figures."""
    result = json.loads((out / "result.json").read_text())
    by_vm = {v["vm"]: v for v in result["vms"]}
    m = MetricsExporter(0)
    try:
        for line in (out / "timeline.jsonl").read_text().splitlines():
            m.observe(json.loads(line))
        rp = by_vm["split"]["split"]["remote_paging"]
        # From the timeline alone: remote paging seen while the run went on, never more than at its end.
        assert 0 < m.counters["livemig_remote_faults"][("split",)] <= rp["faults"]
        # (a few real guest writes land behind the copy: the last progress record may precede all of them)
        assert m.counters["livemig_disk_mirrored_writes"][("db",)] <= by_vm["db"]["disk"]["mirror"]["mirrored_writes"]
        assert 0 < m.counters["livemig_disk_copied_bytes"][("db",)] <= by_vm["db"]["disk_bytes_sent"]
        for vm, v in by_vm.items():
            m.finish(vm, v)
        mirror = by_vm["db"]["disk"]["mirror"]
        assert m.counters["livemig_disk_mirrored_writes"][("db",)] == pytest.approx(mirror["mirrored_writes"])
        assert m.counters["livemig_disk_copied_bytes"][("db",)] + m.counters["livemig_disk_mirrored_bytes"][("db",)] \
            == pytest.approx(by_vm["db"]["disk_bytes_sent"])
        assert m.counters["livemig_remote_faults"][("split",)] == rp["faults"]
        assert m.counters["livemig_remote_pages"][("split", "in")] == pytest.approx(rp["page_ins"])
        assert sum(m.remote_latency[("split",)]["counts"]) == rp["faults"]
        assert {h: n for (vm, h), n in m.gauges["split_pages"].items() if vm == "split"} == dict(
            zip(("main", "sub"), by_vm["split"]["split"]["pages_by_host"]))
        progress = [r for r in map(json.loads, (out / "timeline.jsonl").read_text().splitlines())
                    if r.get("event") == "disk-progress"]
        assert progress and progress[-1]["copied_bytes"] > 0 and progress[-1]["guest_io"]["reads"] > 0
        if shutil.which("promtool"):  # the new families pass Prometheus's own lint
            body = _scrape_registry(m)
            check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True,
                                   timeout=30)
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        m.close()


def _scrape_registry(m: MetricsExporter) -> str:
    from prometheus_client import generate_latest
    return generate_latest(m.registry).decode()
