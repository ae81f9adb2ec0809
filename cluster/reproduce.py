"""`livemig reproduce`: run a paper's experiment pairs and check them against it.

Each pair is a baseline and a technique (vanilla against PMigrate, vanilla
against XBRLE). Both scenarios carry the paper's figures in `[reference]`;
this runs them (in one Ray), compares them with `cluster.compare`, and tells
for every figure the paper reports whether the emulator's ratio has the
paper's direction and is within the tolerance of its value.
"""
from __future__ import annotations

from pathlib import Path

from cluster.compare import rows

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


def run_suite(suite: str, out_dir: Path, tolerance: float = 0.25, progress=print) -> list[dict]:
    import ray

    from cluster.results import write_result
    from cluster.runner import RunOptions, run_scenario, start_local_ray
    from cluster.scenario import load_scenario

    report = []
    start_local_ray("livemig-reproduce")
    try:
        for title, a_path, b_path in SUITES[suite]:
            results = []
            for rel in (a_path, b_path):
                path = SCENARIOS / rel
                if not path.exists():
                    results = None
                    break
                progress(f"running {rel}")
                r = run_scenario(load_scenario(path), RunOptions(), str(path))
                write_result(r, out_dir / Path(rel).stem)
                results.append(r)
            if results is None:
                progress(f"skipped {title}: scenario missing")
                continue
            table = rows(*results)
            for row in table:
                row.update(judge(row, tolerance))
            report.append({"experiment": title, "a": a_path, "b": b_path, "rows": table,
                           "verified": all(r["verified"] for r in results)})
    finally:
        ray.shutdown()
    return report


def markdown(report: list[dict]) -> str:
    lines = ["| experiment | figure | paper A → B | emulator A → B | paper ratio | emulator ratio | deviation |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for exp in report:
        for r in exp["rows"]:
            if "paper_ratio" not in r:
                continue
            mark = "" if not r.get("checked") else (" ✓" if r.get("direction") and r.get("within") else " ✗")
            f = lambda v: "-" if v is None else f"{v:,.3g}"
            lines.append(f"| {exp['experiment']} | {r['metric']} ({r['unit']}) | {f(r.get('paper_a'))} → {f(r.get('paper_b'))} "
                         f"| {f(r['a'])} → {f(r['b'])} | {f(r.get('paper_ratio'))} | {f(r['ratio'])} "
                         f"| {'-' if r.get('deviation') is None else format(r['deviation'], '+.0%')}{mark} |")
    return "\n".join(lines)
