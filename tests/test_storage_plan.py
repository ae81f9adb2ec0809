"""Where a disk goes and by which data path (cluster/storage_plan.py), without Ray."""
from __future__ import annotations

import pytest

from cluster.scenario import ScenarioError, parse_scenario
from cluster.storage_plan import disk_move


def storage_scenario(*, src_hosts='["src"]', tgt_hosts='["dst"]', src_array="", tgt_array="", extra="",
                     technique="storage", workload="", disk_gib=4.0, memory_gib=0.25, scale=1 / 64,
                     dilation=1.0, target="san-b", events="", mig_extra="") -> str:
    """Two hosts, two datastores (san-a where the disk is, san-b), one VM with a disk."""
    return f'''
name = "storage-t"
[emulation]
memory_scale = {scale}
dilation = {dilation}
seed = 3
[[hosts]]
name = "src"
role = "source"
nics = [{{ name = "eth0", speed_gbps = 10 }}]
[[hosts]]
name = "dst"
role = "destination"
nics = [{{ name = "eth0", speed_gbps = 10 }}]
[[datastores]]
name = "san-a"
kind = "fast-san"
hosts = {src_hosts}
{src_array}
[[datastores]]
name = "san-b"
kind = "slow-san"
hosts = {tgt_hosts}
{tgt_array}
{extra}
[[vms]]
name = "db"
memory_gib = {memory_gib}
disk_gib = {disk_gib}
datastore = "san-a"
{workload}
[migration]
technique = "{technique}"
target_datastore = "{target}"
downtime_limit_ms = 300
{mig_extra}
{events}
'''


def _move(text: str):
    s = parse_scenario(text)
    return disk_move(s, s.migration_plans()[0])


def test_network_when_only_the_destination_reaches_the_target():
    mv = _move(storage_scenario())
    assert mv.path == "network" and mv.allowed == ("network",)
    assert mv.rate_bytes_s == pytest.approx(10e9 / 8)
    assert mv.delay_s == pytest.approx(0.0001)  # half the default 0.2 ms RTT


def test_storage_interface_when_the_source_host_reaches_the_target():
    mv = _move(storage_scenario(tgt_hosts='["src", "dst"]'))
    assert mv.path == "storage-interface" and mv.allowed == ("storage-interface", "network")
    assert mv.rate_bytes_s == pytest.approx(8e9 / 8)  # the host's 8 Gbit/s HBA by default


def test_array_offload_when_both_are_on_one_array_that_copies():
    arr = 'array = "vnx"\noffload = true'
    mv = _move(storage_scenario(tgt_hosts='["src", "dst"]', src_array=arr, tgt_array=arr))
    assert mv.path == "array-offload" and mv.allowed == ("array-offload", "storage-interface", "network")
    # Same array, but it cannot offload: the host copies.
    mv = _move(storage_scenario(tgt_hosts='["src", "dst"]', src_array='array = "vnx"', tgt_array='array = "vnx"'))
    assert mv.path == "storage-interface"
    # One array that offloads, but the source host does not reach the target: network.
    assert _move(storage_scenario(src_array=arr, tgt_array=arr)).path == "network"


def test_a_forced_path_is_taken_when_allowed_and_refused_otherwise():
    mv = _move(storage_scenario(tgt_hosts='["src", "dst"]', mig_extra='disk_path = "network"'))
    assert mv.path == "network"
    with pytest.raises(ScenarioError) as info:
        parse_scenario(storage_scenario(mig_extra='disk_path = "array-offload"'), "x.toml")
    assert info.value.lines == ['x.toml: migration.disk_path: "array-offload" is not possible here; the topology '
                                'allows: network']


def test_no_move_when_the_disk_stays_on_shared_storage():
    assert _move(storage_scenario(src_hosts='["src", "dst"]', target="san-a")) is None


def test_storage_options_belong_to_the_storage_technique():
    with pytest.raises(ScenarioError) as info:
        parse_scenario(storage_scenario(technique="precopy"), "x.toml")
    assert info.value.lines[0].startswith('x.toml: migration.target_datastore: not an option of technique "precopy"')


def test_over_the_network_the_disk_uses_the_migration_s_connections():
    two = storage_scenario().replace('nics = [{ name = "eth0", speed_gbps = 10 }]',
                                     'nics = [{ name = "eth0", speed_gbps = 10 }, { name = "eth1", speed_gbps = 10 }]')
    assert _move(two).rate_bytes_s == pytest.approx(10e9 / 8)  # one consumer: one connection, one link
    assert _move(two.replace('downtime_limit_ms = 300', 'downtime_limit_ms = 300\nconsumers = 2')
                 ).rate_bytes_s == pytest.approx(20e9 / 8)


def test_the_schema_offers_exactly_the_presets_there_are():
    from typing import get_args

    from agents.datapath.datastore import PRESETS
    from agents.guest.disk import DISK_PRESETS
    from cluster.scenario import Datastore, DiskWorkloadSpec
    assert set(get_args(Datastore.model_fields["kind"].annotation)) == set(PRESETS)
    assert set(get_args(DiskWorkloadSpec.model_fields["preset"].annotation)) == {"none", *DISK_PRESETS}
    s = parse_scenario(storage_scenario(extra='[[datastores]]\nname = "x"\nkind = "hdd"\nhosts = ["src"]\n'
                                              'read_iops = 150.0'))
    figures = s.datastore_named("x").model_figures()
    assert figures["read_iops"] == 150 and figures["write_iops"] == PRESETS["hdd"].write_iops


@pytest.mark.parametrize("tgt_hosts, disk_on_network", [('["dst"]', True), ('["src", "dst"]', False)])
def test_network_throughput_counts_the_disk_when_it_crossed_the_network(tgt_hosts, disk_on_network):
    """vMotion's unified migration shares the links between memory and disk: "Avg. network
    throughput" counts both (and says so), as PMigrate's Table 6 does with its disk; a disk
    copied through the storage interface is not counted."""
    from cluster.predict import predict
    from cluster.results import summary_rows
    r = predict(parse_scenario(storage_scenario(tgt_hosts=tgt_hosts, disk_gib=1.0)))
    disk = r["disk"]["network_bytes"]
    assert (disk > 0.99 * 2**30) == disk_on_network and (disk == 0) != disk_on_network
    assert r["network_bytes_sent"] == r["memory_bytes_sent"] + disk
    assert r["avg_throughput_mbytes_s"] == pytest.approx(r["network_bytes_sent"] / r["total_time_s"] / 2**20)
    row = dict(summary_rows(r))["Avg. network throughput"]
    assert row.endswith("(memory + disk)") == disk_on_network
