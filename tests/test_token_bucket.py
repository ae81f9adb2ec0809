"""Line-rate arithmetic: when batches leave a link of rate R. No idle credit:
bytes never leave faster than R (issue "Fidelity" (7))."""
from __future__ import annotations

import pytest

from agents.datapath.token_bucket import TokenBucket

RATE = 125e6  # 1 Gbit/s in bytes/s
T0 = 1000.0


def test_rejects_non_positive_rate():
    with pytest.raises(ValueError):
        TokenBucket(0, T0)
    with pytest.raises(ValueError):
        TokenBucket(-1, T0)


def test_sustained_rate_over_many_batches_all_offered_at_once():
    tb = TokenBucket(RATE, T0)
    n = 65536
    for k in range(1, 20001):
        d = tb.departure(n, T0)
        assert d == pytest.approx(T0 + k * n / RATE, abs=1e-9), k


def test_back_to_back_departures_are_spaced_by_n_over_rate():
    tb = TokenBucket(RATE, T0)
    n = 4096 * 64
    t = T0
    departures = []
    for _ in range(5000):
        t = tb.departure(n, t)  # offer the next batch when the previous one has left
        departures.append(t)
    for a, b in zip(departures, departures[1:]):
        assert b - a == pytest.approx(n / RATE, abs=1e-9)


def test_a_batch_offered_to_an_idle_link_takes_its_own_time():
    tb = TokenBucket(RATE, T0)
    n = 125_000
    assert tb.departure(n, T0 + 3600.0) == pytest.approx(T0 + 3600.0 + n / RATE, abs=1e-9)


def test_offered_slower_than_rate_leaves_one_serialization_later():
    tb = TokenBucket(RATE, T0)
    n = 100_000
    for k in range(1000):
        t = T0 + k * (2 * n / RATE)  # half the link rate
        assert tb.departure(n, t) == pytest.approx(t + n / RATE, abs=1e-9)


def test_fifo_offers_in_the_past_queue_behind():
    tb = TokenBucket(RATE, T0)
    d1 = tb.departure(2_500_000, T0)
    d2 = tb.departure(1000, T0 - 5)  # an offer time earlier than the link's clock
    assert d2 == pytest.approx(d1 + 1000 / RATE, abs=1e-12)


def test_set_rate_applies_to_later_batches():
    tb = TokenBucket(RATE, T0)
    n = 1_000_000
    t = tb.departure(n, T0)
    tb.set_rate(RATE / 10, t)
    d = tb.departure(n, t)
    assert d == pytest.approx(t + n / (RATE / 10), abs=1e-9)
    tb.set_rate(RATE * 10, d)
    assert tb.departure(n, d) == pytest.approx(d + n / (RATE * 10), abs=1e-9)


def test_set_rate_rejects_non_positive_rate():
    tb = TokenBucket(RATE, T0)
    with pytest.raises(ValueError):
        tb.set_rate(0, T0)


def test_free_at_is_when_the_last_batch_has_left():
    tb = TokenBucket(RATE, T0)
    assert tb.free_at == T0
    done = tb.departure(1_250_000, T0)
    assert tb.free_at == done == pytest.approx(T0 + 0.01)


def test_a_streamed_batch_leaves_as_it_is_encoded_not_after():
    """Cut through (agents/datapath/link.py): a batch whose encoding ran from t to `ready`
    leaves at line rate from t on, its last page no earlier than `ready` plus that page's line time."""
    pages, page = 64, 4096
    n = pages * page
    wire = n / RATE
    # Encoding slower than the wire: the last page sets the end.
    tb = TokenBucket(RATE, T0)
    assert tb.departure(n, T0, ready=T0 + 2 * wire, tail_bytes=page) == pytest.approx(T0 + 2 * wire + page / RATE)
    # Meanwhile the link is busy for the batch's line time only: another consumer's batch takes the gaps.
    assert tb.free_at == pytest.approx(T0 + wire)
    assert tb.departure(n, T0) == pytest.approx(T0 + 2 * wire)
    # Encoding faster than the wire: line rate from the first page on, not after the whole batch.
    tb = TokenBucket(RATE, T0)
    assert tb.departure(n, T0, ready=T0 + wire / 2, tail_bytes=page) == pytest.approx(T0 + wire)
    # Stored and forwarded (ready only whole) costs the sum: what the real batch size used to add.
    tb = TokenBucket(RATE, T0)
    assert tb.departure(n, T0 + wire / 2) == pytest.approx(T0 + wire / 2 + wire)
