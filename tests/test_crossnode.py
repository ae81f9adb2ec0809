"""Several Ray nodes: placement (hosts.ray_node), the TCP path between nodes, the guest's
hand-off at switch-over (cluster/crossnode.py, agents/datapath/crossnode.py).

The refusals are pure. The runs start a real multi-node cluster on this machine
(`ray.cluster_utils.Cluster`, a head and a worker node, each with its own custom
resource) and migrate from a host on one node to a host on the other: every batch
crosses TCP into the destination node's own ring, the guest goes on in a guest
actor on the destination's node, and the copy verifies. They take about a minute,
so they are marked slow. The cluster runs with token authentication on, and is joined
the way a user joins one: `livemig run --address`.
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


def test_times_read_on_another_machine_enter_the_timeline_on_the_drivers_clock():
    """A node whose monotonic clock is 250 s ahead: an event it reads at 1250 s happened at the
    driver's 1000 s; a guest's samples go back by the offset of the node its actor is on."""
    from types import SimpleNamespace

    from cluster.crossnode import samples_to_driver_clock, to_driver_clock
    sl = SimpleNamespace(nodes={"a": {"clock_offset_s": 0.0}, "b": {"clock_offset_s": 250.0}},
                         guest_host={0: "a", 1: "b"})
    assert to_driver_clock(sl, "b", 1250.0) == 1000.0 and to_driver_clock(sl, "a", 5.0) == 5.0
    assert samples_to_driver_clock(sl, 1, [(1250.0, 10.0), (1251.0, 20.0)]) == [(1000.0, 10.0), (1001.0, 20.0)]
    assert samples_to_driver_clock(sl, 0, [(3.0, 1.0)]) == [(3.0, 1.0)]


def test_bad_placement_fields_are_refused():
    assert any("ray_node" in ln for ln in _refusal(TWO_NODES.format(dst_node="no de", consumers=1,
                                                                     compression="none")))
    text = scenario_text("t").replace('[[hosts]]', '[network]\ntransport = "udp"\n[[hosts]]', 1)
    assert any("network.transport" in ln for ln in _refusal(text))


# --- a real two-node cluster ----------------------------------------------------------------
# Held by a child process: Ray reads RAY_AUTH_MODE when it is imported, so a cluster with token
# authentication on, as Ray documents it (RAY_AUTH_MODE=token on every node, the token in
# ~/.ray/auth_token), is started and joined by processes that have it from the start.
HOLD = """
import sys
from ray.cluster_utils import Cluster
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node-a": 1}})
c.add_node(num_cpus=1, resources={"node-b": 1})
c.wait_for_nodes()
print(c.address, flush=True)
sys.stdin.read()
c.shutdown()
"""


def _token_env() -> dict:
    import os
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def two_nodes():
    """The address of a head node (resource node-a) and a worker node (node-b)."""
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=_token_env())
    try:
        address = holder.stdout.readline().strip()
        assert address, "the two-node cluster did not start"
        yield address
    finally:
        holder.stdin.close()
        holder.wait(60)


def _run(address: str, text: str, tmp_path, *extra):
    import json
    import subprocess

    from tests.conftest import LIVEMIG, ROOT
    scenario = tmp_path / "two-nodes.toml"
    scenario.write_text(text)
    out = tmp_path / "out"
    done = subprocess.run([LIVEMIG, "run", str(scenario), "--address", address, "--out", str(out), "-q", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=_token_env())
    result = json.loads((out / "result.json").read_text()) if done.returncode in (0, 1) else {}
    return done, result


@pytest.mark.slow
@pytest.mark.parametrize("consumers, compression", [(4, "zstd"), (1, "xbzrle")])
def test_a_migration_between_two_nodes_crosses_tcp_verifies_and_the_guest_runs_on(two_nodes, tmp_path, consumers,
                                                                                   compression):
    done, r = _run(two_nodes, TWO_NODES.format(dst_node="node-b", consumers=consumers, compression=compression),
                   tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert r["status"] == "completed" and r["verified"], r.get("stop_reason")
    dp = r["data_path"]
    assert dp["ray_nodes"]["host-a"] != dp["ray_nodes"]["host-b"]
    assert dp["tcp_connections"] == consumers and not dp["tcp_errors"]
    # Everything the migration sent crossed TCP (real bytes: emulated ones times memory_scale).
    assert dp["tcp_bytes_sent"] >= r["memory_bytes_sent"] * r["emulation"]["memory_scale"] * 0.99
    assert r["app"]["ops_per_s_after"] > 0  # the guest went on, in its actor on the destination's node
    # cluster_utils nodes are processes of one kernel boot: one CLOCK_MONOTONIC, no offset to guess.
    assert set(dp["clock_offset_ms"].values()) == {0.0}


@pytest.mark.slow
def test_a_wrong_token_or_a_ray_node_no_node_offers_is_refused_in_one_line(two_nodes, tmp_path):
    text = TWO_NODES.format(dst_node="node-b", consumers=1, compression="none")
    bad = tmp_path / "token"
    bad.write_text("not-the-token\n")
    refused, _ = _run(two_nodes, text, tmp_path, "--auth-token-file", str(bad))
    mine = [ln for ln in refused.stderr.splitlines() if ln.startswith("--address")]
    assert refused.returncode == 2 and len(mine) == 1 and "token" in mine[0], refused.stderr[-2000:]
    nowhere, _ = _run(two_nodes, text.replace('"node-b"', '"node-z"'), tmp_path)
    mine = [ln for ln in nowhere.stderr.splitlines() if "ray_node" in ln]
    assert nowhere.returncode == 2 and len(mine) == 1, nowhere.stderr[-2000:]
    assert "hosts[1].ray_node" in mine[0] and "node-z" in mine[0] and "node-a" in mine[0]


# --- `--address` checked before Ray is asked (cluster/join.py), without Ray ------------------
def _serve_once(reply: bytes):
    """A one-connection TCP server on 127.0.0.1 that answers `reply` to whatever it gets; its port."""
    import socket
    import threading
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.recv(64)
            conn.sendall(reply)
        srv.close()
    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def test_an_address_is_a_ray_head_only_if_it_speaks_grpc():
    from cluster.join import address_problem
    # HTTP/2's SETTINGS frame (type 4), as a gRPC server such as Ray's GCS sends first.
    assert address_problem(f"127.0.0.1:{_serve_once(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))}") is None
    web = _serve_once(b"HTTP/1.0 400 Bad request\r\n\r\n")
    assert "is not a Ray head (no gRPC there)" in address_problem(f"127.0.0.1:{web}")
    assert "no Ray head answers at ::1:1" in address_problem("[::1]:1")
    assert "is not HOST:PORT" in address_problem(":6379")
