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


# What the tables (compare, report, sweep) read of a result.json and of each entry of its `vms`:
# each a number (or a string) when present; a file that holds another type is not a run's.
NUMBERS = tuple(key for _, key, _, _ in ROWS if key not in ("non_response_s", "degradation", "memory_compress_rate",
                                                            "saturation")) + (
    "app.non_response_s", "app.degradation", "app.ops_per_s_before", "app.ops_per_s_during",
    "app.ops_per_s_after", "compression.memory_compress_rate", "emulation.fidelity.saturation", "postcopy.faults")
TEXTS = ("scenario", "status", "stop_reason", "vm")


def load(path: str | Path) -> dict:
    """A result.json (or the one in a directory); CompareError (one line) when it is missing or
    is not what a run writes."""
    p = Path(path)
    if p.is_dir():
        p = p / "result.json"
    try:
        result = strict_json(p.read_text())
    except FileNotFoundError:
        raise CompareError(f"{p}: no such file; give a result.json or the directory holding it") from None
    except ValueError as exc:  # json.JSONDecodeError too
        raise CompareError(f"{p}: not a result.json ({exc})") from None
    problem = shape_problem(result)
    if problem:
        raise CompareError(f"{p}: not a result.json ({problem})")
    return result


def shape_problem(result) -> str | None:
    """What makes `result` unreadable for the tables, as 'field: what is wrong', or None: the
    top level and each `vms` entry an object, the figures numbers, the names strings."""
    if not isinstance(result, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(result), "a number")
        return f"{kind}, not an object"
    vms = result.get("vms")
    if vms is not None and not (isinstance(vms, list) and all(isinstance(v, dict) for v in vms)):
        return "vms: not a list of objects"
    ref = result.get("reference")
    if ref is not None and not isinstance(ref, dict):
        return "reference: not an object"
    figures = (ref or {}).get("figures")
    if figures is not None and not (isinstance(figures, dict) and all(map(_is_number, figures.values()))):
        return "reference.figures: not an object of numbers"
    for prefix, entry in [("", result), *((f"vms[{i}].", v) for i, v in enumerate(vms or []))]:
        for path, ok, what in [*((p, _is_number, "a number") for p in NUMBERS), *((p, _is_text, "a string") for p in TEXTS)]:
            value, where = _at(entry, path)
            if where:
                return f"{prefix}{where}: not an object"
            if value is not None and not ok(value):
                return f"{prefix}{path}: {value!r} is not {what}"
    return None


def _at(entry: dict, path: str):
    """(value at the dotted path or None, the part that is not an object or '')."""
    node, parts = entry, path.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.get(part)
        if node is None:
            return None, ""
        if not isinstance(node, dict):
            return None, ".".join(parts[:i + 1])
    return node.get(parts[-1]), ""


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_text(v) -> bool:
    return isinstance(v, str)


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
