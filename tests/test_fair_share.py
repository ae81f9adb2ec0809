"""Max-min fair shares of NICs between links (cluster/fair_share.py)."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.fair_share import max_min_rates


def test_two_links_from_one_nic_split_it():
    rates = max_min_rates({"s->d1": (10.0, ("s", "d1")), "s->d2": (10.0, ("s", "d2"))},
                          {"s": 10.0, "d1": 10.0, "d2": 10.0})
    assert rates == {"s->d1": pytest.approx(5.0), "s->d2": pytest.approx(5.0)}


def test_a_slow_link_keeps_its_rate_and_the_other_takes_the_rest():
    rates = max_min_rates({"a": (2.0, ("s",)), "b": (10.0, ("s",))}, {"s": 10.0})
    assert rates == {"a": pytest.approx(2.0), "b": pytest.approx(8.0)}


def test_bottleneck_elsewhere_frees_room_for_others():
    # a and b share NIC s; b also crosses d, which c fills half of.
    rates = max_min_rates({"a": (10.0, ("s",)), "b": (10.0, ("s", "d")), "c": (10.0, ("d",))},
                          {"s": 10.0, "d": 4.0})
    assert rates["b"] == pytest.approx(2.0) and rates["c"] == pytest.approx(2.0)
    assert rates["a"] == pytest.approx(8.0)


def test_unconstrained_links_get_their_own_capacity():
    assert max_min_rates({"a": (3.0, ("x",)), "b": (7.0, ("y",))}, {}) == {"a": 3.0, "b": 7.0}


caps = st.floats(min_value=0.1, max_value=100.0)


@given(st.lists(st.tuples(caps, st.sets(st.sampled_from("pqrs"), max_size=3)), min_size=1, max_size=6),
       st.dictionaries(st.sampled_from("pqrs"), caps, min_size=1))
def test_feasible_and_no_link_can_grow_alone(link_list, nics):
    links = {f"l{i}": (cap, tuple(sorted(used))) for i, (cap, used) in enumerate(link_list)}
    rates = max_min_rates(links, nics)
    for nic, cap in nics.items():
        assert sum(r for name, r in rates.items() if nic in links[name][1]) <= cap * (1 + 1e-6)
    for name, (cap, used) in links.items():
        assert rates[name] <= cap * (1 + 1e-6)
        # Max-min: each link is held by its own capacity or by a full NIC where it is among the largest.
        if rates[name] < cap * (1 - 1e-6):
            full = [n for n in used if n in nics and
                    sum(r for m, r in rates.items() if n in links[m][1]) >= nics[n] * (1 - 1e-6)]
            assert any(rates[name] >= max(r for m, r in rates.items() if n in links[m][1]) * (1 - 1e-6)
                       for n in full), (name, rates)
