"""Soak and scale benches (issue 14, item 9): how long and how big a run this
machine emulates.

- soak: one writing VM migrated back and forth between two hosts for N
  rounds in one run (one actor set, as a long-lived cluster would be):
  rounds, failures, verification failures, and the private memory of the
  run's processes after each round with its growth per round: a
  least-squares slope over the second half of the rounds (it must be flat;
  the first rounds warm up: allocator arenas and lazily loaded modules of the
  actors grow to their working size).
- evacuation: 8, 16 and 32 small VMs migrated off one host at once over one
  10 GbE link: wall clock, peak memory (private memory of the processes plus
  the shared-memory images) and saturation, so a user knows how large an
  evacuation stays faithful here.
"""
from __future__ import annotations

import statistics
import time

from cluster.footprint import MemorySampler, this_machine
from cluster.bench import saturation_fields

_HOSTS = """
name = "{name}"
[emulation]
memory_scale = {scale}
dilation = {dilation}
seed = 9
[[hosts]]
name = "a"
role = ["source", "destination"]
nics = [{{ name = "eth0", speed_gbps = 10 }}]
[[hosts]]
name = "b"
role = ["source", "destination"]
nics = [{{ name = "eth0", speed_gbps = 10 }}]
"""


def soak_scenario(rounds: int, memory_gib: float, scale: float) -> str:
    """A VM writing 20,000 pages/s migrated a -> b -> a, `rounds` times."""
    text = _HOSTS.format(name=f"soak-{rounds}", scale=scale, dilation=1.0)
    text += (f'[[vms]]\nname = "vm"\nhost = "a"\nmemory_gib = {memory_gib}\n'
             'workload = { kind = "uniform", dirty_pages_per_s = 20000, working_set_gib = 0.125 }\n')
    for r in range(rounds):
        for src, dst in (("a", "b"), ("b", "a")):
            text += f'[[migrations]]\nvm = "vm"\nfrom = "{src}"\nto = "{dst}"\n'
    return text


def evacuation_scenario(vms: int, memory_gib: float, scale: float, dilation: float) -> str:
    """`vms` idle-ish VMs moved off host a at once."""
    text = _HOSTS.format(name=f"evacuate-{vms}", scale=scale, dilation=dilation)
    for i in range(vms):
        text += (f'[[vms]]\nname = "vm{i}"\nhost = "a"\nmemory_gib = {memory_gib}\n'
                 'workload = { kind = "uniform", dirty_pages_per_s = 2000, working_set_gib = 0.0625 }\n'
                 f'[[migrations]]\nvm = "vm{i}"\nto = "b"\n')
    return text


def _run(text: str, name: str) -> tuple[dict, MemorySampler, float]:
    from cluster.runner import RunOptions, run_in_series
    from cluster.scenario import parse_scenario
    sc = parse_scenario(text, f"{name}.toml")
    t0 = time.monotonic()
    with MemorySampler() as mem:
        r = run_in_series(sc, RunOptions())
    return r, mem, t0


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points, or all xs equal)."""
    if len(set(xs)) < 2:
        return 0.0
    return statistics.linear_regression(xs, ys).slope


def soak_bench(rounds: int = 10, memory_gib: float = 1.0, memory_scale: float = 1 / 64) -> dict:
    r, mem, t0 = _run(soak_scenario(rounds, memory_gib, memory_scale), "soak")
    vms = r["vms"]
    # A round ends when its second migration (back to a) does. The timeline's
    # zero is when the guests started, during set-up; emulated = real time here.
    zero = t0 + r["emulation"]["wall_clock_s"]["guests_started_s"]
    ends = [zero + v["finished_at_s"] for v in vms[1::2]]
    per_round = [mem.at(t) or mem.samples[-1][1] for t in ends]
    half = len(per_round) // 2
    growth = slope(list(range(half, len(per_round))), per_round[half:])
    return {"rounds": rounds, "migrations": len(vms),
            "failures": sum(v["status"] != "completed" for v in vms),
            "verification_failures": sum(v["status"] == "completed" and not v["verified"] for v in vms),
            "private_memory_mib_per_round": [round(b / 2**20, 1) for b in per_round],
            "growth_mib_per_round": round(growth / 2**20, 2),
            "growth_measured_over_rounds": [half + 1, len(per_round)],
            "wall_clock_s": r["emulation"]["wall_clock_s"]["total_s"]}


def evacuation_bench(counts: tuple[int, ...] = (8, 16, 32), memory_gib: float = 1.0,
                     memory_scale: float = 1 / 64, dilation: float = 1.0) -> dict:
    rows = []
    for n in counts:
        shm_before = this_machine().shm_free
        r, mem, _ = _run(evacuation_scenario(n, memory_gib, memory_scale, dilation), f"evacuate-{n}")
        images = 2 * n * memory_gib * 2**30 * memory_scale
        fid = r["emulation"]["fidelity"]
        rows.append({"vms": n, "completed": sum(v["status"] == "completed" and v["verified"] for v in r["vms"]),
                     "evacuation_time_s": max(v["finished_at_s"] for v in r["vms"]) - min(
                         v["started_at_s"] for v in r["vms"]),
                     "wall_clock_s": r["emulation"]["wall_clock_s"]["total_s"],
                     "peak_private_memory_mib": round(max(b for _, b in mem.samples) / 2**20),
                     "shared_memory_images_mib": round(images / 2**20),
                     **saturation_fields(r), "faithful": fid["faithful"],
                     "shm_free_before_gib": round(shm_before / 2**30, 1)})
    unsaturated = [row["vms"] for row in rows if row["faithful"] and row["completed"] == row["vms"]]
    return {"memory_gib": memory_gib, "memory_scale": memory_scale, "dilation": dilation, "runs": rows,
            "largest_unsaturated": max(unsaturated, default=None)}
