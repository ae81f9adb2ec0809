"""Invariance: an emulated figure must not depend on memory_scale, batch size or dilation;
and the predictor must agree with the emulator.

Every technique and encoding is run at a base setting and with one knob
changed at a time (memory_scale doubled, another batch size, dilation
doubled); total time, downtime and bytes sent must agree within 5 %. The
whole matrix is slow (`make test-slow`); the default suite keeps zstd, whose
charged CPU once depended on the batch size and memory_scale. Each case's base
run is also held to `livemig predict` within 15 %.

A downtime is a few tens of milliseconds: beyond 5 % it is allowed what no
scaling can remove (`downtime_allowance_ms`): this machine's wake-up jitter
(DOWNTIME_FLOOR_MS), one real page of the stop-and-copy at the coarser
memory_scale (the set's quantum: a real page stands for 1/memory_scale
emulated ones, which its slowest stage handles one after another), for the
time-sliced strategy what the guest dirties during one slice (its stop rule
looks once per slice: 16 MiB at 1 GbE is 134 ms, 805 pages at 6,000 pages/s,
26 ms of stop-and-copy), and the
runs' saturation, the share by which this machine stretched their emulated
times (the stop-and-copy set is what the guest dirtied during the last pass,
so it grows with that pass); total time and bytes are allowed that
saturation too. A downtime outside its bound is measured once more (`check`). The base memory_scale is 1/16 so that the
smallest stop-and-copy (PMigrate with one consumer: about 340 emulated pages)
still holds tens of real pages; at 1/64 it held 5 or 6, and the quantum of
one page was 17 % of that downtime.
"""
from __future__ import annotations

import pytest

from cluster.predict import predict
from cluster.runner import RunOptions, run_scenario
from cluster.scenario import parse_scenario

TOLERANCE = 0.05
MODEL_TOLERANCE = 0.15
DOWNTIME_FLOOR_MS = 2.0  # the link's latency error (DESIGN.md: p99 0.13 ms per hop) and the harvest's jitter
PAGE = 4096

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
BASE = {"memory_scale": 1 / 16, "batch_pages": 64, "dilation": 1.0}
KNOBS = {"memory_scale": 1 / 8, "batch_pages": 16, "dilation": 2.0}


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


def page_quantum_ms(case: str, memory_scale: float) -> float:
    """Emulated ms one real page of the stop-and-copy takes through its slowest stage: the link,
    or the CPU per page at either end (the case's profile, shared by its consumers)."""
    from agents.cpu import profile
    _, _, migration, cpu, _, gbps = CASES[case]
    consumers = 4 if "consumers = 4" in migration else 1
    costs = profile("xen-4.1" if "xen-4.1" in cpu else "modern", "range" if '"range"' in migration else "global")
    us_per_page = max(costs.source_us(consumers), costs.destination_us()) / consumers
    return max(PAGE * 8 / (gbps * 1e9), us_per_page * 1e-6) / memory_scale * 1000


def slice_quantum_ms(case: str) -> float:
    """The time-sliced stop rule looks once per slice, so the set it stops with is known to within
    what the guest dirties during one slice: that many pages' line time (0 for other cases)."""
    workload, _, migration, _, _, gbps = CASES[case]
    if "time-sliced" not in migration:
        return 0.0
    rate = gbps * 1e9 / 8
    slice_s = float(migration.split("slice_mib = ")[1].split()[0]) * 2**20 / rate
    dirty_per_s = float(workload.split("dirty_pages_per_s = ")[1].split(",")[0])
    return slice_s * dirty_per_s * PAGE / rate * 1000


def downtime_allowance_ms(case: str, a: dict, b: dict) -> float:
    """What two downtimes of one case may differ by beyond TOLERANCE (module docstring)."""
    scale = min(a["emulation"]["memory_scale"], b["emulation"]["memory_scale"])
    return DOWNTIME_FLOOR_MS + page_quantum_ms(case, scale) + slice_quantum_ms(case)


def stretch(a: dict, b: dict) -> float:
    """The larger saturation of two runs: the share by which this machine may have stretched their
    emulated times (DESIGN.md: a saturated run says by how much its fidelity is reduced)."""
    return max(a["emulation"]["fidelity"]["saturation"], b["emulation"]["fidelity"]["saturation"])


def deviations(case: str, a: dict, b: dict) -> dict:
    """Relative deviation of b from a in each invariant figure beyond what the runs' saturation
    explains (downtime: also beyond its allowance)."""
    out = {k: max(0.0, abs(b[k] / a[k] - 1) - stretch(a, b)) for k in ("total_time_s", "memory_bytes_sent")}
    spread = abs(b["downtime_ms"] - a["downtime_ms"])
    out["downtime_ms"] = max(0.0, spread - downtime_allowance_ms(case, a, b)) / a["downtime_ms"] - stretch(a, b)
    out["downtime_ms"] = max(0.0, out["downtime_ms"])
    return out


_BASE: dict[str, dict] = {}  # each case's base run, shared by its knobs


def check(case: str, knob: str) -> None:
    if case not in _BASE:
        _BASE[case] = run(case)
    base, other = _BASE[case], run(case, **{knob: KNOBS[knob]})
    dev = report(case, knob, base, other)
    if dev["downtime_ms"] > TOLERANCE >= max(dev["total_time_s"], dev["memory_bytes_sent"]):
        # Once: a pause of a few ms (device state and deltas) is as long as one late wake-up of
        # this loaded machine between the pause and the first batch (seen: 4 -> 17 ms, the next
        # run 5 ms). A dependence on the knob shows again; a late wake-up seldom does.
        _BASE[case] = base = run(case)
        other = run(case, **{knob: KNOBS[knob]})
        dev = report(case, knob, base, other, "repeated")
    for key, d in dev.items():
        assert d <= TOLERANCE, (case, knob, key, base[key], other[key])


def report(case: str, knob: str, base: dict, other: dict, note: str = "") -> dict:
    """The deviations of `other` from `base`, printed with the raw figures they come from."""
    dev = deviations(case, base, other)
    raw = ", ".join(f"{k} {other[k] / base[k] - 1:+.1%}" for k in dev)
    print(f"invariance {case} {knob}{' ' + note if note else ''}: "
          + ", ".join(f"{k} {v:+.1%}" for k, v in dev.items())
          + f" (raw: {raw}; downtime {base['downtime_ms']:.1f} -> {other['downtime_ms']:.1f} ms, "
          f"allowance {downtime_allowance_ms(case, base, other):.1f} ms, saturation {stretch(base, other):.3f})")
    return dev


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


# Gaps this matrix found, and their causes (fixed; the figures are base -> other at memory_scale 1/64):
# - time-sliced: a slice never waited for its bytes to arrive, so the ring (8 real slots: 128
#   emulated MiB at 1/64) filled and the stop-and-copy waited for it: 975 ms of downtime under a
#   100 ms limit, +42 % (memory_scale) and +64 % (batch_pages). A slice now ends when it has arrived.
# - every stop-and-copy paid one real batch's encoding and restoring on top of its wire time (batches
#   were stored and forwarded; with Xen's costs 0.4 s + 0.25 s for 64 real pages at 1/64): pmigrate-1
#   +22 % (batch_pages). Batches now cut through the link (agents/datapath/link.py).
# - PMigrate with 4 consumers: a task was one real batch (4,096 emulated pages at 1/64), so a pass's
#   last pages spread over fewer consumers at coarser scales: time +12 and +21 %, downtime +127 and
#   +408 %, and +34 % against the model. Tasks now have an emulated size (task_pages, Xen's 1024).
# - XBZRLE against the model (+22 % time, +19 % bytes): the model hit the cache from the second pass
#   on, but nothing is cached before the walk's first round is complete (QEMU's xbzrle_started).
# - downtimes of 5 or 6 real pages (pmigrate-1 at 1/64) and of 4 ms (XBZRLE, mostly device state)
#   moved by a page or by this machine's jitter: see the module docstring's allowance.
KNOWN: set[tuple[str, str]] = set()
KNOWN_MODEL: set[str] = set()


@pytest.mark.slow
@pytest.mark.parametrize("knob", list(KNOBS))
@pytest.mark.parametrize("case", list(CASES))
def test_invariance_matrix(ray_cluster, request, case, knob):
    if (case, knob) in KNOWN:
        request.node.add_marker(pytest.mark.xfail(reason="a known dependence on the scaling knobs (KNOWN)"))
    check(case, knob)
