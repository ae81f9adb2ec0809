"""Topology: NIC pairs from a scenario, connections per consumer, link shares."""
import pytest

from agents.datapath.link import migration_share
from cluster.scaling import Scale
from cluster.scenario import parse_scenario
from cluster.topology import plan

TWO_BY_MIXED = '''
name = "pairing"
[[hosts]]
name = "a"
role = "source"
nics = [{ name = "x0", speed_gbps = 10 }, { name = "x1", speed_gbps = 10 }]
[[hosts]]
name = "b"
role = "destination"
nics = [{ name = "y0", speed_gbps = 10 }, { name = "y1", speed_gbps = 1 }, { name = "y2", speed_gbps = 1 }]
[[vms]]
name = "vm"
memory_gib = 1
[migration]
consumers = 6
'''


def test_vmotion_example_gives_three_connections_and_consumers_round_robin():
    sc = parse_scenario(TWO_BY_MIXED, "pairing.toml")
    topo = plan(sc, Scale(1 / 64, 1.0))
    assert [l.name for l in topo.links] == ["a:x0->b:y0", "a:x1->b:y1", "a:x1->b:y2"]
    assert [l.emulated_bandwidth_bytes_s for l in topo.links] == pytest.approx([1.25e9, 1.25e8, 1.25e8])
    assert [c.link for c in topo.connections] == [0, 1, 2, 0, 1, 2]
    assert all(c.slots >= 4 and c.batch_pages >= 2 for c in topo.connections)


def test_a_bandwidth_cap_leaves_the_links_at_their_nic_speed():
    # QEMU's max-bandwidth is the migration's own pacing, not a slower NIC.
    sc = parse_scenario(TWO_BY_MIXED + "bandwidth_cap_gbps = 6\n", "pairing.toml")
    topo = plan(sc, Scale(1.0, 1.0))
    assert sum(l.rate_bytes_s for l in topo.links) == pytest.approx(12e9 / 8)


def test_passthrough_nics_are_not_paired():
    text = TWO_BY_MIXED.replace('{ name = "x1", speed_gbps = 10 }', '{ name = "x1", speed_gbps = 10, passthrough = true }')
    topo = plan(parse_scenario(text, "p.toml"), Scale(1.0, 1.0))
    assert [l.name for l in topo.links] == ["a:x0->b:y0"]


@pytest.mark.parametrize("bg, control, reserved, want", [
    (0, False, 0, 100),     # alone on the link
    (30, False, 0, 70),     # the background wants less than half: it gets it all
    (90, False, 0, 50),     # both greedy: a fair half each
    (90, True, 0, 10),      # rate control: only the spare bandwidth
    (90, True, 20, 20),     # ... but never under the reserved minimum
    (101.7, True, 17.6, 17.6),
])
def test_migration_share(bg, control, reserved, want):
    assert migration_share(100.0 if bg != 101.7 else 117.6, bg, control, reserved) == pytest.approx(want)
