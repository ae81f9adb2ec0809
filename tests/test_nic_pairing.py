"""Multi-NIC pairing by link speed (vMotion 5.1) and traffic balancing."""

from collections import namedtuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.nic_pairing import Nic, NicPair, balance, pair_nics


def test_vmotion_paper_example_gives_three_connections():
    # Source: two 10GbE. Destination: one 10GbE and two 1GbE.
    src = [Nic("vmk0", 10), Nic("vmk1", 10)]
    dst = [Nic("vmk1g-a", 1), Nic("vmk10g", 10), Nic("vmk1g-b", 1)]
    assert pair_nics(src, dst) == [
        NicPair("vmk0", "vmk10g", 10),
        NicPair("vmk1", "vmk1g-a", 1),
        NicPair("vmk1", "vmk1g-b", 1),
    ]


def test_symmetric_hosts_pair_one_to_one():
    src = [Nic("a", 10), Nic("b", 10)]
    dst = [Nic("x", 10), Nic("y", 10)]
    assert pair_nics(src, dst) == [NicPair("a", "x", 10), NicPair("b", "y", 10)]
    # Mixed speeds, same on both sides: fast with fast, slow with slow.
    src = [Nic("s1", 1), Nic("s10", 10)]
    dst = [Nic("d10", 10), Nic("d1", 1)]
    assert pair_nics(src, dst) == [NicPair("s10", "d10", 10), NicPair("s1", "d1", 1)]


def test_reverse_of_paper_example_is_mirror_image():
    src = [Nic("s10", 10), Nic("s1a", 1), Nic("s1b", 1)]
    dst = [Nic("d0", 10), Nic("d1", 10)]
    assert pair_nics(src, dst) == [
        NicPair("s10", "d0", 10),
        NicPair("s1a", "d1", 1),
        NicPair("s1b", "d1", 1),
    ]


def test_more_source_than_dest_nics():
    # Slow source NICs fill one fast destination NIC.
    src = [Nic(f"s{k}", 1) for k in range(3)]
    pairs = pair_nics(src, [Nic("d", 10)])
    assert pairs == [NicPair("s0", "d", 1), NicPair("s1", "d", 1), NicPair("s2", "d", 1)]
    # Once the destination is full, extra source NICs stay idle.
    pairs = pair_nics([Nic("a", 10), Nic("b", 10), Nic("c", 10)], [Nic("d", 10)])
    assert pairs == [NicPair("a", "d", 10)]


def test_partial_fill_caps_last_connection():
    pairs = pair_nics([Nic("s", 10)], [Nic("a", 4), Nic("b", 4), Nic("c", 4)])
    assert [p.bandwidth_gbps for p in pairs] == [4, 4, 2]


def test_accepts_tuples_and_objects():
    Port = namedtuple("Port", "name speed_gbps")
    pairs = pair_nics([("eth0", 25.0)], [Port("eth1", 10.0)])
    assert pairs == [NicPair("eth0", "eth1", 10.0)]


def test_ordering_is_deterministic_for_ties():
    src = [Nic("b", 10), Nic("a", 10)]
    dst = [Nic("y", 10), Nic("x", 10)]
    # Equal speeds keep input order; repeated calls agree.
    assert pair_nics(src, dst) == [NicPair("b", "y", 10), NicPair("a", "x", 10)]
    assert pair_nics(src, dst) == pair_nics(list(src), list(dst))


@pytest.mark.parametrize("src,dst,side", [([], [Nic("d", 10)], "source"),
                                          ([Nic("s", 10)], [], "destination")])
def test_empty_side_is_a_clear_error(src, dst, side):
    with pytest.raises(ValueError, match=f"the {side} host has no migration NIC"):
        pair_nics(src, dst)


@pytest.mark.parametrize("speed", [0, -1, float("nan"), float("inf")])
def test_bad_speed_rejected(speed):
    with pytest.raises(ValueError, match="positive"):
        pair_nics([Nic("s", speed)], [Nic("d", 10)])


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match="unique"):
        pair_nics([Nic("s", 10), Nic("s", 1)], [Nic("d", 10)])


nic_speeds = st.lists(st.sampled_from([1, 2.5, 10, 25, 40, 100]), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(nic_speeds, nic_speeds)
def test_pairing_fills_the_slower_side_and_never_oversubscribes(src_speeds, dst_speeds):
    src = [Nic(f"s{k}", v) for k, v in enumerate(src_speeds)]
    dst = [Nic(f"d{k}", v) for k, v in enumerate(dst_speeds)]
    pairs = pair_nics(src, dst)
    total = sum(p.bandwidth_gbps for p in pairs)
    assert total == pytest.approx(min(sum(src_speeds), sum(dst_speeds)))
    for nic in src:
        assert sum(p.bandwidth_gbps for p in pairs if p.source == nic.name) <= nic.speed_gbps + 1e-9
    for nic in dst:
        assert sum(p.bandwidth_gbps for p in pairs if p.dest == nic.name) <= nic.speed_gbps + 1e-9
    for p in pairs:
        speeds = {n.name: n.speed_gbps for n in src + dst}
        assert 0 < p.bandwidth_gbps <= min(speeds[p.source], speeds[p.dest])
    assert len(set((p.source, p.dest) for p in pairs)) == len(pairs)  # one connection per pair


def test_balance_paper_example():
    pairs = pair_nics([Nic("a", 10), Nic("b", 10)], [Nic("x", 10), Nic("y", 1), Nic("z", 1)])
    assert balance(pairs, 12_000) == [10_000, 1_000, 1_000]
    shares = balance(pairs, 12_001)
    assert sum(shares) == 12_001 and shares[0] == 10_001


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=400), min_size=1, max_size=8),
       st.integers(min_value=0, max_value=2**45))
def test_balance_sums_exactly_and_is_proportional(bws, total):
    pairs = [NicPair(f"s{k}", f"d{k}", bw) for k, bw in enumerate(bws)]
    shares = balance(pairs, total)
    assert sum(shares) == total
    assert all(s >= 0 for s in shares)
    weight = sum(bws)
    for s, bw in zip(shares, bws):
        assert abs(s - total * bw / weight) <= 1 + total * 1e-12


def test_balance_rejects_bad_input():
    with pytest.raises(ValueError):
        balance([], 10)
    with pytest.raises(ValueError):
        balance([NicPair("a", "b", 1)], -1)
