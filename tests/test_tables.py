"""Tables: `compare` prints a rich table that does not wrap when piped, or Markdown with --markdown;
Markdown tables (reproduce's) read back into the same cells."""
import json
import os
import subprocess

from cluster.tables import from_markdown, to_markdown
from tests.conftest import LIVEMIG, ROOT


def _result(d, name, total, downtime, saturation=0.01, status="completed", stop_reason=None):
    d.mkdir()
    (d / "result.json").write_text(json.dumps({"scenario": name, "status": status, "verified": status == "completed",
                                               "stop_reason": stop_reason, "total_time_s": total, "downtime_ms": downtime,
                                               "iterations": 3, "memory_bytes_sent": 2.0 ** 31,
                                               "emulation": {"fidelity": {"saturation": saturation}}}))
    return d


def test_compare_piped_and_as_markdown(tmp_path):
    a, b = _result(tmp_path / "a", "vanilla", 12.0, 300.0), _result(tmp_path / "b", "pmigrate", 3.0, 100.0, 0.08)
    plain = subprocess.run([LIVEMIG, "compare", str(a), str(b)], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert plain.returncode == 0, plain.stderr
    rows = [line for line in plain.stdout.splitlines() if "Migration time" in line]
    assert len(rows) == 1 and "12.00 s" in rows[0] and "4.00" in rows[0]  # one line, not wrapped
    md = subprocess.run([LIVEMIG, "compare", str(a), str(b), "--markdown"], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
    headers, cells = from_markdown(md.stdout.split("\n\n", 1)[1])
    assert headers == ["Metric", "A", "B", "A/B"]
    assert ["Downtime", "300.00 ms", "100.00 ms", "3.00"] in cells
    # Each run's saturation is shown, and the one over 5% is marked, so an unfaithful run is seen beside its figures.
    sat = next(c for c in cells if c[0].startswith("Saturation"))
    assert sat[1:3] == ["1.0%", "8.0% saturated"]
    assert ["Status", "completed, verified", "completed, verified", "-"] in cells
    assert ["# of pre-copy iterations", "3", "3", "1.00"] in cells  # a count, not 3.00


def test_compare_says_when_a_run_did_not_complete(tmp_path):
    """A failed run's figures are not a migration's: the table's first row and a warning say so."""
    a = _result(tmp_path / "a", "vanilla", 12.0, 300.0)
    b = _result(tmp_path / "b", "cut", 3.0, 0.0, status="failed", stop_reason="link down")
    md = subprocess.run([LIVEMIG, "compare", str(a), str(b), "--markdown"], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
    assert md.returncode == 0, md.stderr
    _, cells = from_markdown(md.stdout.split("\n\n", 1)[1])
    assert cells[0] == ["Status", "completed, verified", "failed: link down", "-"]
    assert "B did not complete a verified migration (failed: link down)" in " ".join(md.stderr.split())


def test_markdown_round_trip():
    headers, rows = ["experiment", "figure"], [["Xen idle", "1.5"], ["KVM", "-"]]
    assert from_markdown(to_markdown(headers, rows)) == (headers, rows)


def test_the_run_summary_has_disk_sent_only_when_a_disk_moved():
    """`livemig run`'s table: "Disk sent" when any column sent disk bytes, and a line of faults."""
    from cluster.results import fault_line, table_rows
    mem = {"status": "completed", "verified": True, "memory_bytes_sent": 2**30, "disk_bytes_sent": 0}
    disk = mem | {"disk_bytes_sent": 4 * 2**30}
    labels = [label for label, _ in table_rows([mem, mem])]
    assert "Disk sent" not in labels and "Total memory sent" in labels
    rows = dict(table_rows([mem, disk]))
    assert rows["Disk sent"] == ["-", "4.00 GiB"] and rows["Total memory sent"] == ["1.00 GiB"] * 2
    assert fault_line(mem) is None and fault_line(mem | {"faults": []}) is None
    faults = [{"kind": "link-down", "target": "a:eth0->b:eth0", "outcome": "survived"},
              {"kind": "kill-destination", "target": "vm", "outcome": "aborted-vm-safe"}]
    assert fault_line({"faults": faults}) == \
        "faults: link-down (a:eth0->b:eth0) -> survived, kill-destination (vm) -> aborted-vm-safe"


def test_techniques_stay_readable_narrow_and_piped():
    """Piped: tables at the fixed width (not one character per cell); narrow: a block per option."""
    from agents.techniques import registry
    from cluster.cli import _technique_blocks
    from cluster.tables import WIDTH
    r = subprocess.run([LIVEMIG, "techniques"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) < 1000 and max(map(len, lines)) <= WIDTH, len(lines)
    for spec in registry.all_specs():
        text = _technique_blocks(spec, 80)
        assert max(map(len, text.splitlines())) <= 80
        assert all(f"  {o.name} = " in text for o in spec.options)
        assert all(o.qemu_name in text for o in spec.options if o.qemu_name)


def test_sweep_help_shows_vary():
    r = subprocess.run([LIVEMIG, "sweep", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0 and "[vary] one or two settings" in r.stdout, r.stdout


# --- saturation, shown and marked in every table (issue 8, item 4) ------------------------------
def test_saturation_cell_marks_over_five_percent():
    from cluster.tables import saturation_cell
    assert [saturation_cell(s) for s in (None, 0.0, 0.05, 0.0501, 0.54)] == [
        "-", "0.0%", "5.0%", "5.0% saturated", "54.0% saturated"]


def _sat_result(saturation):
    return {"emulation": {"fidelity": {"saturation": saturation}}, "total_time_s": 2.0, "verified": True}


def test_sweep_table_has_a_saturation_column_marked_by_its_worst_repeat():
    from rich.console import Console

    from cluster.sweep import Point, Spec, summary, screen_table
    spec = Spec(path=ROOT / "x.toml", name="s", base=ROOT / "b.toml", base_data={}, repeats=2, vary={"k": [1, 2]})
    calm, hot = Point({"k": 1}, "k=1"), Point({"k": 2}, "k=2")
    calm.results = [_sat_result(0.01), _sat_result(0.02)]
    hot.results = [_sat_result(0.01), _sat_result(0.09)]
    console = Console(width=300, record=True)
    console.print(screen_table(summary(spec, [calm, hot])))
    lines = console.export_text().splitlines()
    assert "saturation %" in next(line for line in lines if "point" in line)
    assert "saturated" not in next(line for line in lines if "k=1" in line)
    assert "5 (1-9) saturated" in next(line for line in lines if "k=2" in line)


def test_reproduce_tables_show_each_runs_saturation():
    from cluster import reproduce, reproduce_convergence, reproduce_smemv
    pair = [{"experiment": "Xen idle", "saturation": [0.01, 0.2], "rows": [
        {"metric": "Migration time", "unit": "s", "a": 4.0, "b": 2.0, "ratio": 2.0, "paper_a": 4.0, "paper_b": 2.0,
         "paper_ratio": 2.0, "deviation": 0.0}]}]
    headers, cells = from_markdown(reproduce.markdown(pair))
    assert headers[-1] == "saturation A / B" and cells[0][-1] == "1.0% / 20.0% saturated"
    model = [{"dirty_pages_per_s": 0, "gbps": 1, "downtime_limit_ms": 30, "saturation": 0.06,
              "emulated": dict.fromkeys(reproduce.MODEL_FIGURES, 1.0),
              "predicted": dict.fromkeys(reproduce.MODEL_FIGURES, 1.0),
              "deviation": dict.fromkeys(reproduce.MODEL_FIGURES, 0.0)}]
    assert from_markdown(reproduce.model_markdown(model))[1][0][-1] == "6.0% saturated"
    conv = reproduce_convergence.row("forced", {"verified": True, "emulation": {"fidelity": {"saturation": 0.03}},
                                                "vms": [{"total_time_s": 9.0, "downtime_ms": 900.0, "app": {},
                                                         "memory_bytes_sent": 1e9}]})
    md = reproduce_convergence.markdown({"methods": [conv], "nics": [], "checks": []})
    assert from_markdown(md.split("\n\n")[0])[1][0][-1] == "3.0%"
    smemv = reproduce_smemv._row("g", "ideal", {"status": "completed", "verified": True, "total_time_s": 1.0,
                                                "downtime_ms": 5.0, **_sat_result(0.07)}, None)
    assert from_markdown(reproduce_smemv.markdown([smemv | {"experiment": "e"}]))[1][0][-1] == "7.0% saturated"


def test_bench_rows_mark_saturated_runs():
    from cluster.bench import saturation_fields
    assert saturation_fields(_sat_result(0.02)) == {"saturation": 0.02, "saturated": False}
    assert saturation_fields(_sat_result(0.3)) == {"saturation": 0.3, "saturated": True}
    assert saturation_fields({"status": "failed"})["saturated"]  # a run without a figure is not trusted


def test_compare_refuses_a_result_json_holding_infinity(tmp_path):
    """A run never writes NaN or Infinity; a file that holds one is not a result.json (one line, exit 2),
    rather than a table showing 'inf s' (a fresh-eyes finding)."""
    a = _result(tmp_path / "a", "vanilla", 12.0, 300.0)
    b = tmp_path / "b"
    b.mkdir()
    (b / "result.json").write_text('{"scenario": "x", "total_time_s": Infinity}')
    r = subprocess.run([LIVEMIG, "compare", str(a), str(b)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Infinity" in r.stderr, r.stderr


def test_compare_and_report_refuse_a_result_json_of_another_shape(tmp_path):
    """Valid JSON that no run writes (an array, a figure that is a string, `vms` of numbers, `app`
    a list, a status that is a number) is refused in one line naming the field, exit 2, by
    compare and report alike; it used to end in a traceback (a fresh-eyes finding)."""
    a = _result(tmp_path / "a", "vanilla", 12.0, 300.0)
    for n, (body, words) in enumerate([("[1, 2]", "an array, not an object"),
                                       ('{"status": "completed", "total_time_s": "fast"}', "total_time_s: 'fast'"),
                                       ('{"status": "completed", "vms": [1]}', "vms: not a list of objects"),
                                       ('{"status": "completed", "vms": [{"vm": "x", "app": [1]}]}',
                                        "vms[0].app: not an object"),
                                       ('{"status": 3}', "status: 3 is not a string"),
                                       ('{"reference": {"figures": {"downtime_ms": "1 s"}}}', "reference.figures")]):
        b = tmp_path / f"b{n}"
        b.mkdir()
        (b / "result.json").write_text(body)
        (b / "timeline.jsonl").write_text('{"t": 0.0, "kind": "event", "event": "guests-started"}\n')
        for args in (["compare", str(a), str(b)], ["report", str(b), "--out", str(tmp_path / "r.html")]):
            r = subprocess.run([LIVEMIG, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and "not a result.json" in lines[0], (args, r.stderr)
            assert f"{b / 'result.json'}: not a result.json ({words}" in lines[0], (args, lines[0])
