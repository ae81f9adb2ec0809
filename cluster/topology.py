"""Topology: which links carry the migration, and which connection uses which.

From a scenario and its scaling this works out, without starting anything:
the NIC pairs (as listed, or paired by speed), each link's real rate and
delay, its background traffic and rate control, and the connections: one per
consumer (PMigrate), spread round-robin over the links, each with its batch
size and the slots of its ring. Pure; the runner builds actors from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.scaling import Scale, gbps_to_bytes_s
from cluster.scenario import MIB, Link, Scenario

PAGE = 4096


@dataclass(frozen=True)
class LinkPlan:
    index: int
    name: str
    rate_bytes_s: float  # real capacity
    one_way_s: float  # real
    background_bytes_s: float  # real offered background traffic
    emulated_bandwidth_bytes_s: float


@dataclass(frozen=True)
class ConnectionPlan:
    index: int
    link: int
    batch_pages: int
    slots: int


@dataclass(frozen=True)
class Topology:
    links: list[LinkPlan]
    connections: list[ConnectionPlan]

    def connections_of(self, link: int) -> list[ConnectionPlan]:
        return [c for c in self.connections if c.link == link]


def auto_batch_pages(real_rate: float, scale: Scale, target_emulated_s: float = 0.008) -> int:
    """Pages per batch so one batch crosses its connection in a few emulated ms.

    Coarser batches would blur the downtime (the last batch is sent whole);
    finer ones cost per-batch overhead on this machine.
    """
    pages = real_rate * scale.real_seconds(target_emulated_s) / PAGE
    return int(min(256, max(2, pages)))


def plan(scenario: Scenario, scale: Scale, links: list[Link] | None = None, migration=None) -> Topology:
    """The links and connections of one migration. `links` and `migration` (its
    options) default to the single-pair scenario's: migration_links() and [migration]."""
    mig = scenario.migration if migration is None else migration
    links = scenario.migration_links() if links is None else links
    rates = [gbps_to_bytes_s(scenario.link_bandwidth_gbps(l)) for l in links]
    if mig.bandwidth_cap_gbps is not None:
        # The cap is on the migration as a whole: each link gets its share of it.
        cap = gbps_to_bytes_s(mig.bandwidth_cap_gbps)
        factor = min(1.0, cap / sum(rates))
        rates = [r * factor for r in rates]
    link_plans = []
    for i, (link, emu_rate) in enumerate(zip(links, rates)):
        background = min(link.background.mbytes_s * MIB, emu_rate)
        link_plans.append(LinkPlan(i, f"{link.from_nic}->{link.to_nic}", scale.real_rate(emu_rate),
                                   scale.real_seconds(link.rtt_ms / 2000), scale.real_rate(background), emu_rate))
    n_links = len(link_plans)
    conns = []
    for k in range(mig.consumers):
        lp = link_plans[k % n_links]
        sharing = len(range(k % n_links, mig.consumers, n_links))
        share = lp.rate_bytes_s / sharing
        batch = mig.batch_pages or auto_batch_pages(share, scale)
        bdp = share * 2 * lp.one_way_s
        slots = int(min(32, max(4, math.ceil(bdp / (batch * PAGE)) + 3)))
        conns.append(ConnectionPlan(k, lp.index, batch, slots))
    return Topology(link_plans, conns)
