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


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for every in-process run of the session (the runner joins it, as a
    sweep's runs do): started by the first test that asks for it, 3-6 s saved per module
    after that. A test that needs a Ray of its own (several nodes, a kill of Ray itself)
    must not ask for this one, and must run where none is up (`ray.is_initialized()`)."""
    from cluster.local_ray import local_ray
    with local_ray("livemig-tests", num_cpus=2):
        yield


# --- a tiny sweep (2 points x 2 repeats), run once for the sweep and report tests -------------
SWEEP_SPEC = '''name = "tiny"
base = "base.toml"
repeats = 2
[vary]
"hosts.*.nics.*.speed_gbps" = [2, 5]
'''


def sweep_cli(d: Path, *args):
    """`livemig sweep` of the spec in d into d/out (a CompletedProcess)."""
    import subprocess
    return subprocess.run([LIVEMIG, "sweep", str(d / "spec.toml"), "--out", str(d / "out"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def run_ids(out: Path) -> list[str]:
    import json
    return sorted(json.loads(p.read_text())["run"]["run_id"] for p in out.rglob("result.json"))


@pytest.fixture(scope="session")
def swept(tmp_path_factory):
    """The sweep run as a user resumes one: first one point (--only), then the whole sweep,
    which runs only the other point's repeats. (directory, whole sweep, first part, its run ids)"""
    d = tmp_path_factory.mktemp("sweep")
    writer = '{ kind = "uniform", dirty_pages_per_s = 4000, working_set_gib = 0.125 }'
    (d / "base.toml").write_text(scenario_text("tiny", memory_gib=0.5, workload=writer, gbps=1))
    (d / "spec.toml").write_text(SWEEP_SPEC)
    part = sweep_cli(d, "--only", "speed_gbps=2", "--json")
    assert part.returncode == 0, part.stderr
    ids = run_ids(d / "out")
    first = sweep_cli(d)
    assert first.returncode == 0, first.stderr
    return d, first, part, ids


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
