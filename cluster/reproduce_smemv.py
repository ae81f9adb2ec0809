"""`livemig reproduce smemv`: S-memV's evaluation (§V) against the emulator.

The paper gives its comparisons as ratios and differences to ideal
migration (its figures are bar charts): split migration within about 5% of
ideal migration's time and 7 ms of its downtime, SSD-assisted 2.2 times
and HDD-assisted 11.7 times as long (idle 12 GB VM, 10 GbE, Fig. 7); after
the migration memcached recovers in 5 s after split migration and only
after 21 minutes after SSD-assisted (Fig. 12); LRU beats random splitting
(Fig. 13). This runs the scenarios of scenarios/smemv/ in one Ray and puts
the emulator's figures next to those.

The runs' length is the scenarios' `observe_after_s` (20 emulated seconds
for the applications): "not within N s" stands for the paper's minutes.

Not reproduced: the SSD and HDD baselines' seconds of extra downtime on an
idle VM (+3.4 s, +30 s). A swap-out backlog at the stop does not explain
them: the most a source can run ahead of its destination through TCP is
its send and receive buffers (Linux's default maxima, 4 + 6 MiB), 22 ms of
page-outs on the SSD model and 0.2 s on the HDD's. Both paper figures
instead stand for the same ~1.6 GB of page-outs left when the VM stopped
(3.4 s at the SSD's 486 MB/s per 256-page cluster, 30 s at the HDD's
53 MB/s): the paper's own explanation, KVM entering its last iteration in
the middle of the first pass of an idle VM, which neither QEMU's documented
stop rule nor the emulator's does.
"""
from __future__ import annotations

from pathlib import Path

from cluster.tables import saturation_cell, saturation_of

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios" / "smemv"

# (experiment, scenario stem per variant, slow?)
GROUPS = [
    ("idle 12 GB, 10 GbE (Fig. 7)", "idle-12g-10gbe", ("ideal", "split", "ssd", "hdd")),
    ("RapidWrite 12 GB, 10 GbE (Fig. 8)", "rapidwrite-12g-10gbe", ("ideal", "split", "ssd", "hdd")),
    ("idle 2 GB, 10 GbE (Fig. 9)", "idle-2g-10gbe", ("ideal", "split", "ssd", "hdd")),
    ("idle 2 GB, 1 GbE (Fig. 10)", "idle-2g-1gbe", ("ideal", "split", "ssd", "hdd")),
    ("memcached after migration (Figs. 12-13)", "memcached-12g", ("ideal", "split", "random", "ssd")),
    ("GNU sort after migration (Figs. 11, 13)", "sort-12g", ("ideal", "split", "random", "ssd")),
]

# What the paper says, relative to ideal migration (time ratio, downtime difference in ms).
PAPER = {
    "idle-12g-10gbe": {"split": (1.05, 7), "ssd": (2.2, 3400), "hdd": (11.7, 30000)},
    # Fig. 10: at 1 GbE, SSD-assisted migration took about as long as ideal migration.
    "idle-2g-1gbe": {"ssd": (1.0, None)},
}


def _row(group: str, variant: str, r: dict, ideal: dict | None) -> dict:
    section = r.get("split") or r.get("swap") or {}
    paging = section.get("remote_paging") or section.get("paging") or {}
    row = {"group": group, "variant": variant, "status": r["status"], "verified": r["verified"],
           "total_time_s": r["total_time_s"], "downtime_ms": r["downtime_ms"],
           "time_ratio": r["total_time_s"] / ideal["total_time_s"] if ideal and ideal["total_time_s"] else None,
           "downtime_diff_ms": r["downtime_ms"] - ideal["downtime_ms"] if ideal else None,
           "recovery_s": section.get("recovery_s"),
           "faults": paging.get("faults", paging.get("after_migration", {}).get("swap_faults")),
           "ops_per_s_after": r.get("app", {}).get("ops_per_s_after"),
           "ops_per_s_before": r.get("app", {}).get("ops_per_s_before"), "saturation": saturation_of(r)}
    paper = PAPER.get(group, {}).get(variant)
    if paper:
        row["paper_time_ratio"], row["paper_downtime_diff_ms"] = paper
    return row


def run(out_dir: Path, groups: list[str] | None = None, progress=print) -> list[dict]:
    """Run the groups (all when None) and return one row per scenario."""
    from cluster.reproduce import one_ray, run_kept

    rows = []
    with one_ray():
        for title, stem, variants in GROUPS:
            if groups and stem not in groups:
                continue
            ideal = None
            for v in variants:
                r = run_kept(SCENARIOS / f"{stem}-{v}.toml", out_dir, progress)
                ideal = r if v == "ideal" else ideal
                rows.append(_row(stem, v, r, ideal) | {"experiment": title})
    return rows


def markdown(rows: list[dict]) -> str:
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = ["| experiment | variant | time s | x ideal (paper) | downtime ms | +ms vs ideal (paper) | "
             "faults after | recovery s | verified | saturation |", "|" + " --- |" * 10]
    for r in rows:
        lines.append(f"| {r['experiment']} | {r['variant']} | {f(r['total_time_s'], '.2f')} | "
                     f"{f(r['time_ratio'], '.2f')} ({f(r.get('paper_time_ratio'), '.2f')}) | {f(r['downtime_ms'], '.0f')} | "
                     f"{f(r['downtime_diff_ms'], '+.0f')} ({f(r.get('paper_downtime_diff_ms'), '+.0f')}) | "
                     f"{f(r['faults'], '.0f')} | {f(r['recovery_s'], '.1f')} | {r['verified']} | "
                     f"{saturation_cell(r.get('saturation'))} |")
    return "\n".join(lines)
