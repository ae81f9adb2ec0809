"""`livemig sweep SPEC.toml`: one setting or two varied over a base scenario, each point repeated.

The comparisons of QEMU's guestperf, as a small TOML file:

    name = "bandwidth"
    base = "../quickstart.toml"          # relative to this file
    repeats = 3                          # runs per point (default 3)
    [vary]                               # one or two settings, dotted paths into the scenario
    "hosts.*.nics.*.speed_gbps" = [1, 10, 25]   # `*`: every element of a list; `vms.0...`: one

Every point (the product of the varied values) runs `repeats` times in one Ray
(started once for the whole sweep) into `OUT/<point>/r<i>/` (result.json and
timeline.jsonl, as `livemig run --out`). A run whose result.json already holds
the same scenario as loaded, completed and verified, is reused, so an interrupted
sweep resumes; Ctrl-C (a run that comes back interrupted) stops the sweep. The
summary, per point and figure, is the median and the spread (min to max) of
the repeats: `sweep.json` and `sweep.csv` on disk, a table on screen.
"""
from __future__ import annotations

import csv
import itertools
import json
import re
import statistics
import time
import tomllib
import traceback
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

from cluster.compare import ROWS, figure, shape_problem, strict_json
from cluster.results import interrupted
from cluster.tables import SATURATED, SATURATION_LIMIT
from cluster.scenario import NAME, ScenarioError, read_scenario_text, scenario_from_data

MAX_REPEATS = 100
MAX_VALUES = 64
MAX_DIR_NAME = 255  # bytes of one directory name (NAME_MAX of Linux file systems)
SPEC_KEYS = {"name", "description", "base", "repeats", "vary"}
# The figures of the on-screen table, with short headings (sweep.json and sweep.csv carry
# every row of `livemig compare`).
SCREEN = (("total_time_s", "time s"), ("downtime_ms", "downtime ms"), ("iterations", "iterations"),
          ("memory_bytes_sent", "sent GiB"), ("avg_throughput_mbytes_s", "MiB/s"),
          ("degradation", "degradation %"), ("saturation", "saturation %"))

class SweepError(Exception):
    """A sweep file that cannot be run: one line naming the file, the field and what is allowed."""


@dataclass
class Point:
    """One combination of the varied values, and its runs' results."""
    settings: dict  # dotted path -> value
    name: str
    results: list[dict] = field(default_factory=list)
    reused: int = 0


@dataclass
class Spec:
    path: Path
    name: str
    base: Path
    base_data: dict
    repeats: int
    vary: dict  # dotted path -> list of values

    def points(self) -> list[Point]:
        keys = list(self.vary)
        combos = itertools.product(*(self.vary[k] for k in keys))
        return [Point(dict(zip(keys, values)), point_name(dict(zip(keys, values)))) for values in combos]


# --- the spec -----------------------------------------------------------------------------------

def load_spec(path: Path) -> Spec:
    """The sweep file, its base scenario read; SweepError (one line) for anything wrong."""
    try:
        data = tomllib.loads(read_scenario_text(path))
    except ScenarioError as exc:
        raise SweepError(exc.lines[0]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise SweepError(f"{path}: {unknown[0]}: unknown key; allowed: {', '.join(sorted(SPEC_KEYS))}")
    if not isinstance(data.get("base"), str):
        raise SweepError(f"{path}: base: missing; give the base scenario's file, relative to the sweep file")
    base = (path.parent / data["base"]).resolve()
    if base == path.resolve():
        raise SweepError(f"{path}: base: names this sweep file itself; give the scenario the sweep varies")
    try:
        base_data = tomllib.loads(read_scenario_text(base))
    except ScenarioError as exc:
        raise SweepError(f"{path}: base: {exc.lines[0]}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: base: {base}: not valid TOML: {exc}") from None
    if "vary" in base_data:
        raise SweepError(f"{path}: base: {base} is a sweep file, not a scenario; give the scenario the sweep varies")
    repeats = data.get("repeats", 3)
    if type(repeats) is not int or not 1 <= repeats <= MAX_REPEATS:
        raise SweepError(f"{path}: repeats: must be a whole number from 1 to {MAX_REPEATS} (got {repeats!r})")
    vary = _check_vary(path, data.get("vary"))
    return Spec(path, _check_name(path, data.get("name")), base, base_data, repeats, vary)


def _check_name(path: Path, name) -> str:
    """The sweep's name (default: the file's), by the scenario's rule (cluster/scenario.py NAME):
    it names the default directory, runs/sweep-<name>/."""
    given = "" if name is not None else " (the file's name, as none is given)"
    name = path.stem if name is None else name
    if not isinstance(name, str) or not re.fullmatch(NAME, name):
        raise SweepError(f"{path}: name: {name!r}{given} is not allowed; a string of 1 to 64 letters, digits, "
                         f"'_', '-' or '.', not starting with '.'")
    return name


def _check_vary(path: Path, vary) -> dict:
    if not isinstance(vary, dict) or not 1 <= len(vary) <= 2:
        raise SweepError(f"{path}: vary: give one or two settings, e.g. "
                         f'"migration.technique" = ["precopy", "postcopy"]')
    for key, values in vary.items():
        parts = key.split(".")
        if "" in parts or all(q == "*" or q.isdigit() for q in parts):
            raise SweepError(f"{path}: vary.{key!r}: not a setting's dotted path; e.g. \"migration.technique\" or "
                             f"\"hosts.*.nics.*.speed_gbps\"")
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_VALUES:
            raise SweepError(f"{path}: vary.{key}: must be a list of 1 to {MAX_VALUES} values")
        if any(isinstance(v, (dict, list)) for v in values):
            raise SweepError(f"{path}: vary.{key}: values must be numbers, strings or booleans")
        bad = next((v for v in values if isinstance(v, str) and "\0" in v), None)
        if bad is not None:
            raise SweepError(f"{path}: vary.{key}: {bad!r} holds a NUL byte; it cannot be part of a directory name")
    _check_distinct(path, vary)
    longest = point_name({k: max(vs, key=lambda v: len(str(v).encode())) for k, vs in vary.items()})
    if len(longest.encode()) > MAX_DIR_NAME:
        raise SweepError(f"{path}: vary: the point {longest[:40]!r}... makes a directory name of "
                         f"{len(longest.encode())} bytes; at most {MAX_DIR_NAME} are allowed (use shorter values)")
    return vary


def _check_distinct(path: Path, vary: dict) -> None:
    """Every point gets a directory of its own: two points that name the same directory (a value
    listed twice, or "a b" beside "a_b") would share its runs, the second overwriting the first's."""
    keys, seen = list(vary), {}
    for values in itertools.product(*(vary[k] for k in keys)):
        name = point_name(dict(zip(keys, values)))
        if name in seen:
            what = "a value is listed twice" if seen[name] == values else f"{seen[name]!r} and {values!r} too"
            raise SweepError(f"{path}: vary: two points make the directory {name!r} ({what}); give each value once")
        seen[name] = values


def point_name(settings: dict) -> str:
    """A point's directory name: `short=value` for each setting (the path's last name)."""
    parts = []
    for key, value in settings.items():
        short = [p for p in key.split(".") if p != "*" and not p.isdigit()][-1]
        parts.append(f"{short}={value}".replace("/", "_").replace(" ", "_"))
    return ",".join(parts)


def apply(data: dict, key: str, value) -> dict:
    """A copy of the scenario tables with the setting at the dotted path `key` set to `value`;
    `*` stands for every element of a list, a number for one. KeyError names what is missing."""
    out = deepcopy(data)
    _set(out, key.split("."), value, key)
    return out


def _set(node, parts: list[str], value, key: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        if not rest:
            raise KeyError(f"{key}: ends at a list; name a setting inside its elements")
        if head == "*":
            items = node
        elif head.isdigit() and int(head) < len(node):
            items = [node[int(head)]]
        else:
            raise KeyError(f"{key}: {head!r} is not an index of a list of {len(node)}; use a number or *")
        for item in items:
            _set(item, rest, value, key)
        return
    if not isinstance(node, dict):
        raise KeyError(f"{key}: {head!r} is inside a value that is not a table")
    if not rest:
        if isinstance(node.get(head), (dict, list)):
            raise KeyError(f"{key}: ends at a table or list; name a setting inside it")
        node[head] = value
        return
    _set(node.setdefault(head, {}), rest, value, key)


def point_scenario(spec: Spec, point: Point, dilation: float | None = None):
    """The base scenario with the point's settings, validated like a scenario file."""
    data = spec.base_data
    try:
        for key, value in point.settings.items():
            data = apply(data, key, value)
    except KeyError as exc:
        raise SweepError(f"{spec.path}: vary.{exc.args[0]}") from None
    if dilation is not None:
        data = apply(data, "emulation.dilation", dilation)
    try:
        return scenario_from_data(data, f"{spec.path} [{point.name}]")
    except ScenarioError as exc:
        raise SweepError(exc.lines[0]) from None


def select(points: list[Point], only: list[str]) -> list[Point]:
    """The points matching every `key=value` filter (key: the dotted path or its last name)."""
    def matches(p: Point, flt: str) -> bool:
        key, _, want = flt.partition("=")
        return any((k == key or k.split(".")[-1] == key) and str(v) == want for k, v in p.settings.items())
    return [p for p in points if all(matches(p, f) for f in only)]


# --- running ------------------------------------------------------------------------------------

class SweepInterrupted(KeyboardInterrupt):
    """A run came back aborted by Ctrl-C (or SIGTERM): the sweep stops; finished runs stay for resume."""


def reusable(run_dir: Path, scenario, warn=print) -> dict | None:
    """The run's result when it exists, completed and verified, and was made from this very
    scenario (as loaded); a failed, aborted or unverified run is run again. A result.json that is
    not JSON, or holds NaN or Infinity (which no run writes), is run again after one `warn` line."""
    from cluster.results import finite
    path = run_dir / "result.json"
    try:
        result = strict_json(path.read_text())
    except OSError:
        return None
    except ValueError as exc:  # json.JSONDecodeError too
        warn(f"sweep: {path}: not reused, not a result.json ({exc}); running it again")
        return None
    problem = shape_problem(result)
    if problem:
        warn(f"sweep: {path}: not reused, not a result.json ({problem}); running it again")
        return None
    if result.get("status") != "completed" or result.get("verified") is not True:
        return None
    wanted = json.loads(json.dumps(finite(scenario.as_loaded())))
    return result if result.get("scenario_as_loaded") == wanted else None


def run_sweep(spec: Spec, out: Path, points: list[Point], selected: list[Point] | None = None, fresh: bool = False,
              dilation: float | None = None, progress=print) -> list[Point]:
    """Run (or reuse) every repeat of the selected points (default: all); the others keep the runs
    they already have, so the summary covers every point done so far. Ray is started once, and
    only if a run is needed."""
    todo = []
    for p in points:
        sc = point_scenario(spec, p, dilation)
        run_it = selected is None or p in selected
        for i in range(1, spec.repeats + 1):
            d = out / p.name / f"r{i}"
            old = None if fresh and run_it else reusable(d, sc, progress)
            if old is not None:
                p.results.append(old)
                p.reused += 1
            elif run_it:
                todo.append((p, sc, d))
    if todo:
        _run_all(spec, todo, progress)
    for p in points:
        p.results.sort(key=lambda r: (r.get("run") or {}).get("started_at", ""))
    return points


def _run_all(spec: Spec, todo: list, progress) -> None:
    from cluster.actor_pool import reusing_actors
    from cluster.local_ray import local_ray
    from cluster.runner import RunOptions, run_scenario
    with local_ray(f"livemig-sweep-{spec.name}"), reusing_actors() as pool:
        for n, (point, sc, d) in enumerate(todo, 1):
            t = time.monotonic()
            result = _one_run(sc, d, f"{spec.path}#{point.name}", RunOptions, run_scenario)
            if interrupted(result):  # Ctrl-C reached the run: stop here, not at the next repeat
                raise SweepInterrupted
            point.results.append(result)
            progress(f"[{n}/{len(todo)}] {point.name} {d.name}: {result['status']} "
                     f"in {time.monotonic() - t:.1f} s")
        if pool is not None and todo:
            progress(f"actors: {pool.started} started, {pool.reused} built again in the processes of earlier runs")


def _one_run(sc, d: Path, source: str, RunOptions, run_scenario) -> dict:
    """One repeat into its directory; a crash is a failed result (with error.txt), not the sweep's end."""
    from cluster.results import write_result
    try:
        result = run_scenario(sc, RunOptions(out_dir=str(d)), source)
    except Exception as exc:  # noqa: BLE001 - one broken point must not lose the others
        d.mkdir(parents=True, exist_ok=True)
        (d / "error.txt").write_text(traceback.format_exc())
        result = {"scenario": sc.name, "status": "failed", "verified": False,
                  "stop_reason": f"{type(exc).__name__}: {exc}"}
    write_result(result, d)
    return result


# --- the summary ----------------------------------------------------------------------------------

def spread(values: list) -> dict | None:
    """{median, min, max, n} of the figures that exist, or None."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# What a point's figures are when its runs migrate several VMs (compare.figure).
AGGREGATE = ("several migrations per run: a point's figures are the whole run's (time from the first start to the "
             "last end, the longest downtime, iterations, bytes and CPU summed, the worst VM's degradation and "
             "non-response); `per_vm` holds each VM's own")


def per_vm(result: dict) -> dict[str, dict]:
    """A multi-migration result's migrations by name (`vm`, or `vm -> destination` when a VM
    migrates twice, as result.json's `app`); {} for one migration."""
    vms = [v for v in result.get("vms") or [] if isinstance(v, dict)]
    if len(vms) < 2:
        return {}
    names = [v.get("vm") for v in vms]
    return {(v.get("vm") if names.count(v.get("vm")) == 1 else f"{v.get('vm')} -> {v.get('destination')}"): v
            for v in vms}


def _figures(results: list[dict]) -> dict:
    figs = {}
    for label, key, _, _ in ROWS:
        s = spread([figure(r, key) for r in results])
        if s:
            figs[key] = {"label": label, **s}
    return figs


def summary(spec: Spec, points: list[Point]) -> dict:
    """sweep.json's content: per point its settings, runs and each figure's spread (result.json's units:
    the unit is in the key; degradation is a fraction); when the runs migrate several VMs, `per_vm`:
    each VM's own figures, and `aggregate` says what the point's figures are."""
    rows = []
    for p in points:
        row = {"point": p.name, "settings": p.settings, "runs": len(p.results), "reused": p.reused,
               "verified": sum(bool(r.get("verified")) for r in p.results), "figures": _figures(p.results)}
        by_vm = [per_vm(r) for r in p.results]
        names = list(dict.fromkeys(name for vms in by_vm for name in vms))
        if names:
            row["per_vm"] = {n: _figures([vms[n] for vms in by_vm if n in vms]) for n in names}
        rows.append(row)
    out = {"sweep": spec.name, "spec": str(spec.path), "base": str(spec.base), "repeats": spec.repeats,
           "vary": spec.vary, "points": rows}
    if any("per_vm" in r for r in rows):
        out["aggregate"] = AGGREGATE
    return out


def write_summary(summ: dict, out: Path) -> tuple[Path, Path]:
    from cluster.results import finite
    out.mkdir(parents=True, exist_ok=True)
    js = out / "sweep.json"
    js.write_text(json.dumps(finite(summ), indent=2, allow_nan=False) + "\n")
    cv = out / "sweep.csv"
    keys = [key for _, key, _, _ in ROWS]
    with cv.open("w", newline="") as f:
        w = csv.writer(f)
        # `vm`: empty for the point's figures (the whole run's when it migrates several VMs), else one VM's.
        w.writerow(["point", "vm", *summ["vary"], "runs", "verified"]
                   + [f"{k}_{s}" for k in keys for s in ("median", "min", "max")])
        for row in summ["points"]:
            head = [*(row["settings"][k] for k in summ["vary"]), row["runs"], row["verified"]]
            for vm, figs in [("", row["figures"]), *(row.get("per_vm") or {}).items()]:
                cells = [row["point"], vm, *head]
                for k in keys:
                    fig = figs.get(k)
                    cells += [fig[s] if fig else "" for s in ("median", "min", "max")]
                w.writerow(cells)
    return js, cv


def screen_table(summ: dict):
    """A rich table: a row per point, a column per figure: median (min-max)."""
    from rich.markup import escape
    from rich.table import Table
    marked = any((figs.get("saturation") or {}).get("max", 0) > SATURATION_LIMIT
                 for row in summ["points"] for figs in [row["figures"], *(row.get("per_vm") or {}).values()])
    t = Table(title=escape(f"sweep {summ['sweep']}: median (min-max) of {summ['repeats']} repeat(s)"),
              title_justify="left", caption_justify="left",
              caption=f"{SATURATED}: a repeat's saturation was over {SATURATION_LIMIT:.0%}; "
                      "its figures are not faithful (raise dilation)" if marked else "")
    t.add_column("point", no_wrap=True)
    for _, heading in SCREEN:
        t.add_column(heading, justify="right", no_wrap=True)
    t.add_column("verified", justify="right")
    if summ.get("aggregate"):
        t.caption = "\n".join(c for c in (t.caption, escape(f"{summ['aggregate']} (the indented rows).")) if c)
    for row in summ["points"]:
        whole = " (whole run)" if row.get("per_vm") else ""
        t.add_row(escape(row["point"] + whole), *_cells(row["figures"]), f"{row['verified']}/{row['runs']}")
        for vm, figs in (row.get("per_vm") or {}).items():
            t.add_row(escape(f"  {vm}"), *_cells(figs), "")
    return t


def _cells(figs: dict) -> list[str]:
    """median (min-max) of each SCREEN figure, in the table's units."""
    scale = {key: k for _, key, _, k in ROWS}
    cells = []
    for key, _ in SCREEN:
        fig, k = figs.get(key), scale[key]
        cells.append("-" if not fig else
                     f"{_num(fig['median'] * k)} ({_num(fig['min'] * k)}-{_num(fig['max'] * k)})"
                     + (f" {SATURATED}" if key == "saturation" and fig["max"] > SATURATION_LIMIT else ""))
    return cells


def _num(v: float) -> str:
    return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
