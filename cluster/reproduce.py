"""`livemig reproduce`: run a paper's experiment pairs and check them against it.

Each pair is a baseline and a technique (vanilla against PMigrate, vanilla
against XBRLE). Both scenarios carry the paper's figures in `[reference]`;
this runs them (in one Ray), compares them with `cluster.compare`, and tells
for every figure the paper reports whether the emulator's ratio has the
paper's direction and is within the tolerance of its value.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from cluster.compare import rows
from cluster.tables import saturation_cell, saturation_of

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

SUITES = {
    "pmigrate": [
        ("Xen idle (Table 3)", "pmigrate/xen-idle-vanilla.toml", "pmigrate/xen-idle-pmigrate.toml"),
        ("Xen PostgreSQL (Table 4)", "pmigrate/xen-postgres-vanilla.toml", "pmigrate/xen-postgres-pmigrate.toml"),
        ("Xen memcached (Table 5)", "pmigrate/xen-memcached-vanilla.toml", "pmigrate/xen-memcached-pmigrate.toml"),
        ("KVM idle, memory only (Table 6)", "pmigrate/kvm-idle-vanilla.toml", "pmigrate/kvm-idle-pmigrate.toml"),
        ("KVM memcached, memory only (Table 7)", "pmigrate/kvm-memcached-vanilla.toml", "pmigrate/kvm-memcached-pmigrate.toml"),
        ("KVM + compression (Table 10)", "pmigrate/kvm-compress-vanilla.toml", "pmigrate/kvm-compress-4consumers.toml"),
    ],
    "xbrle": [
        ("Memory write benchmark", "xbrle/memwrite-vanilla.toml", "xbrle/memwrite-xbrle.toml"),
        ("HD video transcoding", "xbrle/video-vanilla.toml", "xbrle/video-xbrle.toml"),
        ("SAP ERP", "xbrle/erp-vanilla.toml", "xbrle/erp-xbrle.toml"),
    ],
}

# Figures whose ratio the issue asks to reproduce (and that are in the tables).
CHECKED = ("total_time_s", "downtime_ms", "memory_bytes_sent", "avg_throughput_mbytes_s", "cpu_seconds",
           "memory_compress_rate")


def judge(row: dict, tolerance: float) -> dict:
    """Direction and distance of the emulator's ratio from the paper's."""
    paper, got = row.get("paper_ratio"), row.get("ratio")
    if paper is None or got is None:
        return {"checked": False}
    # A paper ratio within 5% of 1 is "about the same" (inside its run-to-run spread).
    same_direction = (paper > 1.05 and got > 1.0) or (paper < 0.95 and got < 1.0) or 0.95 <= paper <= 1.05
    return {"checked": row["key"] in CHECKED, "direction": same_direction,
            "within": abs(got / paper - 1) <= tolerance}


@contextlib.contextmanager
def one_ray():
    """One local Ray for every run of a reproduction, shut down after the last; the runs
    reuse each other's actors where they can (cluster/actor_pool.py)."""
    from cluster.actor_pool import reusing_actors
    from cluster.local_ray import local_ray
    with local_ray("livemig-reproduce"), reusing_actors():
        yield


def run_kept(path: Path, out_dir: Path, progress=print, label: str = "") -> dict:
    """Run a shipped scenario (inside `one_ray`); its result.json goes to out_dir/<file stem>."""
    from cluster.runner import RunOptions, run_scenario
    from cluster.scenario import load_scenario
    progress(f"running {label or path.name}")
    return kept(run_scenario(load_scenario(path), RunOptions(), str(path)), out_dir / path.stem)


def kept(result: dict, run_dir: Path) -> dict:
    """The run's result, written to run_dir; KeyboardInterrupt when Ctrl-C (or SIGTERM) aborted
    the run, so that the suite stops there instead of going on with its next runs."""
    from cluster.results import unless_interrupted, write_result
    write_result(result, run_dir)
    return unless_interrupted(result)


def run_suite(suite: str, out_dir: Path, tolerance: float = 0.25, progress=print) -> list[dict]:
    report = []
    with one_ray():
        for title, a_path, b_path in SUITES[suite]:
            paths = [SCENARIOS / rel for rel in (a_path, b_path)]
            if not all(p.exists() for p in paths):
                progress(f"skipped {title}: scenario missing")
                continue
            results = [run_kept(p, out_dir, progress, rel) for p, rel in zip(paths, (a_path, b_path))]
            table = rows(*results)
            for row in table:
                row.update(judge(row, tolerance))
            report.append({"experiment": title, "a": a_path, "b": b_path, "rows": table,
                           "verified": all(r["verified"] for r in results),
                           "saturation": [saturation_of(r) for r in results]})
    return report


def markdown(report: list[dict]) -> str:
    lines = ["| experiment | figure | paper A → B | emulator A → B | paper ratio | emulator ratio | deviation "
             "| saturation A / B |", "|" + " --- |" * 8]
    for exp in report:
        saturation = " / ".join(saturation_cell(s) for s in exp.get("saturation") or (None, None))
        for r in exp["rows"]:
            if "paper_ratio" not in r:
                continue
            mark = "" if not r.get("checked") else (" ✓" if r.get("direction") and r.get("within") else " ✗")
            f = lambda v: "-" if v is None else f"{v:,.3g}"
            lines.append(f"| {exp['experiment']} | {r['metric']} ({r['unit']}) | {f(r.get('paper_a'))} → {f(r.get('paper_b'))} "
                         f"| {f(r['a'])} → {f(r['b'])} | {f(r.get('paper_ratio'))} | {f(r['ratio'])} "
                         f"| {'-' if r.get('deviation') is None else format(r['deviation'], '+.0%')}{mark} "
                         f"| {saturation} |")
    return "\n".join(lines)


# --- the model suite: emulator against predictor --------------------------------------
# A fixed grid of pre-copy scenarios: a 0.5 GiB guest writing uniformly over a
# 0.25 GiB working set, at each dirty rate, link speed and downtime limit.
MODEL_GRID = {"dirty_pages_per_s": (0, 8000, 25000), "gbps": (1, 10), "downtime_limit_ms": (30, 300)}
MODEL_FIGURES = ("total_time_s", "downtime_ms", "memory_bytes_sent", "iterations")

_MODEL_SCENARIO = """
name = "model-{dirty}pps-{gbps}g-{limit}ms"
[emulation]
memory_scale = 0.015625
dilation = 1.0
seed = 3
[[hosts]]
name = "src"
role = "source"
nics = [{{ name = "eth0", speed_gbps = {gbps} }}]
[[hosts]]
name = "dst"
role = "destination"
nics = [{{ name = "eth0", speed_gbps = {gbps} }}]
[network]
rtt_ms = 0.2
[[vms]]
name = "vm"
memory_gib = 0.5
workload = {workload}
content = {{ zero = 0.2, text = 0.3, structured = 0.3, random = 0.2 }}
[migration]
downtime_limit_ms = {limit}
"""


def model_scenario(dirty: float, gbps: float, limit: float) -> str:
    workload = ('{ kind = "idle" }' if dirty == 0 else
                f'{{ kind = "uniform", dirty_pages_per_s = {dirty}, working_set_gib = 0.25 }}')
    return _MODEL_SCENARIO.format(dirty=dirty, gbps=gbps, limit=limit, workload=workload)


def run_model(out_dir: Path, progress=print) -> list[dict]:
    """Every grid point through the emulator (one Ray for all) and the predictor."""
    import itertools

    from cluster.predict import predict
    from cluster.runner import RunOptions, run_scenario
    from cluster.scenario import parse_scenario

    rows = []
    with one_ray():
        for dirty, gbps, limit in itertools.product(*MODEL_GRID.values()):
            sc = parse_scenario(model_scenario(dirty, gbps, limit), f"model-{dirty}-{gbps}-{limit}.toml")
            progress(f"running {sc.name}")
            r = kept(run_scenario(sc, RunOptions()), out_dir / sc.name)
            p = predict(sc)
            rows.append({"scenario": sc.name, "dirty_pages_per_s": dirty, "gbps": gbps, "downtime_limit_ms": limit,
                         "verified": r["verified"], "saturation": saturation_of(r),
                         "emulated": {k: r[k] for k in MODEL_FIGURES},
                         "predicted": {k: p[k] for k in MODEL_FIGURES},
                         "deviation": {k: _deviation(r[k], p[k]) for k in MODEL_FIGURES}})
    return rows


def _deviation(emulated: float, predicted: float) -> float | None:
    """Emulator over predictor, less one (None when the prediction is 0)."""
    return emulated / predicted - 1 if predicted else None


def model_markdown(rows: list[dict]) -> str:
    head = "| dirty pages/s | Gbit/s | limit ms | " + " | ".join(
        f"{k} emu / model (dev)" for k in MODEL_FIGURES) + " | saturation |"
    lines = [head, "|" + " --- |" * (4 + len(MODEL_FIGURES))]
    for r in rows:
        cells = []
        for k in MODEL_FIGURES:
            e, p, d = r["emulated"][k], r["predicted"][k], r["deviation"][k]
            scale = 2**30 if k == "memory_bytes_sent" else 1  # GiB
            cells.append(f"{e / scale:.3g} / {p / scale:.3g} ({'-' if d is None else format(d, '+.0%')})")
        lines.append(f"| {r['dirty_pages_per_s']} | {r['gbps']} | {r['downtime_limit_ms']} | " + " | ".join(cells)
                     + f" | {saturation_cell(r.get('saturation'))} |")
    return "\n".join(lines)
