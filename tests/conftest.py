import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIVEMIG = str(Path(sys.executable).parent / "livemig")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for a module's in-process runs (the runner reuses it)."""
    import ray

    from cluster.runner import start_local_ray
    start_local_ray("livemig-tests", num_cpus=2)
    yield
    ray.shutdown()


def scenario_text(name: str = "t", *, memory_gib: float = 1, workload: str = '{ kind = "idle" }',
                  gbps: float = 1, rtt_ms: float = 0.2, dilation: float = 1.0, scale: float = 1 / 64,
                  downtime_ms: float = 100, extra_vm: str = "", migration: str = "") -> str:
    """A small two-host scenario for tests."""
    return f'''
name = "{name}"
[emulation]
memory_scale = {scale}
dilation = {dilation}
seed = 5
[[hosts]]
name = "src"
role = "source"
nics = [{{ name = "eth0", speed_gbps = {gbps} }}]
[[hosts]]
name = "dst"
role = "destination"
nics = [{{ name = "eth0", speed_gbps = {gbps} }}]
[[network.links]]
from = "src:eth0"
to = "dst:eth0"
rtt_ms = {rtt_ms}
[[vms]]
name = "vm"
memory_gib = {memory_gib}
workload = {workload}
{extra_vm}
[migration]
downtime_limit_ms = {downtime_ms}
{migration}
'''
