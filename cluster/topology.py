"""Topology: which links carry each migration, and which connection uses which.

From a scenario and its scaling this works out, without starting anything:
for every migration, the NIC pairs between its source and destination (as
listed, or paired by speed), each link's real rate and delay, its background
traffic, and the migration's connections: as many as its technique needs
(one per PMigrate consumer), spread round-robin over its links, each with
its batch size and the slots of its ring. A split migration (S-memV) has
that many connections to each of its hosts: the main host and every
sub-host (`ConnectionPlan.host`: 0 the main host, 1..k the sub-hosts), and
after it, remote paging crosses a link between the main host and each
sub-host (`Topology.paging`; no connection: the pager books its bytes on
the link, agents/actors/link.py `carry_paging`). A link used by several
migrations is one link: their connections share it. Pure; the runner
builds actors from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from cluster.scaling import Scale, gbps_to_bytes_s
from cluster.scenario import MIB, Scenario, link_name

PAGE = 4096


@dataclass(frozen=True)
class LinkPlan:
    index: int
    name: str  # "host:nic->host:nic"
    rate_bytes_s: float  # real capacity
    one_way_s: float  # real
    background_bytes_s: float  # real offered background traffic
    emulated_bandwidth_bytes_s: float
    source: str = ""  # host names at its two ends
    destination: str = ""
    nics: tuple[str, ...] = ()  # "host:nic" at its two ends


@dataclass(frozen=True)
class ConnectionPlan:
    index: int
    link: int
    batch_pages: int
    slots: int
    migration: int = 0
    host: int = 0  # which of the migration's destinations (0: the first; split migration: 1.. the sub-hosts)


@dataclass(frozen=True)
class Topology:
    links: list[LinkPlan]
    connections: list[ConnectionPlan]
    # Real bytes/s of each NIC that several links share (cluster/fair_share.py divides it).
    shared_nics: dict[str, float] = field(default_factory=dict)
    # Split migrations' remote paging: (migration, sub-host number 1..k) -> the link to the main host.
    paging: dict[tuple[int, int], int] = field(default_factory=dict)

    def connections_of(self, link: int) -> list[ConnectionPlan]:
        return [c for c in self.connections if c.link == link]

    def connections_of_migration(self, m: int) -> list[ConnectionPlan]:
        return [c for c in self.connections if c.migration == m]

    def paging_link(self, m: int, d: int) -> LinkPlan:
        """The link split migration `m`'s main host pages over to and from its sub-host `d`."""
        return self.links[self.paging[(m, d)]]

    def stream_rate(self, m: int) -> float:
        """Bytes/s (real) of migration `m`'s first connection, its share of its link:
        the stream post-copy's requested pages queue behind (agents/techniques/postcopy.py)."""
        conns = self.connections_of_migration(m)
        sharing = sum(1 for c in conns if c.link == conns[0].link)
        return self.links[conns[0].link].rate_bytes_s / sharing

    def links_of_migration(self, m: int) -> list[LinkPlan]:
        used = {c.link for c in self.connections_of_migration(m)}
        return [lp for lp in self.links if lp.index in used]


# Real seconds of a connection's rate its ring holds beyond the bandwidth-delay product: a
# slot's round trip (sender -> link -> receiver -> acknowledgement) wakes three processes,
# each of which may wait milliseconds for a core on a loaded 2-core machine (measured:
# 8 slots held a 10 Gbit/s link at memory_scale 1 to 0.9 GB/s, 32 slots to 1.0-1.1 GB/s).
RING_REAL_S = 0.010


def auto_batch_pages(real_rate: float, scale: Scale, target_emulated_s: float = 0.008) -> int:
    """Pages per batch so one batch crosses its connection in a few emulated ms.

    Coarser batches would blur the downtime (the last batch is sent whole);
    finer ones cost per-batch overhead on this machine. At most 1024 pages
    (4 MiB: 3.4 ms at 10 Gbit/s and memory_scale 1): a consumer's fixed cost
    per batch (its core, the descriptor, the acknowledgement, waking three
    processes) was 0.4 us per page with 256-page batches, and a 1 GiB guest at
    memory_scale 1 ran at a saturation of 0.20-0.45 with them against
    0.07-0.08 with 1024 (three runs each, alternated, under a load of 6-25).
    """
    pages = real_rate * scale.real_seconds(target_emulated_s) / PAGE
    return int(min(MAX_BATCH_PAGES, max(2, pages)))


MAX_BATCH_PAGES = 1024


# The last plan made: the predictor asks for it once per migration, and making it
# afresh each time made a scenario of thousands of migrations quadratic (minutes).
_last: tuple = (None, None, None)  # (scenario, scale, topology)


def plan(scenario: Scenario, scale: Scale) -> Topology:
    """The links and connections of every migration of the scenario (made once per scenario and scale)."""
    global _last
    if _last[0] is scenario and _last[1] == scale:
        return _last[2]
    topo = _plan(scenario, scale)
    _last = (scenario, scale, topo)
    return topo


def _plan(scenario: Scenario, scale: Scale) -> Topology:
    from agents.techniques import registry
    links: dict[str, LinkPlan] = {}
    conns: list[ConnectionPlan] = []
    paging: dict[tuple[int, int], int] = {}
    for mp in scenario.migration_plans():
        technique = registry.get(mp.technique).load()
        targets = mp.destinations if getattr(technique, "splits", False) else mp.destinations[:1]
        for d, dst in enumerate(targets):
            _connections(scenario, scale, links, conns, mp, dst, d, technique.connections_needed(mp.options))
    for mp in scenario.migration_plans():  # after every migration's links, so theirs keep their numbers
        if getattr(registry.get(mp.technique).load(), "splits", False):
            for d, sub in enumerate(mp.destinations[1:], 1):
                paging[(mp.index, d)] = _link(scenario, scale, scenario.paging_links(mp.destinations[0], sub)[0],
                                              links).index
    return Topology(list(links.values()), conns, _shared_nics(scenario, scale, list(links.values())), paging)


def _connections(scenario: Scenario, scale: Scale, links: dict, conns: list, mp, dst, d: int, n: int) -> None:
    """Migration `mp`'s `n` connections to its destination `dst` (number `d`), round-robin over their links."""
    o = mp.options
    mine = [_link(scenario, scale, l, links) for l in scenario.links_between(mp.source, dst)]
    for k in range(n):
        lp = mine[k % len(mine)]
        sharing = len(range(k % len(mine), n, len(mine)))
        share = lp.rate_bytes_s / sharing
        batch = o.batch_pages or auto_batch_pages(share, scale)
        bdp = share * 2 * lp.one_way_s
        # Headroom past the bandwidth-delay product: a slot also waits for its
        # batch to serialize at line rate and be restored (a NIC queue, not credit),
        # and for three processes of this machine to wake up on its way round.
        ring = bdp + share * RING_REAL_S
        slots = int(min(32, max(8, math.ceil(ring / (batch * PAGE)) + 6)))
        conns.append(ConnectionPlan(len(conns), lp.index, batch, slots, mp.index, d))


def _host(nic: str) -> str:
    return nic.split(":", 1)[0]


def _shared_nics(scenario: Scenario, scale: Scale, links: list[LinkPlan]) -> dict[str, float]:
    """NICs that more than one link uses (a host sending to, or receiving from, several hosts)."""
    uses: dict[str, int] = {}
    for lp in links:
        for nic in lp.nics:
            uses[nic] = uses.get(nic, 0) + 1
    return {nic: scale.real_rate(gbps_to_bytes_s(scenario.nic_speed_gbps(nic))) for nic, n in uses.items() if n > 1}


def _link(scenario: Scenario, scale: Scale, link, links: dict) -> LinkPlan:
    """The plan of `link`, made once however many migrations use it. A link
    keeps its NIC speed: a bandwidth cap is the migration's own (QEMU's
    max-bandwidth), applied by its sender (agents/datapath/rate_limit.py)."""
    name = link_name(link)
    if name not in links:
        emu_rate = gbps_to_bytes_s(scenario.link_bandwidth_gbps(link))
        background = min(link.background.mbytes_s * MIB, emu_rate)
        links[name] = LinkPlan(len(links), name, scale.real_rate(emu_rate), scale.real_seconds(link.rtt_ms / 2000),
                               scale.real_rate(background), emu_rate, _host(link.from_nic), _host(link.to_nic),
                               (link.from_nic, link.to_nic))
    return links[name]
