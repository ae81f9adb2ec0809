"""`livemig compare A B`: two results side by side, with ratios, like the papers' tables.

The ratio is A over B (how many times B reduced a figure of A; PMigrate
reports its gains that way). When the scenarios carry the paper's figures
(`[reference]`), the paper's own ratio is shown next to the emulator's, with
the deviation between the two.
"""
from __future__ import annotations

import json
from pathlib import Path

from cluster.tables import saturation_of

ROWS = [
    # (label, key, unit, scale)
    ("Migration time", "total_time_s", "s", 1.0),
    ("Downtime", "downtime_ms", "ms", 1.0),
    ("# of pre-copy iterations", "iterations", "", 1.0),
    ("Total memory sent", "memory_bytes_sent", "GiB", 2.0 ** -30),
    ("Downtime send", "downtime_bytes_sent", "MiB", 2.0 ** -20),
    ("Avg. network throughput", "avg_throughput_mbytes_s", "MiB/s", 1.0),
    ("Avg. CPU usage", "cpu_usage_percent", "%", 1.0),
    ("Total CPU cost", "cpu_seconds", "CPU-s", 1.0),
    ("Non-response time", "non_response_s", "s", 1.0),
    ("App degradation", "degradation", "%", 100.0),
    ("Memory compress rate", "memory_compress_rate", "%", 100.0),
    # Above 5% the run's figures are not faithful (DESIGN.md: real work overran its charged time).
    ("Saturation (over 5%: unfaithful)", "saturation", "%", 100.0),
]


class CompareError(Exception):
    pass


def strict_json(text: str):
    """JSON as livemig writes it: NaN and Infinity, which Python's json reads but a run never
    writes (cluster/results.py `finite`), are refused with ValueError."""
    def refuse(name: str):
        raise ValueError(f"holds {name}, which no run writes")
    return json.loads(text, parse_constant=refuse)


def load(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "result.json"
    try:
        return strict_json(p.read_text())
    except FileNotFoundError:
        raise CompareError(f"{p}: no such file; give a result.json or the directory holding it") from None
    except ValueError as exc:  # json.JSONDecodeError too
        raise CompareError(f"{p}: not a result.json ({exc})") from None


def status_of(result: dict) -> str:
    """How the run ended, in a few words: 'completed, verified', 'completed, NOT verified',
    or the status with its stop reason ('failed: link down'); a failed run's figures are not
    a migration's (cluster/collect.py `_status`)."""
    status = result.get("status", "unknown")
    if status == "completed":
        return "completed, " + ("verified" if result.get("verified") else "NOT verified")
    reason = result.get("stop_reason") or ""
    return f"{status}: {reason}" if reason else status


def figure(result: dict, key: str) -> float | None:
    """A figure of a result, wherever it lives (top level, app, compression). For a run of
    several migrations, the application figures are the worst VM's (the largest degradation
    and non-response time); the others are the run's (cluster/collect.py `combine`: time from
    the first start to the last end, the longest downtime, iterations, bytes and CPU summed)."""
    if key in ("non_response_s", "degradation"):
        app = result.get("app") or {}
        if "ops_per_s_before" in app or not result.get("vms"):
            return app.get(key)
        values = [(v.get("app") or {}).get(key) for v in result["vms"]]
        return max((x for x in values if x is not None), default=None)
    if key == "memory_compress_rate":
        return (result.get("compression") or {}).get("memory_compress_rate")
    if key == "saturation":
        return saturation_of(result)
    return result.get(key)


def rows(a: dict, b: dict) -> list[dict]:
    ref_a = (a.get("reference") or {}).get("figures") or {}
    ref_b = (b.get("reference") or {}).get("figures") or {}
    out = []
    for label, key, unit, k in ROWS:
        va, vb = figure(a, key), figure(b, key)
        if va is None and vb is None and key not in ref_a:
            continue
        row = {"metric": label, "key": key, "unit": unit,
               "a": None if va is None else va * k, "b": None if vb is None else vb * k}
        row["ratio"] = va / vb if va is not None and vb and abs(vb) > 1e-9 else None
        pa, pb = ref_a.get(key), ref_b.get(key)
        if pa is not None and pb is not None:
            row["paper_a"], row["paper_b"] = pa * k, pb * k
            row["paper_ratio"] = pa / pb if pb and abs(pb) > 1e-9 else None
            if row["ratio"] is not None and row["paper_ratio"]:
                row["deviation"] = row["ratio"] / row["paper_ratio"] - 1
        out.append(row)
    return out
