"""The emulator against its analytic model, and against itself at two dilations (real Ray)."""
import pytest

from cluster.predict import predict
from cluster.runner import RunOptions, run_scenario
from cluster.scenario import parse_scenario
from tests.conftest import scenario_text

WRITER = '{ kind = "uniform", dirty_pages_per_s = 8000, working_set_gib = 0.25 }'


def _run(text: str, dilation: float | None = None) -> dict:
    sc = parse_scenario(text, "test.toml")
    return run_scenario(sc, RunOptions(dilation=dilation))


@pytest.fixture(scope="module")
def writer_runs(ray_cluster):
    text = scenario_text("writer", memory_gib=0.5, workload=WRITER, gbps=1, dilation=0.5)
    return text, {d: _run(text, d) for d in (0.5, 1.0)}


def test_uniform_writer_matches_prediction(writer_runs):
    text, runs = writer_runs
    model = predict(parse_scenario(text, "test.toml"))
    got = runs[0.5]
    assert got["status"] == "completed" and got["verified"] is True
    assert model["iterations"] >= 2, "the scenario should need several iterations"
    assert got["total_time_s"] == pytest.approx(model["total_time_s"], rel=0.10)
    assert abs(got["iterations"] - model["iterations"]) <= 1
    assert got["memory_bytes_sent"] == pytest.approx(model["memory_bytes_sent"], rel=0.10)


def test_two_unsaturated_dilations_agree(writer_runs):
    _, runs = writer_runs
    a, b = runs[0.5], runs[1.0]
    for r in (a, b):
        assert r["verified"] is True
        assert r["emulation"]["fidelity"]["saturation"] < 0.05
    assert a["total_time_s"] == pytest.approx(b["total_time_s"], rel=0.05)
    assert a["iterations"] == pytest.approx(b["iterations"], abs=1)


def test_idle_vm_one_iteration_and_guest_figures(ray_cluster):
    r = _run(scenario_text("idle", memory_gib=0.5, gbps=10, dilation=1.0))
    assert r["status"] == "completed" and r["verified"] is True
    assert r["iterations"] == 1
    mem = 0.5 * 2**30
    # Every page once, plus per-page headers; zero pages cost a marker only.
    assert 0.2 * mem < r["memory_bytes_sent"] < 1.01 * mem
    assert r["pages"]["zero"] > 0 and r["pages"]["normal"] > 0
    app = r["app"]
    assert app["ops_per_s_before"] == pytest.approx(100, rel=0.1)
    assert app["ops_per_s_after"] == pytest.approx(100, rel=0.2)
    # The guest made no progress while it was paused: at least the downtime.
    assert app["non_response_s"] >= r["downtime_ms"] / 1000 * 0.5
    assert r["downtime_ms"] < 100


def test_dirtying_faster_than_the_link_stops_by_a_cap(ray_cluster):
    hot = '{ kind = "uniform", dirty_pages_per_s = 60000, working_set_gib = 0.25 }'
    r = _run(scenario_text("hot", memory_gib=0.5, workload=hot, gbps=1, dilation=0.5, downtime_ms=10,
                           migration="max_iterations = 4"))
    assert r["status"] == "completed" and r["verified"] is True
    assert r["stop_reason"] in ("max-iterations", "stalled", "max-sent")
    assert r["downtime_ms"] > 10
