"""Token bucket arithmetic: when batches leave a link of rate R with a burst B."""
from __future__ import annotations

import pytest

from agents.datapath.token_bucket import TokenBucket

RATE = 125e6  # 1 Gbit/s in bytes/s
BURST = 1.25e6  # 10 ms at RATE
T0 = 1000.0


def test_rejects_non_positive_rate():
    with pytest.raises(ValueError):
        TokenBucket(0, BURST, T0)
    with pytest.raises(ValueError):
        TokenBucket(-1, BURST, T0)


def test_sustained_rate_over_many_batches_all_offered_at_once():
    tb = TokenBucket(RATE, BURST, T0)
    n = 65536
    total = 0
    for k in range(1, 20001):
        total += n
        d = tb.departure(n, T0)
        expected = T0 + max(0.0, total - BURST) / RATE
        assert d == pytest.approx(expected, abs=1e-9), k
    # 20000 batches of 64 KiB: ~10.5 s of link time, all accounted for.
    assert d - T0 == pytest.approx((20000 * n - BURST) / RATE, abs=1e-9)


def test_back_to_back_departures_are_spaced_by_n_over_rate():
    tb = TokenBucket(RATE, BURST, T0)
    n = 4096 * 64
    t = T0
    departures = []
    for _ in range(5000):
        t = tb.departure(n, t)  # offer the next batch when the previous one has left
        departures.append(t)
    gaps = [b - a for a, b in zip(departures, departures[1:])]
    steady = gaps[10:]  # after the burst is spent
    for g in steady:
        assert g == pytest.approx(n / RATE, abs=1e-9)
    assert departures[-1] - T0 == pytest.approx((5000 * n - BURST) / RATE, abs=1e-9)


def test_burst_leaves_at_once():
    tb = TokenBucket(RATE, BURST, T0)
    n = 125_000  # ten batches make the burst
    for _ in range(10):
        assert tb.departure(n, T0) == T0
    # The next one waits for its own bytes to refill.
    assert tb.departure(n, T0) == pytest.approx(T0 + n / RATE, abs=1e-12)


def test_batch_larger_than_burst_waits_for_the_deficit():
    tb = TokenBucket(RATE, BURST, T0)
    assert tb.departure(3 * BURST, T0) == pytest.approx(T0 + 2 * BURST / RATE, abs=1e-12)


def test_offered_slower_than_rate_leaves_when_offered():
    tb = TokenBucket(RATE, BURST, T0)
    n = 100_000
    for k in range(1000):
        t = T0 + k * (2 * n / RATE)  # half the link rate
        assert tb.departure(n, t) == t


def test_idle_time_refills_only_up_to_the_burst():
    tb = TokenBucket(RATE, BURST, T0)
    t = tb.departure(10 * BURST, T0)  # drain and go into deficit
    assert t == pytest.approx(T0 + 9 * BURST / RATE)
    idle_end = t + 3600.0  # an hour idle would be 450 GB of tokens without the cap
    assert tb.departure(BURST, idle_end) == idle_end  # exactly the burst: at once
    # ...and not one byte more.
    assert tb.departure(RATE * 0.001, idle_end) == pytest.approx(idle_end + 0.001, abs=1e-9)


def test_partial_refill():
    tb = TokenBucket(RATE, BURST, T0)
    t = tb.departure(BURST, T0)
    assert t == T0  # bucket now empty
    # 4 ms later: 0.5 MB of tokens; a 1 MB batch waits 4 ms more.
    assert tb.departure(1e6, T0 + 0.004) == pytest.approx(T0 + 0.008, abs=1e-9)


def test_fifo_offers_in_the_past_queue_behind():
    tb = TokenBucket(RATE, BURST, T0)
    d1 = tb.departure(2 * BURST, T0)
    d2 = tb.departure(1000, T0 - 5)  # an offer time earlier than the bucket's clock
    assert d2 == pytest.approx(d1 + 1000 / RATE, abs=1e-12)
    assert d2 > d1


def test_tiny_burst_is_at_least_one_byte():
    tb = TokenBucket(RATE, 0, T0)
    assert tb.burst == 1.0
    assert tb.departure(1, T0) == T0
    assert tb.departure(RATE, T0) == pytest.approx(T0 + 1.0)


def test_set_rate_applies_to_later_batches():
    tb = TokenBucket(RATE, BURST, T0)
    n = 1_000_000
    t = tb.departure(BURST, T0)  # empty
    tb.set_rate(RATE / 10, t)
    d = tb.departure(n, t)
    assert d == pytest.approx(t + n / (RATE / 10), abs=1e-9)
    tb.set_rate(RATE * 10, d)
    d2 = tb.departure(n, d)
    assert d2 == pytest.approx(d + n / (RATE * 10), abs=1e-9)


def test_set_rate_refills_at_the_old_rate_up_to_the_change():
    tb = TokenBucket(RATE, BURST, T0)
    tb.departure(BURST, T0)  # empty at T0
    tb.set_rate(RATE / 2, T0 + 0.004)  # 4 ms at RATE: 0.5 MB of tokens
    assert tb.tokens == pytest.approx(0.5e6)
    # 1 MB offered then: 0.5 MB from the bucket, 0.5 MB at the new rate.
    assert tb.departure(1e6, T0 + 0.004) == pytest.approx(T0 + 0.004 + 0.5e6 / (RATE / 2), abs=1e-9)


def test_set_rate_sustained_over_many_batches():
    tb = TokenBucket(RATE, BURST, T0)
    tb.departure(BURST, T0)
    new = 1.25e9
    tb.set_rate(new, T0)
    n = 65536
    t = T0
    for _ in range(10000):
        t = tb.departure(n, T0)
    assert t - T0 == pytest.approx(10000 * n / new, abs=1e-9)


def test_set_rate_rejects_non_positive_rate():
    tb = TokenBucket(RATE, BURST, T0)
    with pytest.raises(ValueError):
        tb.set_rate(0, T0)


def test_set_rate_with_a_burst_caps_the_tokens():
    tb = TokenBucket(RATE, BURST, T0)
    tb.set_rate(RATE / 2, T0, burst_bytes=BURST / 4)
    assert tb.burst == BURST / 4 and tb.tokens == BURST / 4
    assert tb.departure(BURST / 4, T0) == T0
    assert tb.departure(1000, T0) == pytest.approx(T0 + 1000 / (RATE / 2), abs=1e-12)


def test_free_at_is_when_the_last_batch_has_left():
    tb = TokenBucket(RATE, BURST, T0)
    assert tb.free_at == T0
    tb.departure(BURST / 2, T0)
    assert tb.free_at == T0  # within the burst: the link can take more at once
    done = tb.departure(BURST, T0)
    assert tb.free_at == done == pytest.approx(T0 + BURST / 2 / RATE)
