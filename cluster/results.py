"""Results for people and programs: result.json and timeline.jsonl on disk,
and the paper-style summary rows. The figures themselves are computed in
cluster/collect.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from cluster.scenario import GIB, MIB

PAGE = 4096


def write_result(result: dict, out_dir: str | Path) -> Path:
    """result.json: strict JSON (allow_nan=False), so any JSON reader takes it."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    p = d / "result.json"
    p.write_text(json.dumps(finite(result), indent=2, allow_nan=False) + "\n")
    return p


def interrupted(result: dict) -> bool:
    """Whether a run's result was aborted by an interrupt, Ctrl-C or SIGTERM (cluster/orchestrate.py
    `_interrupt`): a command running several scenarios in a row stops there."""
    entries = [result, *(v for v in result.get("vms") or [] if isinstance(v, dict))]
    return any(e.get("status") == "aborted" and "interrupted" in str(e.get("stop_reason") or "") for e in entries)


def unless_interrupted(result: dict) -> dict:
    """`result`, or KeyboardInterrupt when Ctrl-C (or SIGTERM) aborted its run: a command running
    scenarios one after another stops there instead of going on with its next runs."""
    if interrupted(result):
        raise KeyboardInterrupt
    return result


def finite(value):
    """The value with numpy scalars made Python numbers and NaN or infinity made null:
    JSON has neither, and a figure that is not a number is better absent than invalid."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "tolist"):  # a numpy scalar or array
        return finite(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return float(value)  # what the writer's default=float used to do for any other number


def network_bytes(r: dict) -> float:
    """Bytes (emulated) a migration put on its links: its memory, and its disk when the disk's
    data path is the network (storage and block-dirty migrations; vMotion's unified migration
    shares the links between both). A run's summed `network_bytes_sent` when it has one."""
    if r.get("network_bytes_sent") is not None:
        return r["network_bytes_sent"]
    return (r.get("memory_bytes_sent") or 0.0) + ((r.get("disk") or {}).get("network_bytes") or 0.0)


def with_throughput(r: dict) -> dict:
    """`r` with `network_bytes_sent` and `avg_throughput_mbytes_s`: those bytes over its
    migration time, in MiB/s (0 for a migration that took no time). PMigrate's "Avg. network
    throughput" counts what the network carried, its 16 GB disk included (Table 6)."""
    sent, total = network_bytes(r), r.get("total_time_s") or 0.0
    return r | {"network_bytes_sent": sent, "avg_throughput_mbytes_s": sent / total / MIB if total > 0 else 0.0}


def _fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    if b >= GIB:
        return f"{b / GIB:.2f} GiB"
    if b >= MIB:
        return f"{b / MIB:.1f} MiB"
    return f"{b / 1024:.1f} KiB"


def _fmt(v, fmt: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


OPTIONAL_ROWS = ("Disk sent",)  # left out of a table when no column has a figure


def summary_rows(r: dict) -> list[tuple[str, str]]:
    """The rows of PMigrate's tables, for one VM's (or a prediction's) figures; the rows of
    OPTIONAL_ROWS are "-" when the figure is absent or zero (see `table_rows`)."""
    app = r.get("app") or {}
    deg = app.get("degradation")
    return [
        ("Status", f"{r.get('status', '-')}" + ("" if r.get("verified") is None else (" (verified)" if r.get("verified") else " (NOT verified)"))),
        ("Started / finished at", "-" if r.get("started_at_s") is None else
         f"{r['started_at_s']:.2f} / {_fmt(r.get('finished_at_s'), '.2f', ' s')}"),
        ("Migration time", _fmt(r.get("total_time_s"), ".2f", " s")),
        ("Downtime", _fmt(r.get("downtime_ms"), ".1f", " ms")),
        ("# of pre-copy iterations", _fmt(r.get("iterations"), "d")),
        ("Stop reason", r.get("stop_reason") or "-"),
        ("Total memory sent", _fmt_bytes(r.get("memory_bytes_sent"))),
        ("Disk sent", _fmt_bytes(r.get("disk_bytes_sent") or None)),  # storage migration; dropped when none sent
        ("Downtime send", _fmt_bytes(r.get("downtime_bytes_sent"))),
        ("Avg. network throughput", _fmt(r.get("avg_throughput_mbytes_s"), ".1f", " MiB/s")
         + (" (memory + disk)" if network_bytes(r) > (r.get("memory_bytes_sent") or 0.0) else "")),
        ("Avg. CPU usage", _fmt(r.get("cpu_usage_percent"), ".1f", " %")),
        ("Total CPU cost", _fmt(r.get("cpu_seconds"), ".2f", " CPU-s")),
        ("App throughput before", _fmt(app.get("ops_per_s_before"), ",.0f", " ops/s")),
        ("App throughput during", _fmt(app.get("ops_per_s_during"), ",.0f", " ops/s")),
        ("App throughput after", _fmt(app.get("ops_per_s_after"), ",.0f", " ops/s")),
        ("App degradation", _fmt(None if deg is None else deg * 100, ".1f", " %")),
        ("App non-response", _fmt(app.get("non_response_s"), ".3f", " s")),
    ]


def table_rows(results: list[dict]) -> list[tuple[str, list[str]]]:
    """(label, a cell per result) of the summary table; an optional row no result fills is left out."""
    rows = [summary_rows(r) for r in results]
    out = [(label, [r[i][1] for r in rows]) for i, (label, _) in enumerate(rows[0])]
    return [(label, cells) for label, cells in out if label not in OPTIONAL_ROWS or set(cells) != {"-"}]


def fault_line(result: dict) -> str | None:
    """The run's injected faults in one line, `kind -> outcome` each (cluster/faults.py), or None."""
    faults = [f for f in result.get("faults") or [] if isinstance(f, dict)]
    if not faults:
        return None
    return "faults: " + ", ".join(f"{f.get('kind')} ({f.get('target')}) -> {f.get('outcome')}" for f in faults)
