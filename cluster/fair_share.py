"""Max-min fair shares of NICs between the links that use them.

A link is one NIC pair, but a NIC may serve several links: a host evacuated
to two destinations sends both streams through its one port. Within a link
the shaper shares bandwidth between connections (agents/datapath/fair_queue.py);
between links that share a NIC this module decides each link's rate, by
progressive filling (Bertsekas and Gallager, Data Networks §6.5.2): raise all
rates together until a link reaches its own capacity or a NIC is full,
freeze the links concerned, go on with the others. Pure arithmetic; the
orchestrator applies the rates when migrations start or end and when an
event changes a link.
"""
from __future__ import annotations


def max_min_rates(links: dict[str, tuple[float, tuple[str, ...]]], nics: dict[str, float]) -> dict[str, float]:
    """Rates (same unit as the capacities) of `links`: name -> (own capacity,
    the NICs it crosses); `nics`: NIC -> capacity. A NIC not in `nics` is not
    a constraint."""
    rate = {name: 0.0 for name in links}
    left = dict(nics)
    active = {name for name, (cap, _) in links.items() if cap > 0}
    while active:
        # How far every active link can rise together before something fills.
        step = min(links[name][0] - rate[name] for name in active)
        for nic, room in left.items():
            users = [name for name in active if nic in links[name][1]]
            if users:
                step = min(step, room / len(users))
        for name in active:
            rate[name] += step
            for nic in links[name][1]:
                if nic in left:
                    left[nic] -= step
        full = {nic for nic, room in left.items() if room <= 1e-9 * max(1.0, nics[nic])}
        active = {name for name in active if links[name][0] - rate[name] > 1e-9 * max(1.0, links[name][0])
                  and not (set(links[name][1]) & full)}
    return rate
