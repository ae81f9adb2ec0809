import os
import subprocess
import sys
import time
import urllib.request
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


SLOW_WRITER = '{ kind = "uniform", dirty_pages_per_s = 4000, working_set_gib = 0.25 }'


def start_migrating(tmp_path, out_dir, port: int) -> subprocess.Popen:
    """`livemig run` of a slow migration, returned once its pre-copy is under way."""
    f = tmp_path / "slow.toml"
    f.write_text(scenario_text("slow", memory_gib=1, workload=SLOW_WRITER, gbps=1, dilation=1.0))
    p = subprocess.Popen([LIVEMIG, "run", str(f), "--out", str(out_dir), "--quiet", "--metrics-port",
                          str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
            if 'livemig_phase{phase="precopy",vm="vm"} 1.0' in body:
                return p
        except OSError:
            pass
        time.sleep(0.2)
    p.kill()
    pytest.fail("the migration never started")
