"""The guest's throughput before, during and after a migration, from its
ticks (cluster/collect.py): a guest blocked in post-copy faults does not
tick, and the gap must count as no progress, not be skipped."""
from __future__ import annotations

import pytest

from cluster.collect import app_figures


def ticks(until: float, rate: float, gaps: tuple = ()) -> list:
    """(real time, cumulative ops) every 2 ms (the guest's tick) at `rate` ops/s, none inside `gaps`."""
    out = []
    for i in range(int(until / 0.002) + 1):
        t = i * 0.002
        if not any(a < t < b for a, b in gaps):
            out.append((t, rate * (t - sum(min(t, b) - a for a, b in gaps if a < t))))
    return out


def test_precopy_during_is_before_the_pause():
    s = ticks(10.0, 1000.0)
    f = app_figures(s, 2.0, 6.0, 6.5, 1.0, 2.0, 6.5)
    assert f["ops_per_s_during"] == pytest.approx(1000.0)
    assert f["degradation"] == pytest.approx(0.0, abs=0.01)


def test_postcopy_during_counts_the_blocked_stretch():
    # Switch at 3.0, blocked in faults from 3.1 to 7.1, source released at 8.0:
    # during spans 2.0-3.0 and 3.1-8.0 (5.9 s), in which 4.0 s made no progress.
    s = ticks(12.0, 1000.0, gaps=((3.1, 7.1),))
    f = app_figures(s, 2.0, 3.0, 3.1, 1.0, 2.0, 3.1, released=8.0)
    assert f["ops_per_s_during"] == pytest.approx(1000.0 * 1.9 / 5.9, rel=0.03)
    assert f["degradation"] == pytest.approx(1 - 1.9 / 5.9, rel=0.05)
    assert f["ops_per_s_after"] == pytest.approx(1000.0, rel=0.01)


def test_a_window_without_ticks_is_no_progress_not_unknown():
    s = ticks(10.0, 500.0, gaps=((2.05, 6.0),))
    f = app_figures(s, 2.5, 5.0, 5.2, 1.0, 2.0, 5.2)
    assert f["ops_per_s_during"] == pytest.approx(0.0)
    assert f["degradation"] == pytest.approx(1.0)


WRITER = '{ kind = "uniform", dirty_pages_per_s = 2000, working_set_gib = 0.125 }'


def test_the_windows_around_the_migration_are_settings(ray_cluster, tmp_path):
    """[emulation] warmup_s and after_s: the migration starts after the one, the run
    ends after the other, and the application is measured before and after in them."""
    import json

    from cluster.runner import RunOptions, run_scenario
    from cluster.scenario import parse_scenario
    from tests.conftest import scenario_text
    text = scenario_text("windows", memory_gib=0.25, workload=WRITER, gbps=10).replace(
        "seed = 5", "seed = 5\nwarmup_s = 0.3\nafter_s = 0.7")
    r = run_scenario(parse_scenario(text, "windows.toml"), RunOptions(out_dir=str(tmp_path)))
    v = r["vms"][0]
    assert r["verified"] and v["started_at_s"] == pytest.approx(0.3, abs=0.05)
    records = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    switched = next(e["t"] for e in records if e.get("event") == "switched-over")
    assert records[-1]["t"] - switched == pytest.approx(0.7, abs=0.1)
    for when in ("before", "during", "after"):
        assert v["app"][f"ops_per_s_{when}"] == pytest.approx(2000, rel=0.05), when
