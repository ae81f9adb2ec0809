"""Guest memory contents, workloads and the running guest with its dirty log.

The key property: every page whose contents changed since a harvest is in the
next harvest. Without it pre-copy would leave stale pages on the destination.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import zstandard

from agents.datapath.wire_format import SlotLayout, SlotView, pack_pages
from agents.encodings.zero_pages import zero_mask
from agents.guest.content import (
    CLASSES,
    POOL_PAGES,
    RANDOM,
    STRUCTURED,
    TEXT,
    ZERO,
    assign_classes,
    fill_image,
    template_pools,
    write_pages,
)
from agents.guest.vcpus import Guest
from agents.guest.workloads import (
    HotsetWriter,
    Idle,
    Sweeper,
    UniformWriter,
    footprint_gib,
    make_workload,
)
from cluster.scenario import ScenarioError, parse_scenario
from tests.conftest import scenario_text

PAGE = 4096
MIX = {"zero": 0.2, "text": 0.3, "structured": 0.2, "random": 0.3}
NO_ZERO = {"zero": 0.0, "text": 0.4, "structured": 0.3, "random": 0.3}


def zstd_ratio(page: np.ndarray) -> float:
    return PAGE / len(zstandard.ZstdCompressor(level=1).compress(page.tobytes()))


# --- content --------------------------------------------------------------------

def test_template_pools_shape_and_determinism():
    a, b, c = template_pools(1), template_pools(1), template_pools(2)
    assert a.shape == (4, POOL_PAGES, PAGE) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not a[ZERO].any()
    for cls in (TEXT, STRUCTURED, RANDOM):
        assert a[cls].any(axis=1).all(), CLASSES[cls]


def test_class_mix_fractions():
    n = 50_000
    classes = assign_classes(n, MIX, seed=3).initial
    assert classes.shape == (n,) and classes.dtype == np.uint8
    got = np.bincount(classes, minlength=4) / n
    for i, name in enumerate(CLASSES):
        assert got[i] == pytest.approx(MIX[name], abs=0.01), name


def test_class_mix_with_absent_class():
    classes = assign_classes(10_000, {"zero": 0.0, "text": 1.0, "structured": 0.0, "random": 0.0}, seed=1)
    assert (classes.initial == TEXT).all() and (classes.written == TEXT).all()


@pytest.fixture(scope="module")
def filled():
    n = 1024
    pools = template_pools(5)
    classes = assign_classes(n, MIX, seed=5)
    pages = np.zeros((n, PAGE), dtype=np.uint8)
    fill_image(pages, classes, pools, seed=5, chunk=300)  # several chunks
    return pages, classes.initial, pools


def test_fill_image_zero_class_is_zero_and_others_are_not(filled):
    pages, classes, _ = filled
    nonzero = pages.any(axis=1)
    assert not nonzero[classes == ZERO].any()
    assert nonzero[classes != ZERO].all()


def test_fill_image_pages_are_distinct(filled):
    pages, classes, _ = filled
    keep = pages[classes != ZERO]
    assert len(np.unique(keep, axis=0)) == len(keep)  # every page stamped with its own counter


def test_compressibility_by_class(filled):
    pages, classes, _ = filled
    def mean_ratio(cls):
        rows = np.flatnonzero(classes == cls)[:100]
        return float(np.mean([zstd_ratio(pages[r]) for r in rows]))
    text, structured, rnd = mean_ratio(TEXT), mean_ratio(STRUCTURED), mean_ratio(RANDOM)
    assert 2.0 <= text <= 4.0, text
    assert structured > text, (structured, text)
    assert 0.98 <= rnd <= 1.01, rnd


def test_write_changes_every_page_and_keeps_its_class(filled):
    pages0, classes, pools = filled
    pages = pages0.copy()
    rng = np.random.default_rng(0)
    idx = np.arange(0, len(pages), 3)
    written = assign_classes(len(pages), MIX, seed=5).written
    assert np.array_equal(written[classes != ZERO], classes[classes != ZERO])
    write_pages(pages, idx, written, pools, rng, counter=1 << 40)
    changed = (pages != pages0).any(axis=1)
    assert changed[idx].all()  # zero pages too: they now hold data
    assert pages[idx].any(axis=1).all()
    untouched = np.setdiff1d(np.arange(len(pages)), idx)
    assert not changed[untouched].any()
    text_rows = idx[classes[idx] == TEXT][:30]
    assert 2.0 <= np.mean([zstd_ratio(pages[r]) for r in text_rows]) <= 4.0
    rnd_rows = idx[classes[idx] == RANDOM][:30]
    assert np.mean([zstd_ratio(pages[r]) for r in rnd_rows]) < 1.01


def test_rewriting_a_page_changes_it_again(filled):
    pages0, classes, pools = filled
    pages = pages0.copy()
    rng = np.random.default_rng(1)
    row = np.array([int(np.flatnonzero(classes == STRUCTURED)[0])])
    seen = set()
    for k in range(20):
        write_pages(pages, row, classes, pools, rng, counter=1000 + k)
        seen.add(pages[row[0]].tobytes())
    assert len(seen) == 20


# --- what writes leave, and where content lies -------------------------------------

def content(mix=MIX, **extra):
    return {**mix, **extra}


def test_written_zero_pages_take_the_images_data_classes():
    n = 60_000
    c = assign_classes(n, content(), seed=2)
    zero = c.initial == ZERO
    assert not (c.written == ZERO).any()
    assert np.array_equal(c.written[~zero], c.initial[~zero])  # data pages keep their class
    # Zero pages, once written, hold text, structured and random data as the image does (3 : 2 : 3).
    got = np.bincount(c.written[zero], minlength=4)[1:] / zero.sum()
    assert got == pytest.approx([0.375, 0.25, 0.375], abs=0.02)


def test_an_image_of_zeros_is_written_with_structured_data():
    c = assign_classes(1000, {"zero": 1.0, "text": 0.0, "structured": 0.0, "random": 0.0}, seed=1)
    assert (c.initial == ZERO).all() and (c.written == STRUCTURED).all()


def test_writes_names_the_class_of_every_written_page():
    c = assign_classes(1000, content(writes="text"), seed=1)
    assert (c.written == TEXT).all()
    assert (c.initial != TEXT).any()


def test_working_set_placement_fills_the_first_pages_and_the_mix_the_rest():
    n = 40_000
    mix = {"zero": 0.5, "text": 0.0, "structured": 0.0, "random": 0.5}
    c = assign_classes(n, content(mix, working_set="text", working_set_fraction=0.25), seed=3)
    assert (c.initial[: n // 4] == TEXT).all()
    rest = np.bincount(c.initial[n // 4:], minlength=4) / (n - n // 4)
    assert rest == pytest.approx([0.5, 0.0, 0.0, 0.5], abs=0.02)
    # The fractions alone lay out the same pages as before placement existed.
    plain = assign_classes(n, mix, seed=3).initial
    assert np.array_equal(c.initial[n // 4:], plain[n // 4:])
    with pytest.raises(ValueError, match="working_set_fraction"):
        assign_classes(n, content(mix, working_set="text"), seed=3)


def test_a_guest_write_to_a_zero_page_is_sent_as_a_normal_page(make_guest):
    all_zero = {"zero": 1.0, "text": 0.0, "structured": 0.0, "random": 0.0}
    g = make_guest(uniform(rate=20_000, ws=256), mix=all_zero)
    assert zero_mask(g.pages).all()
    g.start_dirty_log()
    g.start()
    wait_for(lambda: len(np.flatnonzero(~zero_mask(g.pages[:256]))) > 100)
    g.pause()
    written = g.harvest()
    assert len(written) > 100 and written.max() < 256
    lay = SlotLayout(256)
    st = pack_pages(g.pages, written, SlotView(np.zeros(lay.slot_bytes, np.uint8), 0, lay))
    assert (st.normal, st.zero) == (len(written), 0)
    assert zero_mask(g.pages[256:]).all()  # unwritten pages are still zero


def test_footprint_gib_matches_the_workloads_built():
    scale, memory_gib = 1 / 64, 4.0
    npages = int(memory_gib * (1 << 30) / PAGE * scale)
    gib_pages = (1 << 30) / PAGE * scale
    specs = [
        {"kind": "idle"},
        {"kind": "uniform", "dirty_pages_per_s": 10},
        {"kind": "uniform", "dirty_pages_per_s": 10, "working_set_gib": 0.5},
        {"kind": "hotset", "ops_per_s": 10, "working_set_gib": 1.25},
        {"kind": "sweeper", "sweep_gib": 2},
        {"kind": "memwrite", "writes_per_s": 10, "working_set_gib": 0.05},
        {"kind": "video", "frame_mib": 48},
        {"kind": "erp", "ops_per_s": 10, "log_mib": 16, "session_mib": 8, "working_set_gib": 0.5},
        {"kind": "erp", "ops_per_s": 10, "log_mib": 16, "session_mib": 8},
        {"kind": "erp", "ops_per_s": 10, "log_bytes_per_op": 0, "working_set_gib": 1},
    ]
    for spec in specs:
        built = make_workload(spec, npages, scale, 1).footprint
        assert abs(footprint_gib(spec, memory_gib) * gib_pages - built) <= 1, spec


def test_scenario_sizes_the_placed_working_set_from_the_workload():
    def vm(workload, content_toml):
        text = scenario_text("c", memory_gib=4, workload=workload, extra_vm=f"content = {content_toml}")
        return parse_scenario(text, "c.toml").vms[0]

    placed = '{ zero = 0.5, text = 0.5, structured = 0, random = 0, working_set = "structured" }'
    v = vm('{ kind = "uniform", dirty_pages_per_s = 10, working_set_gib = 1 }', placed)
    assert v.content.working_set_fraction == pytest.approx(0.25)
    assert vm('{ kind = "sweeper", sweep_gib = 3 }', placed).content.working_set_fraction == pytest.approx(0.75)
    sized = '{ zero = 0.5, text = 0.5, structured = 0, random = 0, working_set = "structured", working_set_fraction = 0.1 }'
    assert vm('{ kind = "sweeper", sweep_gib = 3 }', sized).content.working_set_fraction == 0.1
    plain = vm('{ kind = "idle" }', "{ zero = 0.5, text = 0.5, structured = 0, random = 0 }").content
    assert (plain.working_set, plain.working_set_fraction, plain.writes) == (None, None, "image")
    # What the runner hands the agents places the pages.
    c = assign_classes(4096, v.content.model_dump(), seed=1)
    assert (c.initial[:1024] == STRUCTURED).all() and not (c.initial[1024:] == STRUCTURED).any()
    with pytest.raises(ScenarioError, match="writes"):
        vm('{ kind = "idle" }', '{ zero = 1.0, text = 0, structured = 0, random = 0, writes = "zero" }')


# --- workloads (pure) -----------------------------------------------------------

def test_idle_writes_nothing():
    wl = Idle(1000, 1.0, np.random.default_rng(0))
    assert wl.ops_rate() > 0
    assert len(wl.step(1e6)) == 0


def test_uniform_writes_scaled_count_within_working_set():
    wl = UniformWriter(10_000, 1 / 64, np.random.default_rng(0), dirty_pages_per_s=64_000, working_set_pages=500)
    total = 0
    for _ in range(1000):
        w = wl.step(wl.ops_rate() * 0.0037)  # ~236.8 emulated writes per tick
        assert ((w >= 0) & (w < 500)).all()
        total += len(w)
    # 1000 ticks x 3.7 ms x 64,000 pages/s x 1/64 real pages per emulated page, carry kept
    assert abs(total - 3700) <= 1


def test_hotset_writes_are_skewed():
    ws = 4000
    wl = HotsetWriter(8000, 1.0, np.random.default_rng(3), ops_per_s=1e6, write_fraction=0.5, zipf_s=1.2,
                      working_set_pages=ws)
    w = np.concatenate([wl.step(10_000) for _ in range(20)])
    assert len(w) == 100_000  # write_fraction of the ops
    assert ((w >= 0) & (w < ws)).all()
    counts = np.sort(np.bincount(w, minlength=ws))[::-1]
    top = counts[: ws // 10].sum() / counts.sum()
    assert top > 0.6, top
    # Hot keys are spread over the working set, not packed at its start.
    hottest = np.argsort(np.bincount(w, minlength=ws))[::-1][:50]
    assert hottest.max() > ws // 2


def test_uniform_is_not_skewed():
    ws = 4000
    wl = UniformWriter(ws, 1.0, np.random.default_rng(3), dirty_pages_per_s=1e6, working_set_pages=ws)
    w = np.concatenate([wl.step(10_000) for _ in range(10)])
    counts = np.sort(np.bincount(w, minlength=ws))[::-1]
    assert counts[: ws // 10].sum() / counts.sum() < 0.15


def test_sweeper_writes_sequentially_then_sleeps():
    dt = 0.01
    sweep, pages_per_s, sleep_s = 100, 1000, 0.5
    wl = Sweeper(1000, 1.0, np.random.default_rng(0), sweep_pages=sweep, write_bytes_s=pages_per_s * PAGE,
                 sleep_s=sleep_s)
    ticks = []
    for _ in range(250):  # 2.5 s
        awake = wl.advance(dt)
        ticks.append(wl.step(wl.ops_rate() * awake))
    writes = np.concatenate(ticks)
    assert ((writes >= 0) & (writes < sweep)).all()
    # Each sweep is 0..99 in order.
    nsweeps = len(writes) // sweep
    assert nsweeps >= 3
    assert np.array_equal(writes[: nsweeps * sweep], np.tile(np.arange(sweep), nsweeps))
    # Busy for ~0.1 s, then ~0.5 s without writes.
    busy = np.array([len(t) > 0 for t in ticks])
    first_idle = int(np.argmin(busy))
    assert 9 <= first_idle <= 11, first_idle
    idle_run = int(np.argmax(busy[first_idle:]))
    assert 49 <= idle_run <= 51, idle_run
    assert ticks[first_idle + idle_run][0] == 0  # the next sweep starts again at page 0


def test_make_workload_from_scenario_tables():
    scale = 1 / 64
    npages = 8192  # 2 GiB at 1/64
    u = make_workload({"kind": "uniform", "dirty_pages_per_s": 1000, "working_set_gib": 0.5}, npages, scale, 1)
    assert isinstance(u, UniformWriter) and u.ws == 2048
    h = make_workload({"kind": "hotset", "ops_per_s": 5000}, npages, scale, 1)
    assert isinstance(h, HotsetWriter) and h.ws == npages and h.write_fraction == 0.1
    s = make_workload({"kind": "sweeper", "sweep_gib": 1}, npages, scale, 1)
    assert isinstance(s, Sweeper) and s.sweep == 4096 and s.sleep_s == 5
    assert isinstance(make_workload({"kind": "idle"}, npages, scale, 1), Idle)
    with pytest.raises(ValueError):
        make_workload({"kind": "nope"}, npages, scale, 1)


# --- the running guest ------------------------------------------------------------

NPAGES = 2048  # 8 MiB


@pytest.fixture
def make_guest():
    guests = []

    def build(workload, mix=NO_ZERO, vcpus=2, fault_s=0.0, seed=1):
        pools = template_pools(seed)
        classes = assign_classes(NPAGES, mix, seed)
        pages = np.zeros((NPAGES, PAGE), dtype=np.uint8)
        fill_image(pages, classes, pools, seed)
        g = Guest(pages, workload, classes, pools, vcpus, dilation=1.0, fault_s=fault_s, seed=seed)
        guests.append(g)
        return g

    yield build
    for g in guests:
        g.stop()


def uniform(rate=20_000, ws=NPAGES, seed=0):
    return UniformWriter(NPAGES, 1.0, np.random.default_rng(seed), dirty_pages_per_s=rate, working_set_pages=ws)


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_guest_writes_pages_at_its_rate_in_its_working_set(make_guest):
    g = make_guest(uniform(rate=20_000, ws=512))
    before = g.pages.copy()
    g.start()
    time.sleep(0.3)
    n = len(g.samples)  # samples[:n] are all from running ticks
    g.pause()
    changed = np.flatnonzero((g.pages != before).any(axis=1))
    assert len(changed) > 100
    assert changed.max() < 512  # never outside the working set
    # Ops per second of the guest's own clock.
    (t0, ops0), (t1, ops1) = g.samples[2], g.samples[n - 1]
    assert (ops1 - ops0) / (t1 - t0) == pytest.approx(20_000, rel=0.05)


def test_dirty_log_contains_every_changed_page(make_guest):
    # harvest (reset) -> snapshot S -> run -> snapshot T -> harvest H -> harvest H2.
    # The log is lock-free (agents/guest/dirty_log.py): a page written in a tick that
    # is still in progress when H is taken may be marked just after it, so it
    # must be in H or in the next harvest: never lost.
    g = make_guest(uniform(rate=40_000, ws=NPAGES))
    g.start_dirty_log()
    g.start()
    total_changed = 0
    late = 0
    g.harvest()
    for _ in range(8):
        s = g.pages.copy()
        time.sleep(0.03)
        t = g.pages.copy()
        h = g.harvest()
        changed = np.flatnonzero((s != t).any(axis=1))
        missing = np.setdiff1d(changed, h)
        time.sleep(0.012)  # more than two guest ticks: the tick in progress has published
        h2 = g.harvest()
        still = np.setdiff1d(missing, h2)
        assert len(still) == 0, f"{len(still)} changed pages in neither harvest: {still[:10]}"
        assert np.all(np.diff(h) > 0)  # sorted, unique
        total_changed += len(changed)
        late += len(missing)
    assert total_changed > 500
    assert late < total_changed / 4


def test_following_the_dirty_log_reproduces_the_image(make_guest):
    """A shadow copy refreshed only from harvests equals the image once the guest is paused."""
    g = make_guest(uniform(rate=50_000, ws=1024), mix=MIX)
    g.start_dirty_log()
    shadow = g.pages.copy()
    g.start()
    for _ in range(10):
        time.sleep(0.02)
        idx = g.harvest()
        shadow[idx] = g.pages[idx]
    g.pause()
    idx = g.harvest()
    shadow[idx] = g.pages[idx]
    assert np.array_equal(shadow, g.pages)


def test_harvest_resets_the_log(make_guest):
    g = make_guest(uniform())
    g.start_dirty_log()
    g.start()
    time.sleep(0.05)
    g.pause()
    assert len(g.harvest()) > 0
    assert len(g.harvest()) == 0


def test_no_dirty_log_until_started_and_after_stopped(make_guest):
    g = make_guest(uniform())
    g.start()
    time.sleep(0.05)
    assert len(g.harvest()) == 0
    g.start_dirty_log()
    time.sleep(0.05)
    assert len(g.harvest()) > 0
    g.stop_dirty_log()
    g.harvest()
    time.sleep(0.05)
    assert len(g.harvest()) == 0


def test_pause_stops_all_writes_and_resume_restarts_them(make_guest):
    g = make_guest(uniform(rate=40_000))
    g.start_dirty_log()
    g.start()
    time.sleep(0.05)
    g.pause()
    g.harvest()
    frozen = g.pages.copy()
    ops = g.ops
    nsamples = len(g.samples)
    time.sleep(0.15)
    assert np.array_equal(g.pages, frozen)
    assert g.ops == ops
    assert len(g.harvest()) == 0
    assert len(g.samples) > nsamples  # the clock keeps ticking while paused
    g.resume()
    wait_for(lambda: g.ops > ops + 1000)
    assert not np.array_equal(g.pages, frozen)


def test_resume_on_a_new_image_writes_there(make_guest):
    g = make_guest(uniform(rate=40_000))
    g.start()
    time.sleep(0.03)
    g.pause()
    old = g.pages
    old_frozen = old.copy()
    new = old.copy()
    g.resume(new)
    ops = g.ops
    wait_for(lambda: g.ops > ops + 1000)
    g.pause()
    assert np.array_equal(old, old_frozen)
    assert not np.array_equal(new, old_frozen)


def test_dirty_tracking_faults_slow_a_busy_guest(make_guest):
    # 1 vCPU, 100 us per write-protection fault: at most ~10,000 first writes/s.
    g = make_guest(uniform(rate=100_000), vcpus=1, fault_s=100e-6)
    g.start()
    time.sleep(0.1)
    a = len(g.samples)
    time.sleep(0.15)
    b = len(g.samples)
    g.start_dirty_log()
    time.sleep(0.03)
    c = len(g.samples)
    for _ in range(15):
        time.sleep(0.01)
        g.harvest()
    d = len(g.samples)
    s = list(g.samples)

    def rate(i, j):  # ops per second of the guest's clock between two samples
        return (s[j - 1][1] - s[i][1]) / (s[j - 1][0] - s[i][0])

    free_rate, slowed = rate(a, b), rate(c, d)
    assert free_rate == pytest.approx(100_000, rel=0.1)
    assert slowed < 0.5 * free_rate, (slowed, free_rate)
    assert g.faults > 0


def test_sweeper_guest_dirties_a_growing_prefix(make_guest):
    wl = Sweeper(NPAGES, 1.0, np.random.default_rng(0), sweep_pages=1024, write_bytes_s=4000 * PAGE, sleep_s=10)
    g = make_guest(wl)
    g.start_dirty_log()
    g.start()
    time.sleep(0.1)
    h1 = g.harvest()
    assert len(h1) > 50
    assert np.array_equal(h1, np.arange(len(h1)))  # pages 0..m-1, in order
    wait_for(lambda: wl.asleep_for > 0, timeout=3)  # sweep done (~0.26 s), now asleep
    g.harvest()
    time.sleep(0.1)
    assert len(g.harvest()) == 0  # asleep: no writes


def test_a_rate_factor_scales_the_workload_as_a_scheduled_event_asks(make_guest):
    g = make_guest(uniform(rate=20_000, ws=NPAGES))
    g.start()

    def ops_per_s(seconds: float = 0.3) -> float:
        o0, t0 = g.ops, time.monotonic()
        time.sleep(seconds)
        return (g.ops - o0) / (time.monotonic() - t0)

    full = ops_per_s()
    g.rate_factor = 0.25
    time.sleep(0.02)
    quarter = ops_per_s()
    g.rate_factor = 0.0
    time.sleep(0.02)
    assert full == pytest.approx(20_000, rel=0.1)
    assert quarter == pytest.approx(5_000, rel=0.15)
    assert ops_per_s() == 0
