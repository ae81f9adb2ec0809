"""The embedded cluster is really embedded, and what livemig serves listens on 127.0.0.1 only.

`livemig run` starts its own local Ray cluster (address="local"): a RAY_ADDRESS
in the environment must not take the run over; another cluster is joined only
with `--address`. The metrics exporter and the Ray dashboard bind 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIVEMIG = ROOT / ".venv" / "bin" / "livemig"


@pytest.mark.slow  # long end to end: make test-slow
def test_quickstart_runs_with_a_bogus_ray_address(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "bogus:1234"}
    r = subprocess.run([str(LIVEMIG), "run", "scenarios/quickstart.toml", "--out", str(tmp_path), "--quiet"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "completed" and result["verified"]


def test_local_ray_is_started_not_joined_and_its_dashboard_is_local(monkeypatch):
    import ray

    from cluster.local_ray import start_local_ray
    calls = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    start_local_ray("t", dashboard=True, num_cpus=1)
    assert calls[0]["address"] == "local"
    assert calls[0]["dashboard_host"] == "127.0.0.1"


def test_metrics_exporter_listens_on_loopback_only():
    from cluster.metrics import MetricsExporter
    m = MetricsExporter(0)  # port 0: any free port
    try:
        host, port = m._server.server_address[:2]
        assert host == "127.0.0.1"
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200
    finally:
        m.close()


def test_without_dashboard_or_ray_metrics_the_head_starts_only_what_a_run_uses(ray_cluster):
    """The test session's Ray (started as `livemig run` starts it without --dashboard or
    --metrics-port): no dashboard head process, no autoscaler monitor, and the node's
    dashboard agent in minimal mode: no metrics agent for the raylet to export Ray's metrics
    to (its port -1 in the session directory; cluster/local_ray.py `_lean_head`)."""
    import ray

    node = ray._private.worker._global_node
    assert "dashboard" not in node.all_processes and "monitor" not in node.all_processes
    port = Path(node.get_session_dir_path()) / f"metrics_agent_port_{node.node_id}"
    assert port.read_text().strip() == "-1"


def test_the_prompt_registration_wait_answers_as_ray_does_and_is_put_back(ray_cluster):
    """ray.init's node lookup, with the driver's own 20 ms poll of the GCS in front of it
    (cluster/local_ray.py `_prompt_registration`), returns what Ray's lookup returns for
    the session's node, and Ray's function is restored when the block ends."""
    import ray
    import ray._private.services as services

    from cluster.local_ray import _prompt_registration
    node = ray._private.worker._global_node
    own = services.get_node
    with _prompt_registration():
        assert services.get_node is not own
        info = services.get_node(node.gcs_address, node.node_id)
    assert services.get_node is own
    assert info == own(node.gcs_address, node.node_id)
    assert info["node_manager_port"] == node.node_manager_port


def test_the_embedded_ray_for_several_runs_keeps_the_callers_sigterm_handler():
    """ray.init puts in a SIGTERM handler that aborts the process at once (a C++ stack on stderr,
    exit 134); `livemig sweep` and `reproduce` start Ray through `local_ray` after setting theirs,
    which stops them as Ctrl-C does. It was lost there (a fresh-eyes finding); `run` kept it."""
    import sys
    code = ("import signal\nfrom cluster.local_ray import local_ray\nh = lambda *a: None\n"
            "signal.signal(signal.SIGTERM, h)\nwith local_ray('livemig-sigterm-test', num_cpus=1):\n"
            "    print(signal.getsignal(signal.SIGTERM) is h)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "RAY_ADDRESS": ""})
    assert r.returncode == 0 and r.stdout.strip() == "True", (r.stdout, r.stderr[-2000:])
