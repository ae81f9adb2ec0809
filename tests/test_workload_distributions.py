"""Workloads follow the distributions they name.

Each test draws many accesses from a workload with a fixed seed and compares
their histogram with the named distribution by a chi-square test whose bound
is the z = 6 upper quantile (a chance of about 1e-9 that a correct workload
fails it). Bins are merged so each expects at least 50 draws, and sample sizes
are large enough that a wrong distribution (like a Zipf whose tail is folded
back with a modulo) exceeds the bound many times over.
"""
from __future__ import annotations

import numpy as np
import pytest

from agents.guest.workloads import Erp, HotsetWriter, MemWriter, UniformWriter, zipf_cdf, zipf_ranks

PAGE = 4096


def chi_square_limit(df: int, z: float = 6.0) -> float:
    """Upper quantile of chi-square(df) at normal z-score z (Wilson-Hilferty)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * np.sqrt(a)) ** 3


def chi_square(samples: np.ndarray, probs: np.ndarray, min_expected: float = 50.0) -> tuple[float, float]:
    """(statistic, bound) of `samples` (values 0..len(probs)-1) against `probs`,
    with consecutive values merged into bins that each expect `min_expected`."""
    probs = np.asarray(probs, dtype=np.float64) / np.sum(probs)
    n = len(samples)
    counts = np.bincount(samples, minlength=len(probs)).astype(np.float64)
    assert len(counts) == len(probs), "a sample outside the support"
    starts = _bin_starts(probs * n, min_expected)
    exp = np.add.reduceat(probs * n, starts)
    got = np.add.reduceat(counts, starts)
    stat = float(((got - exp) ** 2 / exp).sum())
    return stat, chi_square_limit(len(exp) - 1)


def _bin_starts(expected: np.ndarray, least: float) -> np.ndarray:
    """First value of each bin: consecutive values gathered until they expect `least`
    (a short last bin joins the one before)."""
    starts, acc = [0], 0.0
    for i, e in enumerate(expected.tolist()):
        if acc >= least:
            starts.append(i)
            acc = 0.0
        acc += e
    if acc < least and len(starts) > 1:
        starts.pop()
    return np.array(starts)


def assert_follows(samples, probs):
    stat, bound = chi_square(samples, probs)
    assert stat < bound, (stat, bound)


def test_chi_square_rejects_a_nearby_distribution():
    rng = np.random.default_rng(0)
    probs = np.ones(1000)
    assert_follows(rng.integers(0, 1000, 200_000), probs)
    tilted = np.linspace(0.8, 1.2, 1000)  # +-20% across the range
    stat, bound = chi_square(rng.choice(1000, 200_000, p=tilted / tilted.sum()), probs)
    assert stat > 2 * bound


def test_uniform_writer_is_uniform_over_its_working_set():
    ws = 3000
    wl = UniformWriter(5000, 1.0, np.random.default_rng(1), dirty_pages_per_s=1e6, working_set_pages=ws)
    w = np.concatenate([wl.step(10_000) for _ in range(30)])
    assert len(w) == 300_000
    assert_follows(w, np.ones(ws))


def test_uniform_writer_hot_set_adds_its_own_rate():
    ws, hot = 3000, 300
    wl = UniformWriter(5000, 1.0, np.random.default_rng(2), dirty_pages_per_s=1e5, working_set_pages=ws,
                       hot_pages=hot, hot_pages_per_s=5e4)
    w = np.concatenate([wl.step(10_000) for _ in range(20)])
    assert len(w) == 300_000  # 200,000 writes over the working set, 100,000 more over the hot set
    probs = np.full(ws, 2 / 3 / ws)
    probs[:hot] += 1 / 3 / hot
    assert_follows(w, probs)


def zipf_probs(n: int, s: float) -> np.ndarray:
    return np.arange(1, n + 1, dtype=np.float64) ** -s


@pytest.mark.parametrize("ws, s", [(4096, 1.2), (50_000, 1.05), (1000, 2.0)])
def test_hotset_ranks_follow_a_zipf_bounded_to_the_working_set(ws, s):
    wl = HotsetWriter(ws, 1.0, np.random.default_rng(3), ops_per_s=1e6, write_fraction=0.5, zipf_s=s,
                      working_set_pages=ws)
    w = np.concatenate([wl.step(40_000) for _ in range(20)])
    assert len(w) == 400_000 and w.min() >= 0 and w.max() < ws
    rank_of = np.empty(ws, dtype=np.int64)
    rank_of[wl.placement] = np.arange(ws)  # page -> its key's popularity rank
    assert_follows(rank_of[w], zipf_probs(ws, s))


def test_a_zipf_folded_with_a_modulo_fails_the_same_test():
    # What the hot-set workload did before: numpy's unbounded zipf, tail wrapped onto the working set.
    ws, s = 4096, 1.2
    folded = (np.random.default_rng(3).zipf(s, 400_000) - 1) % ws
    stat, bound = chi_square(folded, zipf_probs(ws, s))
    assert stat > 10 * bound
    assert 0.15 < np.mean(np.random.default_rng(4).zipf(s, 400_000) > ws) < 0.19  # ~17% came by wrap-around


def test_zipf_cdf_and_ranks_edge_cases():
    cdf = zipf_cdf(1, 1.2)
    assert cdf.tolist() == [1.0]
    assert (zipf_ranks(cdf, 100, np.random.default_rng(0)) == 0).all()
    cdf = zipf_cdf(10, 1.5)
    assert cdf[-1] == 1.0 and np.all(np.diff(cdf) > 0)
    assert cdf[0] == pytest.approx(1 / zipf_probs(10, 1.5).sum())


def one_write_at_a_time(wl, pages: np.ndarray, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """(page, first non-zero byte) of `calls` single writes, each into an all-zero image.

    A run of random bytes may start with a zero byte (1 in 256): that moves a
    write by a byte, far less than a bin."""
    rows, first = np.empty(calls, np.int64), np.empty(calls, np.int64)
    for k in range(calls):
        written = wl.write(pages, 1.0)  # one op: one write
        assert len(written) == 1
        rows[k] = written[0]
        first[k] = np.flatnonzero(pages[rows[k]])[0]
        pages[rows[k]] = 0
    return rows, first


def test_memwriter_pages_and_offsets_are_uniform():
    ws, nbytes = 500, 64
    pages = np.zeros((800, PAGE), np.uint8)
    wl = MemWriter(800, 1.0, np.random.default_rng(5), writes_per_s=1e6, bytes_per_write=nbytes, working_set_pages=ws)
    rows, first = one_write_at_a_time(wl, pages, 40_000)
    assert_follows(rows, np.ones(ws))
    # Start offsets 0..PAGE-nbytes, all equally likely (tested in 32 bins).
    assert first.max() <= PAGE - nbytes
    offsets = np.ones(PAGE - nbytes + 1)
    bins = np.linspace(0, len(offsets), 33).astype(int)
    assert_follows(np.searchsorted(bins, first, side="right") - 1, np.add.reduceat(offsets, bins[:-1]))


def test_erp_record_updates_are_uniform_over_tables_and_record_slots():
    tables, record = 600, 128
    pages = np.zeros((1000, PAGE), np.uint8)
    wl = Erp(1000, 1.0, np.random.default_rng(6), ops_per_s=1e4, writes_per_op=1, record_bytes=record,
             log_bytes_per_op=0, log_pages=0, session_pages=0, session_kib_per_op=0, working_set_pages=tables)
    rows, first = one_write_at_a_time(wl, pages, 40_000)
    assert wl.first_table == 0
    assert_follows(rows, np.ones(tables))
    assert np.mean(first % record == 0) > 0.98  # records start on record boundaries
    assert_follows(first // record, np.ones(PAGE // record))


def test_erp_log_is_appended_in_order_and_wraps():
    pages = np.zeros((1000, PAGE), np.uint8)
    wl = Erp(1000, 1.0, np.random.default_rng(7), ops_per_s=1e4, writes_per_op=1, record_bytes=128,
             log_bytes_per_op=1024, log_pages=5, session_pages=0, session_kib_per_op=0, working_set_pages=100)
    logged = [wl.write(pages, 3.0)[3:] for _ in range(10)]  # 3 records, then the log pages of 3 entries
    # 4 entries a page, 20 in the log: entries 0..29 fill pages 0,0,0,0,1,...,4 and wrap to page 0.
    entries = np.arange(30) % 20 // 4
    assert [x.tolist() for x in logged] == [np.unique(entries[3 * k: 3 * k + 3]).tolist() for k in range(10)]
