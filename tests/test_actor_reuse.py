"""Actors reused between the runs of a sweep (agents/actors/reuse.py, cluster/actor_pool.py).

An agent serves another run only when nothing of its last run lives on in
its process: its threads have ended and its attributes (regions, sockets)
are gone, so the run's shared memory is unmapped at tear-down.
"""
import threading

import pytest

from agents.actors.reuse import Reusable


class _Agent(Reusable):
    def __init__(self, label: str) -> None:
        self.note_threads()
        self.label = label
        self.stop = threading.Event()

    def start_worker(self) -> None:
        self.buffer = bytearray(1 << 20)  # stands for a mapped image
        self.worker = threading.Thread(target=self.stop.wait, name="run-worker", daemon=True)
        self.worker.start()


def test_an_agent_with_a_live_thread_is_not_renewed_and_one_without_is_built_afresh():
    a = _Agent("first")
    a.start_worker()
    assert a.leftover_threads(wait_s=0.05) == ["run-worker"]
    assert a.retire(wait_s=0.05) == ["run-worker"] and a.label == "first"  # nothing dropped
    assert a.renew("second") is False and a.label == "first"
    a.stop.set()
    assert a.retire() == []
    assert not hasattr(a, "buffer") and not hasattr(a, "label")  # the run's memory is let go
    assert a.renew("second") is True
    assert a.label == "second" and not hasattr(a, "worker") and a.leftover_threads(0) == []


def test_threads_from_before_the_agent_are_not_its_runs():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        a = _Agent("x")
        assert a.leftover_threads(wait_s=0) == []
        assert a.renew("y") and a.label == "y"
    finally:
        stop.set()


def _maps_of_run(pid: int, run_id: str) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return [line for line in f if f"livemig-{run_id}-" in line]


def test_a_second_run_in_kept_processes_verifies_and_the_first_runs_memory_is_unmapped(ray_cluster):
    """Two runs on one Ray inside reusing_actors(): the second builds its host, link and guest
    agents in the first's processes (same pids), verifies, and after each run's tear-down the
    kept processes map none of its shared memory."""
    import ray

    from cluster.actor_pool import reusing_actors
    from cluster.runner import RunOptions, run_scenario
    from cluster.scenario import parse_scenario
    from tests.conftest import scenario_text

    sc = parse_scenario(scenario_text("reuse", memory_gib=0.5, gbps=2), "reuse.toml")
    with reusing_actors() as pool:
        if pool is None:
            pytest.skip("LIVEMIG_REUSE_ACTORS=0")
        pids, results = [], []
        for _ in range(2):
            results.append(run_scenario(sc, RunOptions()))
            kept = [a for actors in pool.idle.values() for a in actors]
            pids.append(sorted(ray.get([a.pid.remote() for a in kept], timeout=30)))
            run_id = results[-1]["run"]["run_id"]
            assert all(_maps_of_run(p, run_id) == [] for p in pids[-1])
        assert [r["verified"] for r in results] == [True, True]
        assert len(pids[0]) == 4  # two hosts, a link and a guest were kept
        assert pids[1] == pids[0] and pool.reused == 4 and pool.started == 4


def test_a_datastores_disk_agent_serves_the_next_run_and_its_disks_are_gone(ray_cluster, tmp_path):
    """A storage migration run twice inside reusing_actors(): the second run's datastores are
    played by the first's DiskAgent processes, both runs verify their disk and memory, and no
    disk image of the first run is left in its directory."""
    import ray

    from cluster.actor_pool import reusing_actors
    from cluster.runner import RunOptions, run_scenario
    from cluster.scenario import parse_scenario
    from tests.test_storage_plan import storage_scenario

    sc = parse_scenario(storage_scenario(disk_gib=0.25), "storage.toml")
    with reusing_actors() as pool:
        if pool is None:
            pytest.skip("LIVEMIG_REUSE_ACTORS=0")
        pids = []
        for k in range(2):
            r = run_scenario(sc, RunOptions(out_dir=str(tmp_path / f"run{k}")))
            assert r["verified"] and r["disk"]["verified"], r["stop_reason"]
            disks = [a for (cls, _), actors in pool.idle.items() if cls == "DiskAgent" for a in actors]
            pids.append(sorted(ray.get([a.pid.remote() for a in disks], timeout=30)))
        assert len(pids[0]) == 2 and pids[1] == pids[0]  # source and target datastores, kept and reused
