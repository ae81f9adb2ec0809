"""Invariance: an emulated figure must not depend on memory_scale, batch size or dilation;
and the predictor must agree with the emulator.

Every technique and encoding is run at a base setting and with one knob
changed at a time (memory_scale doubled, another batch size, dilation
doubled); total time, downtime and bytes sent must agree within 5 %. The
whole matrix is slow (`make test-slow`); the default suite keeps zstd, whose
charged CPU once depended on the batch size and memory_scale. Each case's base
run is also held to `livemig predict` within 15 %.
"""
from __future__ import annotations

import pytest

from cluster.predict import predict
from cluster.runner import RunOptions, run_scenario
from cluster.scenario import parse_scenario

TOLERANCE = 0.05
MODEL_TOLERANCE = 0.15
DOWNTIME_FLOOR_MS = 2.0  # the link's latency error (DESIGN.md: p99 0.13 ms per hop) and the harvest's jitter

WRITER = '{ kind = "uniform", dirty_pages_per_s = 6000, working_set_gib = 0.125 }'
# PMigrate's Xen costs send about 10,000 pages/s per consumer: a writer that lets one consumer converge.
SLOW_WRITER = '{ kind = "uniform", dirty_pages_per_s = 1500, working_set_gib = 0.125 }'
MEMWRITE = '{ kind = "memwrite", writes_per_s = 20000, bytes_per_write = 64, working_set_gib = 0.0625 }'
TEXT = "{ zero = 0.0, text = 0.6, structured = 0.3, random = 0.1 }"
MIXED = "{ zero = 0.3, text = 0.3, structured = 0.2, random = 0.2 }"

# name -> (workload, content, [migration] lines, [cpu] lines, cores, gbps)
CASES = {
    "precopy-image": (WRITER, MIXED, "", "", 2, 1),
    "precopy-time-sliced": (WRITER, MIXED, 'strategy = "time-sliced"\nslice_mib = 16\nmax_iterations = 100000', "", 2, 1),
    "pmigrate-1": (SLOW_WRITER, MIXED, "consumers = 1", 'profile = "xen-4.1"', 8, 10),
    "pmigrate-4": (SLOW_WRITER, MIXED, 'consumers = 4\naddress_space_lock = "range"', 'profile = "xen-4.1"', 8, 10),
    "zero-pages": ('{ kind = "idle" }', "{ zero = 0.6, text = 0.2, structured = 0.1, random = 0.1 }", "", "", 2, 1),
    "zstd": ('{ kind = "idle" }', TEXT, 'compression = "zstd"', "", 2, 1),
    "xbzrle": (MEMWRITE, MIXED, 'compression = "xbzrle"', "", 2, 1),
    "xbzrle+zstd": (MEMWRITE, MIXED, 'compression = "xbzrle+zstd"', "", 2, 1),
}
BASE = {"memory_scale": 1 / 64, "batch_pages": 64, "dilation": 1.0}
KNOBS = {"memory_scale": 1 / 32, "batch_pages": 16, "dilation": 2.0}


def scenario(case: str, memory_scale: float, batch_pages: int, dilation: float) -> str:
    workload, content, migration, cpu, cores, gbps = CASES[case]
    return f'''
name = "invariance-{case.replace("+", "-plus-")}"
[emulation]
memory_scale = {memory_scale}
dilation = {dilation}
seed = 11
[[hosts]]
name = "src"
role = "source"
cores = {cores}
nics = [{{ name = "eth0", speed_gbps = {gbps} }}]
[[hosts]]
name = "dst"
role = "destination"
cores = {cores}
nics = [{{ name = "eth0", speed_gbps = {gbps} }}]
[network]
rtt_ms = 0.2
[[vms]]
name = "vm"
memory_gib = 0.5
workload = {workload}
content = {content}
[migration]
downtime_limit_ms = 100
batch_pages = {batch_pages}
{migration}
[cpu]
{cpu}
'''


def run(case: str, **knobs) -> dict:
    settings = BASE | knobs
    r = run_scenario(parse_scenario(scenario(case, **settings), f"{case}.toml"), RunOptions())
    assert r["status"] == "completed" and r["verified"] is True, (case, settings, r.get("stop_reason"))
    return r


def deviations(a: dict, b: dict) -> dict:
    """Relative deviation of b from a in each invariant figure (downtime: beyond its floor)."""
    out = {k: abs(b[k] / a[k] - 1) for k in ("total_time_s", "memory_bytes_sent")}
    out["downtime_ms"] = max(0.0, abs(b["downtime_ms"] - a["downtime_ms"]) - DOWNTIME_FLOOR_MS) / a["downtime_ms"]
    return out


_BASE: dict[str, dict] = {}  # each case's base run, shared by its knobs


def check(case: str, knob: str) -> None:
    if case not in _BASE:
        _BASE[case] = run(case)
    base, other = _BASE[case], run(case, **{knob: KNOBS[knob]})
    dev = deviations(base, other)
    print(f"invariance {case} {knob}: " + ", ".join(f"{k} {v:+.1%}" for k, v in dev.items()))
    for key, d in dev.items():
        assert d <= TOLERANCE, (case, knob, key, base[key], other[key])


def check_model(case: str) -> None:
    if case not in _BASE:
        _BASE[case] = run(case)
    got = _BASE[case]
    model = predict(parse_scenario(scenario(case, **BASE), f"{case}.toml"))
    dev = {k: got[k] / model[k] - 1 for k in ("total_time_s", "memory_bytes_sent")}
    print(f"model {case}: " + ", ".join(f"{k} {v:+.1%}" for k, v in dev.items()))
    for key, d in dev.items():
        assert abs(d) <= MODEL_TOLERANCE, (case, key, got[key], model[key])


def test_zstd_emulator_and_predictor_agree(ray_cluster):
    check_model("zstd")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_emulator_and_predictor_agree(ray_cluster, request, case):
    if case in KNOWN_MODEL:
        request.node.add_marker(pytest.mark.xfail(reason="a known gap between emulator and model (KNOWN_MODEL)"))
    check_model(case)


@pytest.mark.parametrize("knob", ["batch_pages", "memory_scale"])
def test_zstd_figures_do_not_depend_on_scaling(ray_cluster, knob):
    check("zstd", knob)


# Found by this matrix and not fixed yet (`make test-slow`, base -> other; last run 2026-11-30 after the
# emulated-schedule change of issue 8, quiet machine):
# - time-sliced: a slice of 16 emulated MiB is 64 real pages at memory_scale 1/64, one batch of
#   64 pages, so slices cross the link unpipelined; downtime +42 % (memory_scale), +64 % (batch_pages).
# - PMigrate with 4 consumers: total time +12 % (memory_scale), +21 % (batch_pages), downtime +127 % and
#   +408 %; with few real batches per pass the consumers idle at each pass's end (1 consumer: downtime
#   +22 %, batch_pages).
# - XBZRLE: downtime +24 to +28 % against every knob: the stop-and-copy set of a memwrite guest varies
#   from run to run.
# - precopy-image: downtime +5.9 % (batch_pages), just over the 5 % tolerance, in that run.
KNOWN = {("precopy-time-sliced", k) for k in KNOBS} | {("pmigrate-4", "memory_scale"), ("pmigrate-4", "batch_pages"),
         ("pmigrate-1", "batch_pages")} | {(c, k) for c in ("xbzrle", "xbzrle+zstd") for k in KNOBS}
# The emulator takes longer than predicted: PMigrate-4 +34 % (the idle consumers above); XBZRLE +22 %
# and XBZRLE+zstd +25 % with 19 % and 9 % more bytes (the memwrite guest's deltas; the same at
# fcf49f5, before this stop's changes).
KNOWN_MODEL = {"pmigrate-4", "xbzrle", "xbzrle+zstd"}


@pytest.mark.slow
@pytest.mark.parametrize("knob", list(KNOBS))
@pytest.mark.parametrize("case", list(CASES))
def test_invariance_matrix(ray_cluster, request, case, knob):
    if (case, knob) in KNOWN:
        request.node.add_marker(pytest.mark.xfail(reason="a known dependence on the scaling knobs (KNOWN)"))
    check(case, knob)
