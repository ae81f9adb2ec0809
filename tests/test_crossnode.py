"""Several Ray nodes: placement (hosts.ray_node), the TCP path between nodes, the guest's
hand-off at switch-over (cluster/crossnode.py, agents/datapath/crossnode.py).

The refusals are pure. The runs start a real multi-node cluster on this machine
(`ray.cluster_utils.Cluster`, a head and a worker node, each with its own custom
resource) and migrate from a host on one node to a host on the other: every batch
crosses TCP into the destination node's own ring, the guest goes on in a guest
actor on the destination's node, and the copy verifies. They take about a minute,
so they are marked slow.
"""
from __future__ import annotations

import pytest

from cluster.scenario import ScenarioError, parse_scenario
from tests.conftest import scenario_text

TWO_NODES = '''
name = "two-nodes"
[emulation]
memory_scale = 0.0078125
dilation = 2.0
seed = 3
[[hosts]]
name = "host-a"
role = "source"
ray_node = "node-a"
nics = [{{ name = "eth0", speed_gbps = 10 }}, {{ name = "eth1", speed_gbps = 10 }}]
[[hosts]]
name = "host-b"
role = "destination"
ray_node = "{dst_node}"
nics = [{{ name = "eth0", speed_gbps = 10 }}, {{ name = "eth1", speed_gbps = 10 }}]
[[vms]]
name = "vm"
memory_gib = 1
vcpus = 2
workload = {{ kind = "uniform", dirty_pages_per_s = 8000, working_set_gib = 0.125 }}
content = {{ zero = 0.2, text = 0.3, structured = 0.2, random = 0.3 }}
[migration]
technique = "precopy"
consumers = {consumers}
compression = "{compression}"
downtime_limit_ms = 300
'''


def _refusal(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(text, "x.toml")
    return exc.value.lines


def test_a_technique_that_cannot_cross_nodes_is_refused_in_one_line_naming_the_field():
    for technique in ("postcopy", "split"):
        text = TWO_NODES.format(dst_node="node-b", consumers=1, compression="none").replace(
            'technique = "precopy"', f'technique = "{technique}"').replace('compression = "none"', "")
        lines = [ln for ln in _refusal(text) if "Ray nodes" in ln]
        assert len(lines) == 1 and lines[0].startswith("x.toml: migration.technique:"), lines
    forced = scenario_text("t").replace('[[hosts]]', '[network]\ntransport = "tcp"\n[[hosts]]', 1)
    parse_scenario(forced, "x.toml")  # pre-copy over the forced TCP path is fine
    lines = _refusal(forced.replace("[migration]", '[migration]\ntechnique = "postcopy"'))
    assert any('network.transport = "tcp"' in ln for ln in lines), lines


def test_bad_placement_fields_are_refused():
    assert any("ray_node" in ln for ln in _refusal(TWO_NODES.format(dst_node="no de", consumers=1,
                                                                     compression="none")))
    text = scenario_text("t").replace('[[hosts]]', '[network]\ntransport = "udp"\n[[hosts]]', 1)
    assert any("network.transport" in ln for ln in _refusal(text))


# --- a real two-node cluster ----------------------------------------------------------------
@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node-a": 1}})
    cluster.add_node(num_cpus=1, resources={"node-b": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="livemig-crossnode-tests", log_to_driver=False)
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()


def _run(address: str, text: str) -> dict:
    from cluster.runner import RunOptions, run_scenario
    return run_scenario(parse_scenario(text, "two-nodes.toml"), RunOptions(address=address), "two-nodes.toml")



@pytest.mark.slow
@pytest.mark.parametrize("consumers, compression", [(4, "zstd"), (1, "xbzrle")])
def test_a_migration_between_two_nodes_crosses_tcp_verifies_and_the_guest_runs_on(two_nodes, consumers,
                                                                                   compression):
    r = _run(two_nodes, TWO_NODES.format(dst_node="node-b", consumers=consumers, compression=compression))
    assert r["status"] == "completed" and r["verified"], r.get("stop_reason")
    dp = r["data_path"]
    assert dp["ray_nodes"]["host-a"] != dp["ray_nodes"]["host-b"]
    assert dp["tcp_connections"] == consumers and not dp["tcp_errors"]
    # Everything the migration sent crossed TCP (real bytes: emulated ones times memory_scale).
    assert dp["tcp_bytes_sent"] >= r["memory_bytes_sent"] * r["emulation"]["memory_scale"] * 0.99
    assert r["app"]["ops_per_s_after"] > 0  # the guest went on, in its actor on the destination's node


@pytest.mark.slow
def test_a_ray_node_no_node_offers_is_refused_before_anything_starts(two_nodes):
    with pytest.raises(ScenarioError) as exc:
        _run(two_nodes, TWO_NODES.format(dst_node="node-z", consumers=1, compression="none"))
    assert exc.value.lines == [exc.value.lines[0]] and "hosts[1].ray_node" in exc.value.lines[0]
    assert "node-z" in exc.value.lines[0] and "node-a" in exc.value.lines[0]
