"""`livemig report`: a real run's timeline drawn into a page that headless Chromium opens
without errors, every image decoded, nothing fetched."""
import subprocess
from pathlib import Path

import pytest

from cluster.report import (
    ReportError,
    columns,
    load_runs,
    phase_spans,
    render,
    table_rows,
)
from tests.browser import external_references, needs_chromium, open_page
from tests.conftest import LIVEMIG, ROOT


@pytest.fixture(scope="module")
def run_dir(swept):
    """One real run: the tiny sweep's first (tests/conftest.py)."""
    return swept[0] / "out" / "speed_gbps=2" / "r1"


def test_phases_follow_the_timeline(run_dir):
    (run,) = load_runs([run_dir])
    spans = phase_spans(run, "vm", 0)
    labels = [s[2] for s in spans]
    assert labels[0] == "setup" and labels[1] == "precopy 1", labels
    assert "stop-and-copy" in labels and labels[-1] == "switch-over", labels
    assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:])), spans  # in order, no overlap
    iterations = run.result["vms"][0]["iterations"]
    assert sum(label.startswith("precopy") for label in labels) == iterations


def test_table_has_the_run_figures(run_dir):
    (run,) = load_runs([run_dir])
    rows = {r["metric"]: r for r in table_rows(columns([run]))}
    assert rows["Migration time"]["values"] == [run.result["total_time_s"]]
    assert rows["Verified"]["values"] == [True]
    assert rows["Guest ops/s before"]["values"] == [run.result["app"]["ops_per_s_before"]]


@needs_chromium
def test_report_opens_in_chromium(run_dir, tmp_path):
    r = subprocess.run([LIVEMIG, "report", str(run_dir), "--out", str(tmp_path / "r.html")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    page = tmp_path / "r.html"
    pngs = sorted(tmp_path.glob("r-*.png"))
    assert [p.name for p in pngs] == ["r-cpu.png", "r-dirty-vs-transfer.png", "r-guest.png", "r-iterations.png",
                                      "r-links.png"]
    assert external_references(page) == []
    seen = open_page(page, tmp_path)
    assert seen["errors"] == []
    assert len(seen["images"]) == len(pngs)
    assert all(i["complete"] and i["width"] >= 400 and i["height"] >= 150 for i in seen["images"]), seen


@needs_chromium
def test_the_probe_sees_a_broken_image(tmp_path):
    """The check can fail: an image that does not decode is reported."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head></head><body><img src="data:image/png;base64,AAAA"></body></html>')
    seen = open_page(page, tmp_path)
    assert seen["images"][0]["width"] == 0 and seen["errors"], seen


def test_out_into_a_directory_or_under_a_file(run_dir, tmp_path):
    r = subprocess.run([LIVEMIG, "report", str(run_dir), "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and (tmp_path / "report.html").is_file(), r.stderr
    (tmp_path / "f").write_text("")
    r = subprocess.run([LIVEMIG, "report", str(run_dir), "--out", str(tmp_path / "f" / "x.html")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is a file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_directory_without_runs_is_one_line(tmp_path):
    with pytest.raises(ReportError, match="no result.json"):
        load_runs([tmp_path])
    r = subprocess.run([LIVEMIG, "report", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_two_runs_overlaid(run_dir, tmp_path):
    runs = load_runs([run_dir, run_dir])
    done = render(runs, tmp_path / "two.html")
    assert [p.name for p in done["pngs"]] == ["two-overlay.png", "two-iterations.png"]
    rows = {r["metric"]: r for r in table_rows(columns(runs))}
    assert rows["Migration time"]["ratios"] == [1.0, 1.0]


def test_a_run_without_timeline_below_a_directory_is_left_out(run_dir, tmp_path):
    import shutil
    shutil.copytree(run_dir, tmp_path / "a" / "r1")
    shutil.copy(run_dir / "result.json", (tmp_path / "b" / "r1").mkdir(parents=True) or tmp_path / "b" / "r1")
    warnings = []
    runs = load_runs([tmp_path], warn=warnings.append)
    assert [r.name for r in runs] == ["a/r1"]
    assert len(warnings) == 1 and "b/r1 left out: no timeline.jsonl" in warnings[0]
    with pytest.raises(ReportError, match="missing"):
        load_runs([tmp_path / "b" / "r1"])


def test_out_is_checked_before_drawing(tmp_path):
    """--out that cannot take the page or its PNG files: one line (ReportError), nothing written."""
    from cluster.report import check_out
    (tmp_path / "page.html").mkdir()
    (tmp_path / "r-guest.png").mkdir()
    (tmp_path / "f").write_text("")
    for target, words in [(tmp_path / "page.html", "is a directory"), (tmp_path / "r.html", "r-guest.png is a dir"),
                          (tmp_path / "f" / "x.html", "is a file"), (Path("/proc/r.html"), "cannot write in /proc"),
                          # The HTML page went into x.png, or a file named "afile" (a fresh-eyes finding).
                          (tmp_path / "x.png", "does not end in .html"), (tmp_path / "afile", "does not end in .html")]:
        with pytest.raises(ReportError, match=words):
            check_out(target)
    assert check_out(tmp_path / "new" / "ok.html") == tmp_path / "new" / "ok.html"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f", "new", "page.html", "r-guest.png"]
    run = _failed_run(tmp_path / "run", '{"t": 0, "kind": "event", "event": "guests-started"}\n')
    for out in ("/proc/r.html", str(tmp_path / "r.html")):
        r = _report(run, "--out", out)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--out" in r.stderr, r.stderr
    assert [p.name for p in tmp_path.glob("*.png")] == ["r-guest.png"] and not (tmp_path / "r.html").exists()


def _failed_run(d: Path, timeline: str) -> Path:
    """A run directory as a run that failed early leaves it: result.json and a short timeline."""
    from cluster.results import write_result
    write_result({"scenario": "t", "status": "failed", "verified": False, "stop_reason": "RuntimeError: x", "vms": []},
                 d)
    (d / "timeline.jsonl").write_text(timeline)
    return d


def _report(*args):
    return subprocess.run([LIVEMIG, "report", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=60)


GOOD = '{"t": 0, "kind": "event", "event": "guests-started"}'


@pytest.mark.parametrize("line, words", [
    ('{"t": 0}', "needs a 'kind'"), ("5", "not int"), ('[1]', "not list"),
    ('{"t": 0, "kind": "event", "event": "migration-start", "migration": 0}', "without 'vm'"),
    ('{"t": "0", "kind": "guest", "vm": "v", "ops_per_s": 1}', "'t' must be a number"),
    ('{"t": 0, "kind": "host", "host": "h", "cpu_cores": []}', "cpu_cores"),
    ('{"t": 0, "kind": "link", "link": ["x"], "throughput_bytes_s": 1}', "'link' must be a name"),
    ('{"t": 0, "kind": ', "not JSON")])
def test_a_timeline_line_that_is_not_a_record_is_one_line(tmp_path, line, words):
    """Named by file and line number, exit 2, before anything is drawn."""
    run = _failed_run(tmp_path, f"{GOOD}\n{line}\n{GOOD}\n")
    with pytest.raises(ReportError, match=f"timeline.jsonl:2: .*{words}"):
        load_runs([run])
    if line == "5":
        r = _report(run)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "timeline.jsonl:2:" in r.stderr and not (run / "report.html").exists()


def test_a_cut_last_line_is_left_out_with_a_warning(tmp_path):
    warnings = []
    (run,) = load_runs([_failed_run(tmp_path, f'{GOOD}\n{{"t": 0.1, "ki')], warn=warnings.append)
    assert len(run.records) == 1 and "timeline.jsonl:2: last line cut short" in warnings[0], warnings


def test_nothing_to_draw_or_a_file_is_one_line(tmp_path):
    run = _failed_run(tmp_path / "run", "")
    r = _report(run)
    assert r.returncode == 2 and "empty, nothing to draw (failed: RuntimeError: x)" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (run / "report.html").exists()
    r = _report(ROOT / "scenarios" / "quickstart.toml")
    assert r.returncode == 2 and "is a file, not a run directory" in r.stderr, r.stderr
    warnings = []
    _failed_run(tmp_path / "run2", GOOD + "\n")
    assert [x.name for x in load_runs([tmp_path], warn=warnings.append)] == ["run2"]
    assert "run left out: its timeline.jsonl is empty" in warnings[0], warnings


def test_a_malformed_record_below_a_sweep_directory_is_left_out_with_one_warning(tmp_path):
    """In a sweep's directory, one bad record (or an unreadable result.json) does not stop the report:
    it is left out with one line naming the file; the same run named itself is still an error."""
    bad = _failed_run(tmp_path / "p" / "r1", f"{GOOD}\n5\n{{\"t\": 0}}\n{GOOD}\n")
    _failed_run(tmp_path / "p" / "r2", f"{GOOD}\n")
    (tmp_path / "q" / "r1").mkdir(parents=True)
    (tmp_path / "q" / "r1" / "result.json").write_text("{")
    (tmp_path / "q" / "r1" / "timeline.jsonl").write_text(f"{GOOD}\n")
    warnings = []
    runs = load_runs([tmp_path], warn=warnings.append)
    assert [r.name for r in runs] == ["p/r1", "p/r2"] and len(runs[0].records) == 2
    assert len(warnings) == 2, warnings
    assert "2 malformed record(s) left out, the first" in warnings[0] and "p/r1/timeline.jsonl:2:" in warnings[0]
    assert "q/r1 left out:" in warnings[1] and "result.json: unreadable" in warnings[1]
    with pytest.raises(ReportError, match="timeline.jsonl:2:"):
        load_runs([bad])


def test_a_sweep_json_holding_nan_is_one_line(tmp_path):
    """`livemig sweep` never writes NaN or Infinity (allow_nan=False): a sweep.json holding one is
    refused in one line (exit 2), as a result.json holding one is, not plotted."""
    _failed_run(tmp_path / "p" / "r1", f"{GOOD}\n")
    (tmp_path / "sweep.json").write_text('{"points": [{"point": "p", "total_time_s": {"median": NaN}}]}')
    r = subprocess.run([LIVEMIG, "report", str(tmp_path), "--out", str(tmp_path / "r.html")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "sweep.json: not a sweep.json (holds NaN" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r.html").exists()


# --- post-copy ----------------------------------------------------------------------------------
def test_a_line_breaks_where_samples_are_missing():
    from cluster.report import break_gaps
    ts, ys = break_gaps([0.0, 0.1, 0.2, 0.6, 0.7], [5.0, 5.0, 5.0, 1.0, 5.0])
    assert ts == [0.0, 0.1, 0.2, 0.4, 0.6, 0.7]
    assert ys[3] != ys[3] and ys[:3] == [5.0, 5.0, 5.0] and ys[4:] == [1.0, 5.0]  # NaN in the gap only
    assert break_gaps([0.0, 0.1, 0.2, 0.3], [1.0] * 4) == ([0.0, 0.1, 0.2, 0.3], [1.0] * 4)


@pytest.fixture(scope="module")
def postcopy_run(ray_cluster, tmp_path_factory):
    """A real pure post-copy of a guest writing over its working set (16 MiB image, ~10 s)."""
    from cluster.results import write_result
    from cluster.runner import RunOptions, run_scenario
    from cluster.scenario import parse_scenario
    from tests.conftest import scenario_text
    out = tmp_path_factory.mktemp("pc")
    text = scenario_text("pc", memory_gib=0.25, scale=1 / 16, rtt_ms=10,
                         workload='{ kind = "uniform", dirty_pages_per_s = 20000, working_set_gib = 0.0625 }',
                         migration='technique = "postcopy"\npostcopy_after_iterations = 0\n'
                                   'adaptive_prepaging = false\npostcopy_preempt = true')
    r = run_scenario(parse_scenario(text, "pc.toml"), RunOptions(out_dir=str(out)))
    assert r["status"] == "completed" and r["postcopy"]["faults"] > 0, r["stop_reason"]
    write_result(r, out)  # as `livemig run` does
    return out


def test_a_postcopy_run_has_its_plot_and_no_empty_iterations_plot(postcopy_run, tmp_path):
    from matplotlib.image import imread

    from cluster.report import _postcopy_intervals
    (run,) = load_runs([postcopy_run])
    pc = run.result["postcopy"]
    g = [r for r in run.of("guest", vm="vm") if "postcopy_faults" in r]
    # The timeline's cumulative figures end where result.json's do; the intervals add up to them.
    assert g[-1]["postcopy_faults"] == pytest.approx(pc["faults"])
    assert g[-1]["postcopy_blocktime_s"] * 1000 == pytest.approx(pc["blocktime_ms"])
    ts, rates, blocked = _postcopy_intervals(g)
    assert sum(f * (b - a) for f, a, b in zip(rates, ts, ts[1:])) == pytest.approx(pc["faults"] - g[0]["postcopy_faults"])
    assert all(0 <= x <= 100 for x in blocked) and max(blocked) > 0
    page = tmp_path / "r.html"
    got = render([run], page)
    names = sorted(p.name for p in got["pngs"])
    assert names == ["r-cpu.png", "r-dirty-vs-transfer.png", "r-guest.png", "r-links.png", "r-postcopy.png"]
    assert "no per-iteration plot" in page.read_text()  # said on the page, not silently left out
    img = imread(tmp_path / "r-postcopy.png")
    assert img.shape[0] >= 200 and img.shape[1] >= 600
