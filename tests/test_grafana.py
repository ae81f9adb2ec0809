"""The Grafana dashboard only queries metrics that cluster/metrics.py really exports."""
import json
import re
import shutil
import subprocess

import pytest

from cluster.metrics import MetricsExporter
from tests.conftest import ROOT

DASHBOARD = ROOT / "grafana" / "livemig.json"
DS_UID = "${DS_PROMETHEUS}"
METRIC = re.compile(r"livemig_[a-z_]+")
SELECTOR = re.compile(r"(livemig_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[str, ...]]:
    """Exposition name -> label names, as a real exporter declares and serves them."""
    exporter = MetricsExporter(0)  # port 0: the OS picks a free one
    try:
        served = {family.name for family in exporter.registry.collect()}
        declared = exporter.declared()
        assert {name.removesuffix("_total") for name in declared} == served
        return declared
    finally:
        exporter.close()


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return out


def _exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]


def test_dashboard_model(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["refresh"] == "1s"
    assert dashboard["time"] == {"from": "now-15m", "to": "now"}
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["vm"]["definition"] == "label_values(livemig_phase, vm)"
    assert variables["vm"]["datasource"]["uid"] == DS_UID
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_every_panel_has_a_title_a_datasource_and_queries(dashboard):
    for p in _panels(dashboard):
        assert p.get("title"), p
        assert p["datasource"] == {"type": "prometheus", "uid": DS_UID}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t["datasource"]["uid"] == DS_UID, p["title"]


def test_queries_use_only_exported_metrics_and_labels(dashboard, exported):
    used = set()
    for title, expr in _exprs(dashboard):
        names = set(METRIC.findall(expr))
        assert names, f"{title}: no livemig metric in {expr!r}"
        assert names <= exported.keys(), f"{title}: unknown {names - exported.keys()}"
        used |= names
        for name, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                assert label in exported[name], f"{title}: {name} has no label {label!r}"
        for name in names:  # the VM filter is applied wherever the metric has a vm label
            if "vm" in exported[name]:
                assert re.search(re.escape(name) + r'\{[^}]*vm=~"\$vm"', expr), f"{title}: {name} without $vm"
    assert used == exported.keys(), f"metrics with no panel: {exported.keys() - used}"


def test_verified_value_mappings(dashboard):
    (panel,) = [p for p in dashboard["panels"] if "livemig_verified_ratio" in p["targets"][0]["expr"]]
    assert panel["type"] == "stat"
    options = {k: v["text"] for m in panel["fieldConfig"]["defaults"]["mappings"] for k, v in m["options"].items()}
    assert options == {"1": "verified", "0": "NOT verified"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_queries_parse_as_promql(dashboard, tmp_path):
    rules = {"groups": [{"name": "livemig", "rules": [
        {"record": f"livemig:check:{i}", "expr": expr.replace("$vm", ".*")}
        for i, (_, expr) in enumerate(_exprs(dashboard))]}]}
    (tmp_path / "rules.yml").write_text(json.dumps(rules))  # JSON is YAML
    r = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
