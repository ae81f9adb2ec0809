"""Deficit round robin: which connection's batch a shared link takes next (pure, no clock)."""
from __future__ import annotations

import collections

from agents.datapath.fair_queue import DeficitRoundRobin


def _drain(q: DeficitRoundRobin, pops: int) -> list:
    return [q.pop() for _ in range(pops)]


def test_equal_batches_take_turns():
    q = DeficitRoundRobin()
    for flow in "abc":
        for k in range(5):
            q.offer(flow, 1000, k)
    order = [flow for flow, _ in _drain(q, 15)]
    assert order == list("abc") * 5
    assert not q


def test_backlogged_flows_get_equal_bytes_whatever_their_batch_sizes():
    q = DeficitRoundRobin()
    for k in range(3000):
        q.offer("small", 1000, k)
    for k in range(1000):
        q.offer("large", 3000, k)
    sent = collections.Counter()
    for flow, _ in _drain(q, 2000):
        sent[flow] += 1000 if flow == "small" else 3000
    # Within one quantum (the largest batch) of each other.
    assert abs(sent["small"] - sent["large"]) <= 3000


def test_each_flow_keeps_its_order():
    q = DeficitRoundRobin()
    sizes = {"a": [500, 4000, 100, 2500], "b": [3000, 3000, 10], "c": [1] * 6}
    for flow, batch_sizes in sizes.items():
        for k, n in enumerate(batch_sizes):
            q.offer(flow, n, k)
    got = collections.defaultdict(list)
    for flow, k in _drain(q, sum(map(len, sizes.values()))):
        got[flow].append(k)
    assert got == {flow: list(range(len(s))) for flow, s in sizes.items()}


def test_a_flow_back_from_idle_has_no_credit():
    q = DeficitRoundRobin()
    q.offer("a", 1000, 0)
    assert q.pop() == ("a", 0)  # "a" runs dry and leaves the ring
    for k in range(4):
        q.offer("b", 1000, k)
    q.offer("a", 1000, 1)
    q.offer("a", 1000, 2)
    # "a" queues behind "b": one batch per turn each, no catching up.
    assert [flow for flow, _ in _drain(q, 6)] == ["b", "a", "b", "a", "b", "b"]


def test_waiting_counts_a_flows_batches():
    q = DeficitRoundRobin()
    assert q.waiting("a") == 0
    q.offer("a", 10, 0)
    q.offer("a", 10, 1)
    assert q.waiting("a") == 2
    q.pop()
    assert q.waiting("a") == 1
