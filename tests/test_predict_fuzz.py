"""`livemig predict` never crashes: over valid scenarios it gives finite, non-negative figures
(and says in one line each what it does not model)."""
from __future__ import annotations

import math

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cluster.predict import predict
from cluster.scenario import ScenarioError, parse_scenario
from tests.conftest import scenario_text

WORKLOADS = st.one_of(
    st.just('{ kind = "idle" }'),
    st.builds(lambda r, ws: f'{{ kind = "uniform", dirty_pages_per_s = {r}, working_set_gib = {ws} }}',
              st.floats(0, 2e6), st.floats(0.001, 1)),
    st.builds(lambda r, w, s: f'{{ kind = "hotset", ops_per_s = {r}, write_fraction = {w}, zipf_s = {s} }}',
              st.floats(1, 1e6), st.floats(0, 1), st.floats(1.01, 5)),
    st.builds(lambda g, r: f'{{ kind = "sweeper", sweep_gib = {g}, write_mbytes_s = {r} }}',
              st.floats(0.001, 1), st.floats(0.1, 5000)),
    st.builds(lambda r, b, ws: f'{{ kind = "memwrite", writes_per_s = {r}, bytes_per_write = {b}, working_set_gib = {ws} }}',
              st.floats(0, 1e7), st.integers(1, 4096), st.floats(0.001, 1)),
    st.builds(lambda m, f, c: f'{{ kind = "video", frame_mib = {m}, fps = {f}, changed_fraction = {c} }}',
              st.floats(0.1, 64), st.floats(0.1, 120), st.floats(0.01, 1)),
)


@st.composite
def content(draw) -> str:
    w = [draw(st.integers(0, 10)) for _ in range(4)]
    if sum(w) == 0:
        w[0] = 1
    z, t, s, r = (x / sum(w) for x in w)
    r = 1.0 - z - t - s
    return f"content = {{ zero = {z!r}, text = {t!r}, structured = {s!r}, random = {max(0.0, r)!r} }}"


@st.composite
def migration(draw) -> str:
    lines = [f'compression = "{draw(st.sampled_from(["none", "zstd", "xbzrle", "xbzrle+zstd"]))}"',
             f"zstd_level = {draw(st.integers(-7, 22))}",
             f"xbzrle_cache_mib = {draw(st.floats(0.5, 4096))}",
             f"consumers = {draw(st.integers(1, 8))}",
             f'strategy = "{draw(st.sampled_from(["image", "time-sliced"]))}"',
             f'address_space_lock = "{draw(st.sampled_from(["global", "rwlock", "range"]))}"',
             f"max_iterations = {draw(st.integers(1, 200))}"]
    return "\n".join(lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mem=st.floats(0.01, 8), gbps=st.floats(0.01, 100), rtt=st.floats(0, 100), limit=st.floats(1, 5000),
       workload=WORKLOADS, mix=content(), mig=migration(),
       profile=st.sampled_from(["modern", "xen-4.1", "kvm-0.14"]))
def test_predict_gives_finite_non_negative_figures(mem, gbps, rtt, limit, workload, mix, mig, profile):
    text = scenario_text("fuzz", memory_gib=mem, workload=workload, gbps=gbps, rtt_ms=rtt, downtime_ms=limit,
                         scale=1 / 64, extra_vm=mix, migration=mig) + f'[cpu]\nprofile = "{profile}"\n'
    try:
        sc = parse_scenario(text, "fuzz.toml")
    except ScenarioError:
        assume(False)
    p = predict(sc, "fuzz.toml")
    for key in ("total_time_s", "downtime_ms", "memory_bytes_sent", "downtime_bytes_sent", "cpu_seconds",
                "avg_throughput_mbytes_s", "iterations"):
        assert math.isfinite(p[key]) and p[key] >= 0, (key, p[key])
    assert all(v >= 0 for v in p["pages"].values())
    for key in ("memory_compress_rate", "compress_cpu_seconds", "decompress_cpu_seconds"):
        if "compression" in p:
            assert math.isfinite(p["compression"][key]) and p["compression"][key] >= 0
    assert all(isinstance(line, str) and "\n" not in line for line in p["not_modelled"])
