"""`livemig sweep`: a tiny sweep (2 points x 2 repeats) really runs, summarises, resumes and reports."""
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from cluster.sweep import Point, apply, load_spec, point_name, select, spread
from tests.browser import external_references, needs_chromium, open_page
from tests.conftest import LIVEMIG, ROOT, scenario_text
from tests.conftest import run_ids as _run_ids
from tests.conftest import sweep_cli as _sweep


def test_sweep_runs_every_point_and_repeat(swept):
    d, first, _, _ = swept
    summ = json.loads((d / "out" / "sweep.json").read_text())
    assert [p["point"] for p in summ["points"]] == ["speed_gbps=2", "speed_gbps=5"]
    assert all(p["runs"] == 2 and p["verified"] == 2 for p in summ["points"])
    for p in summ["points"]:  # each run's link speed is the point's, as loaded
        for r in (d / "out" / p["point"]).glob("r*/result.json"):
            nics = [n for h in json.loads(r.read_text())["scenario_as_loaded"]["hosts"] for n in h["nics"]]
            assert {n["speed_gbps"] for n in nics} == {p["settings"]["hosts.*.nics.*.speed_gbps"]}
    slow, fast = (p["figures"]["total_time_s"] for p in summ["points"])
    assert slow["min"] <= slow["median"] <= slow["max"]
    assert fast["median"] < slow["median"]  # 5 Gbit/s beats 2 Gbit/s
    header = (d / "out" / "sweep.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["point", "vm", "hosts.*.nics.*.speed_gbps", "runs", "verified"]
    assert "total_time_s_median" in header and "downtime_ms_max" in header
    assert "speed_gbps=2" in first.stdout and "median (min-max)" in first.stdout


def test_a_filter_runs_only_its_point_and_the_rest_resumes(swept):
    d, first, part, ids = swept
    assert "2 run(s), 0 reused" in part.stderr, part.stderr
    assert [p["point"] for p in json.loads(part.stdout)["points"]] == ["speed_gbps=2"]
    assert len(ids) == 2
    assert "4 run(s), 2 reused" in first.stderr, first.stderr  # the first point's runs were kept
    # The second run of each invocation built its agents in the first's processes (cluster/actor_pool.py).
    started, again = map(int, re.search(r"actors: (\d+) started, (\d+) built again", part.stderr).groups())
    assert started + again == 8 and again >= 1, part.stderr
    assert set(ids) <= set(_run_ids(d / "out"))
    r = _sweep(d, "--only", "speed_gbps=7")
    assert r.returncode == 2 and "no point matches" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_second_invocation_reuses_the_runs(swept):
    d, _, _, _ = swept
    before = _run_ids(d / "out")
    t = time.monotonic()
    again = _sweep(d)
    assert again.returncode == 0, again.stderr
    assert "4 run(s), 4 reused" in again.stderr
    assert time.monotonic() - t < 30  # no Ray started
    assert _run_ids(d / "out") == before


@needs_chromium
def test_the_sweep_directory_reports_as_overlaid_runs(swept, tmp_path):
    d, _, _, _ = swept
    r = subprocess.run([LIVEMIG, "report", str(d / "out"), "--out", str(tmp_path / "s.html")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 run(s)" in r.stdout, r.stdout
    assert sorted(p.name for p in tmp_path.glob("s-*.png")) == ["s-iterations.png", "s-overlay.png", "s-sweep.png"]
    page = tmp_path / "s.html"
    text = page.read_text()
    assert all(f"speed_gbps={g}/r{i}" in text for g in (2, 5) for i in (1, 2))
    assert external_references(page) == []
    seen = open_page(page, tmp_path)
    assert seen["errors"] == [] and len(seen["images"]) == 3, seen
    assert all(i["complete"] and i["width"] >= 400 for i in seen["images"]), seen


def _points():
    return [Point({"hosts.*.nics.*.speed_gbps": g}, point_name({"hosts.*.nics.*.speed_gbps": g})) for g in (2, 5)]


def test_settings_apply_by_path():
    data = {"hosts": [{"nics": [{"speed_gbps": 1}, {"speed_gbps": 1}]}, {"nics": [{"speed_gbps": 1}]}],
            "vms": [{"name": "a"}, {"name": "b"}]}
    out = apply(data, "hosts.*.nics.*.speed_gbps", 25)
    assert [n["speed_gbps"] for h in out["hosts"] for n in h["nics"]] == [25, 25, 25]
    assert data["hosts"][0]["nics"][0]["speed_gbps"] == 1  # the base is untouched
    assert apply(data, "vms.1.workload.kind", "idle")["vms"][1]["workload"] == {"kind": "idle"}
    with pytest.raises(KeyError, match="not an index"):
        apply(data, "vms.5.name", "c")
    with pytest.raises(KeyError, match="ends at a table or list"):
        apply(data, "vms", 1)
    assert point_name({"migration.technique": "postcopy", "hosts.*.nics.*.speed_gbps": 10}) == \
        "technique=postcopy,speed_gbps=10"
    points = _points()
    assert [p.name for p in select(points, ["speed_gbps=5"])] == ["speed_gbps=5"]
    assert select(points, ["hosts.*.nics.*.speed_gbps=2"])[0].name == "speed_gbps=2"
    assert spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}


def test_bad_spec_is_one_line(tmp_path):
    (tmp_path / "base.toml").write_text(scenario_text("b"))
    (tmp_path / "other.toml").write_text('base = "base.toml"\n[vary]\n"a.b" = [1]\n')
    for body, words in [('base = "base.toml"\nrepeats = 0\n[vary]\n"a.b" = [1]\n', "repeats"),
                        ('base = "nope.toml"\n[vary]\n"a.b" = [1]\n', "no such file"),
                        ('base = "spec.toml"\n[vary]\n"a.b" = [1]\n', "names this sweep file itself"),
                        ('base = "other.toml"\n[vary]\n"a.b" = [1]\n', "is a sweep file, not a scenario"),
                        ('base = "base.toml"\n[vary]\n"a" = [1]\n"b" = [1]\n"c" = [1]\n', "one or two"),
                        ('base = "base.toml"\ncolour = 1\n[vary]\n"a" = [1]\n', "unknown key"),
                        ('base = "base.toml"\n[vary]\n"migration.downtime_limit_ms" = ["x"]\n', "downtime_limit_ms"),
                        ('name = "../../../x"\nbase = "base.toml"\n[vary]\n"a" = [1]\n', "name:"),
                        ('name = 5\nbase = "base.toml"\n[vary]\n"a" = [1]\n', "name:"),
                        ('base = "base.toml"\n[vary]\n"*" = [1]\n', "dotted path"),
                        ('base = "base.toml"\n[vary]\n"vms..name" = [1]\n', "dotted path"),
                        ('base = "base.toml"\n[vary]\n"vms.0.name" = ["a\\u0000b"]\n', "NUL byte"),
                        (f'base = "base.toml"\n[vary]\n"vms.0.name" = ["a", "{"b" * 251}"]\n', "at most 255"),
                        (f'base = "base.toml"\n[vary]\n"a.x" = ["{"b" * 130}"]\n"c.y" = ["{"b" * 130}"]\n',
                         "at most 255"),
                        # Two points in one directory: the second would overwrite the first's runs.
                        ('base = "base.toml"\n[vary]\n"emulation.dilation" = [1, 2, 1]\n', "listed twice"),
                        ('base = "base.toml"\n[vary]\n"vms.0.name" = ["a b", "a_b"]\n', "make the directory 'name=a_b'")]:
        (tmp_path / "spec.toml").write_text(body)
        r = subprocess.run([LIVEMIG, "sweep", str(tmp_path / "spec.toml"), "--out", str(tmp_path / "o")],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, (body, r.stderr)
        assert not (tmp_path / "o").exists()


def test_shipped_sweeps_load():
    from cluster.sweep import point_scenario
    specs = sorted((ROOT / "scenarios" / "sweeps").glob("*.toml"))
    assert specs
    for path in specs:
        spec = load_spec(path)
        assert all(point_scenario(spec, p) for p in spec.points())


def _loaded(tmp_path):
    from cluster.scenario import load_scenario
    (tmp_path / "base.toml").write_text(scenario_text("b"))
    return load_scenario(tmp_path / "base.toml")


def test_only_a_completed_verified_run_is_reused(tmp_path):
    """A run aborted by Ctrl-C, failed or unverified is run again, never counted in the medians."""
    from cluster.results import write_result
    from cluster.sweep import reusable
    sc = _loaded(tmp_path)
    as_loaded = sc.as_loaded()
    good = {"status": "completed", "verified": True, "scenario_as_loaded": as_loaded}
    for name, result, kept in [("good", good, True),
                               ("aborted", good | {"status": "aborted", "stop_reason": "interrupted (Ctrl-C)"}, False),
                               ("failed", good | {"status": "failed"}, False),
                               ("unverified", good | {"verified": False}, False),
                               ("other", good | {"scenario_as_loaded": {}}, False)]:
        write_result(result, tmp_path / name)
        assert (reusable(tmp_path / name, sc) is not None) == kept, name
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "result.json").write_text("[1]")
    assert reusable(tmp_path / "list", sc) is None
    # NaN or Infinity, which no run writes: not reused, said in one line (Python's json would take it).
    (tmp_path / "nan").mkdir()
    (tmp_path / "nan" / "result.json").write_text((tmp_path / "good" / "result.json").read_text()
                                                  .replace('"verified": true', '"verified": true, "x": NaN'))
    said = []
    assert reusable(tmp_path / "nan", sc, said.append) is None
    assert len(said) == 1 and "nan/result.json: not reused" in said[0] and "NaN" in said[0], said


def test_an_interrupted_run_is_recognised():
    from cluster.sweep import interrupted
    vm = {"vm": "vm", "status": "aborted", "stop_reason": "interrupted (Ctrl-C)"}
    assert interrupted({"status": "aborted", "vms": [vm]})
    assert interrupted({"status": "aborted", "stop_reason": "interrupted before the migrations started", "vms": []})
    assert not interrupted({"status": "aborted", "vms": [vm | {"stop_reason": "cancel event"}]})
    assert not interrupted({"status": "completed", "vms": [vm | {"status": "completed"}]})


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_the_aborted_run_is_not_kept(tmp_path):
    """Ctrl-C during the first repeat: the sweep stops (exit 1, one line), runs no further repeat,
    writes no summary, and the aborted run is run again, not reused, on resume."""
    import signal

    from tests.conftest import SLOW_WRITER
    (tmp_path / "base.toml").write_text(scenario_text("slow", memory_gib=1, workload=SLOW_WRITER, gbps=1))
    (tmp_path / "spec.toml").write_text('base = "base.toml"\nrepeats = 2\n[vary]\n"hosts.*.nics.*.speed_gbps" = [1]\n')
    p = subprocess.Popen([LIVEMIG, "sweep", str(tmp_path / "spec.toml"), "--out", str(tmp_path / "out")], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timeline = tmp_path / "out" / "speed_gbps=1" / "r1" / "timeline.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and '"migration-start"' not in (timeline.read_text() if timeline.exists() else ""):
        time.sleep(0.2)
    time.sleep(1.0)  # into the pre-copy
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("interrupted: the finished runs stay in"), err
    r1 = json.loads((timeline.parent / "result.json").read_text())
    assert r1["status"] == "aborted" and "interrupted" in r1["vms"][0]["stop_reason"], r1["vms"][0]["stop_reason"]
    assert not (timeline.parent.parent / "r2").exists() and not (tmp_path / "out" / "sweep.json").exists()


def _vm(name: str, time_s: float, degradation: float) -> dict:
    return {"vm": name, "destination": "dst", "total_time_s": time_s, "downtime_ms": 10 * time_s,
            "app": {"ops_per_s_before": 100.0, "degradation": degradation, "non_response_s": degradation}}


def test_a_sweep_of_several_vms_says_its_figures_are_the_whole_runs_and_gives_each_vms():
    """The worst VM's degradation, not the first's; each VM's own figures beside; the table says which."""
    from rich.console import Console

    from cluster.sweep import Spec, screen_table, summary
    runs = [{"total_time_s": 3.0, "downtime_ms": 30.0, "verified": True,
             "app": {"a": {"degradation": 0.01}, "b": {"degradation": d}},
             "vms": [_vm("a", 1.0, 0.01), _vm("b", 3.0, d)]} for d in (0.2, 0.4)]
    spec = Spec(path=Path("s.toml"), name="s", base=Path("b.toml"), base_data={}, repeats=2, vary={"x": [1]})
    summ = summary(spec, [Point({"x": 1}, "x=1", runs)])
    row = summ["points"][0]
    assert row["figures"]["degradation"]["median"] == pytest.approx(0.3)  # the worst VM's: b's
    assert row["per_vm"]["a"]["degradation"]["median"] == pytest.approx(0.01)
    assert row["per_vm"]["b"]["total_time_s"]["max"] == 3.0
    assert "worst VM" in summ["aggregate"]
    console = Console(width=200, record=True)
    console.print(screen_table(summ))
    text = console.export_text()
    assert "x=1 (whole run)" in text and "  a " in text and "worst VM" in text
    one = summary(spec, [Point({"x": 1}, "x=1", [runs[0]["vms"][0]])])
    assert "aggregate" not in one and "per_vm" not in one["points"][0]


def test_the_sweep_tables_saturated_legend_shows_only_when_a_row_is_marked():
    from rich.console import Console

    from cluster.sweep import Spec, screen_table, summary
    spec = Spec(path=Path("s.toml"), name="s", base=Path("b.toml"), base_data={}, repeats=1, vary={"x": [1]})

    def text(saturation):
        run = {"total_time_s": 1.0, "downtime_ms": 5.0, "verified": True,
               "emulation": {"fidelity": {"saturation": saturation}}}
        console = Console(width=200, record=True)
        console.print(screen_table(summary(spec, [Point({"x": 1}, "x=1", [run])])))
        return console.export_text()
    assert "not faithful" not in text(0.01)
    assert "not faithful" in text(0.2) and "saturated" in text(0.2)
