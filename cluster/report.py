"""`livemig report`: one or more runs as plots, in a page that needs nothing else.

Reads each run directory's `timeline.jsonl` and `result.json` (the timeline is
the data; cluster/timeline.py) and draws, with matplotlib, for one run:
bytes remaining and transfer rate per iteration (left out, with a note, when
no migration ran a pre-copy iteration: pure post-copy), the dirty rate against
the transfer rate, the guest's operations per second with the migration's
phases shaded (the shape of the vMotion seed's Figures 4, 5 and 7; the line
breaks where the guest, blocked on post-copy faults, left no sample), for a
migration that switched to post-copy its faults and blocktime over time and
its fault-latency histogram (QEMU's postcopy-latency-dist), link use and CPU
per host; for several runs, the same time series overlaid, aligned at each
run's first migration start. The figures are written as PNG files and
embedded as base64 in one HTML page, which fetches nothing when opened, with
the results table (one column per run, ratios to the first run, the rows of
`livemig compare`).
"""
from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from cluster.compare import ROWS, figure, shape_problem, strict_json

PAGE = 4096
MIB = 2**20  # plots and tables in MiB and MiB/s, as the CLI's tables and result.json's *_mbytes_s
# Shades by phase; pre-copy iterations alternate between two blues.
PHASE_COLOURS = {"setup": "#d9d9d9", "stop-and-copy": "#f4a582", "switch-over": "#ca0020",
                 "postcopy-switch": "#b2abd2", "postcopy-active": "#8073ac"}
PRECOPY_COLOURS = ("#d1e5f0", "#92c5de")
# Events that end a migration, whichever comes last (post-copy ends when the source is released).
END_EVENTS = ("switched-over", "source-released", "cancelled", "stays-on-source", "aborted", "failed")


class ReportError(Exception):
    """A run directory that cannot be reported (one line for the user)."""


@dataclass
class Run:
    """One run directory: its name on the page, result.json and timeline records."""
    name: str
    path: Path
    result: dict
    records: list[dict]

    def of(self, kind: str, **match) -> list[dict]:
        return [r for r in self.records if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]

    def events(self, event: str, **match) -> list[dict]:
        return [r for r in self.of("event", **match) if r["event"] == event]

    @property
    def t0(self) -> float:
        """The first migration's start (emulated s): runs are overlaid from there."""
        starts = [r["t"] for r in self.events("migration-start")]
        return min(starts, default=0.0)

    def migrations(self) -> list[tuple[str, int]]:
        return [(r["vm"], r["migration"]) for r in self.events("migration-start")]


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding result.json) from the arguments; a directory without
    one (a sweep's) stands for every run below it, in name order."""
    out: list[Path] = []
    for p in paths:
        if (p / "result.json").is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(q.parent for q in p.rglob("result.json"))
            ordered = [d for d in _sweep_order(p) if d in found]
            below = ordered + [d for d in found if d not in ordered]
            if not below:
                raise ReportError(f"{p}: no result.json in it or below it; give run directories (livemig run --out)")
            out.extend(below)
        elif p.exists():
            raise ReportError(f"{p}: is a file, not a run directory; give run directories (livemig run --out)")
        else:
            raise ReportError(f"{p}: no such directory; give run directories (livemig run --out)")
    return out


def _sweep_order(d: Path) -> list[Path]:
    """A sweep directory's runs in its points' order (sweep.json), repeats in order."""
    try:
        points = strict_json((d / "sweep.json").read_text())["points"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [r.parent for p in points for r in sorted((d / p["point"]).glob("r*/result.json"),
                                                     key=lambda q: int(q.parent.name[1:] or 0))]


def load_run(path: Path, base: Path | None = None, warn=print, lenient: bool = False) -> Run:
    """A run directory's result and timeline; ReportError when either is missing or unreadable.
    `lenient`: malformed timeline records are left out with one warning (see `read_timeline`)."""
    try:
        result = strict_json((path / "result.json").read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path / 'result.json'}: unreadable ({exc})") from None
    problem = shape_problem(result)
    if problem:
        raise ReportError(f"{path / 'result.json'}: not a result.json ({problem})")
    tl = path / "timeline.jsonl"
    if not tl.is_file():
        raise ReportError(f"{tl}: missing; the report is drawn from the timeline a run writes with --out")
    records = read_timeline(tl, warn, lenient)
    name = str(path.relative_to(base)) if base and path != base and path.is_relative_to(base) else path.name
    return Run(name, path, result, records)


def load_runs(paths: list[Path], warn=print) -> list[Run]:
    """The runs named or found below the arguments. A run found below a directory (a sweep's)
    that has no timeline, or an empty one (it crashed before its first record), or an unreadable
    result.json, is left out with a warning, and its malformed timeline records are left out with
    one warning naming the file; for a run named itself each of these is an error."""
    dirs = find_runs(paths)
    base = paths[0] if len(paths) == 1 and paths[0].is_dir() and len(dirs) > 1 else None
    named = {p.resolve() for p in paths}
    runs = []
    for d in dirs:
        if d.resolve() not in named and not (d / "timeline.jsonl").is_file():
            warn(f"report: {d} left out: no timeline.jsonl ({_status(d)})")
            continue
        found = d.resolve() not in named
        try:
            run = load_run(d, base, warn, lenient=found)
        except ReportError as exc:
            if not found:
                raise
            warn(f"report: {d} left out: {exc}")
            continue
        if not run.records:  # the run ended before its first sample: nothing to draw
            if d.resolve() in named:
                raise ReportError(f"{d / 'timeline.jsonl'}: empty, nothing to draw ({_status(d)})")
            warn(f"report: {d} left out: its timeline.jsonl is empty ({_status(d)})")
            continue
        runs.append(run)
    if not runs:
        raise ReportError(f"{paths[0]}: none of its runs has a timeline.jsonl with records; nothing to draw")
    return runs


def _status(d: Path) -> str:
    try:
        r = strict_json((d / "result.json").read_text())
        return f"{r.get('status')}: {r.get('stop_reason', '')}"
    except (OSError, ValueError):
        return "unreadable result.json"


# --- the timeline's records ---------------------------------------------------------------------

# What the plots read of each record (cluster/timeline.py writes them): numbers that must be numbers,
# names that must be present. Records of other kinds and other events are kept and not read.
NUMBERS = {"guest": ("ops_per_s",), "link": ("throughput_bytes_s",), "migration": ("remaining", "transfer_rate")}
NAMES = {"guest": ("vm",), "host": ("host",), "link": ("link",), "migration": ("vm", "migration"), "event": ("event",)}
EVENT_NUMBERS = {"iteration": ("iteration", "remaining", "bytes", "duration_s", "dirty_pages_rate")}
EVENT_NAMES = {"migration-start": ("vm", "migration"), "phase": ("vm", "migration"), "iteration": ("vm", "migration")}


def read_timeline(tl: Path, warn=print, lenient: bool = False) -> list[dict]:
    """timeline.jsonl's records, each checked for what the plots read; ReportError naming the file's
    line otherwise. A last line cut short (a run killed while writing) is left out with a warning.
    `lenient` (a run among a sweep's): every malformed record is left out instead, with one warning
    line naming the file, how many and the first."""
    try:
        lines = tl.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{tl}: unreadable ({exc})") from None
    records, bad = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines) and not bad:
                warn(f"report: {tl}:{n}: last line cut short, left out ({exc.msg})")
                continue
            problem = f"not JSON ({exc.msg} at column {exc.colno})"
        else:
            problem = record_problem(rec)
        if problem and not lenient:
            raise ReportError(f"{tl}:{n}: {problem}")
        if problem:
            bad.append(f"{tl}:{n}: {problem}")
        else:
            records.append(rec)
    if bad:
        warn(f"report: {len(bad)} malformed record(s) left out, the first {bad[0]}")
    return records


def record_problem(rec) -> str | None:
    """What is wrong with one timeline record for the report, or None."""
    if not isinstance(rec, dict):
        return f"a record must be a JSON object, not {type(rec).__name__}"
    kind = rec.get("kind")
    if not isinstance(kind, str):
        return "a record needs a 'kind' (event, guest, host, link, migration)"
    event = rec.get("event") if kind == "event" else None
    numbers = ("t", *NUMBERS.get(kind, ()), *EVENT_NUMBERS.get(event, ()))
    names = (*NAMES.get(kind, ()), *EVENT_NAMES.get(event, ()))
    missing = [k for k in (*numbers, *names) if k not in rec]
    if missing:
        return f"{kind} record{f' {event!r}' if event else ''} without {missing[0]!r}"
    bad = next((k for k in numbers if type(rec[k]) not in (int, float)), None)
    if bad:
        return f"{kind} record: {bad!r} must be a number (got {rec[bad]!r})"
    bad = next((k for k in names if isinstance(rec[k], (dict, list))), None)
    if bad:
        return f"{kind} record: {bad!r} must be a name or number (got {rec[bad]!r})"
    if kind == "host" and not isinstance(rec.get("cpu_cores"), dict):
        return "host record: 'cpu_cores' must be an object of stage -> cores"
    return None


# --- phases ---------------------------------------------------------------------------------

def phase_spans(run: Run, vm: str, migration: int) -> list[tuple[float, float, str]]:
    """(start, end, label) of each phase of one migration, in emulated seconds: the phase
    events in order, pre-copy numbered by iteration, each until the next; the last one before
    the VM's restart on the destination ends there, and the switch-over runs from the restart
    to the switch; a phase after the restart (post-copy) runs to the migration's end."""
    evs = sorted(run.events("phase", vm=vm, migration=migration), key=lambda r: r["t"])
    ends = [r["t"] for e in END_EVENTS for r in run.events(e, vm=vm, migration=migration)]
    started = run.events("vm-started", vm=vm, migration=migration)
    switched = run.events("switched-over", vm=vm, migration=migration)
    t_end = max(ends, default=evs[-1]["t"] if evs else 0.0)
    t_restart = started[0]["t"] if started else t_end
    spans = []
    for i, e in enumerate(evs):
        label = f"precopy {e.get('iteration', 0)}" if e["phase"] == "precopy" else e["phase"]
        nxt = evs[i + 1]["t"] if i + 1 < len(evs) else (t_restart if e["t"] < t_restart else t_end)
        spans.append((e["t"], max(nxt, e["t"]), label))
    if started and switched and switched[0]["t"] > t_restart:
        spans.append((t_restart, switched[0]["t"], "switch-over"))
    return sorted(spans)


def _shade(ax, spans, t0: float) -> None:
    seen = set()
    for start, end, label in spans:
        if label.startswith("precopy"):
            n = int(label.split()[1] or 0)
            colour, key = PRECOPY_COLOURS[n % 2], "precopy"
        else:
            colour, key = PHASE_COLOURS.get(label, "#e0e0e0"), label
        ax.axvspan(start - t0, end - t0, color=colour, alpha=0.6, lw=0,
                   label=None if key in seen else key)
        seen.add(key)


# --- one run --------------------------------------------------------------------------------

def _iterations(run: Run, vm: str, mig: int) -> list[dict]:
    return sorted(run.events("iteration", vm=vm, migration=mig), key=lambda r: r["iteration"])


def plot_iterations(run: Run):
    """Per migration: bytes remaining after each iteration and its transfer rate (bars)."""
    plt = _plt()
    migs = run.migrations()
    fig, axes = plt.subplots(len(migs), 2, figsize=(10, 2.8 * len(migs)), squeeze=False)
    for (vm, mig), (left, right) in zip(migs, axes):
        its = _iterations(run, vm, mig)
        n = [r["iteration"] for r in its]
        left.bar(n, [r["remaining"] / MIB for r in its], color="#4393c3")
        left.set(title=f"{vm}: bytes remaining after each iteration", xlabel="iteration", ylabel="MiB")
        right.bar(n, [r["bytes"] / r["duration_s"] / MIB if r["duration_s"] else 0 for r in its], color="#d6604d")
        right.set(title=f"{vm}: transfer rate of each iteration", xlabel="iteration", ylabel="MiB/s")
        for ax in (left, right):
            ax.set_xticks(n)
            ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1.0))  # an idle VM's zero bars too
    return _done(fig)


def plot_dirty_vs_transfer(run: Run):
    """Transfer rate over time (samples) against each iteration's dirty rate (bytes/s)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    t0 = run.t0
    for vm, mig in run.migrations():
        s = run.of("migration", vm=vm, migration=mig)
        line, = ax.plot([r["t"] - t0 for r in s], [r["transfer_rate"] / MIB for r in s], label=f"{vm} transfer")
        its = [r for r in _iterations(run, vm, mig) if r.get("dirty_pages_rate") is not None]
        if its:  # each iteration's dirty rate over the iteration it was measured in
            ax.hlines([r["dirty_pages_rate"] * PAGE / MIB for r in its], [r["t"] - r["duration_s"] - t0 for r in its],
                      [r["t"] - t0 for r in its], colors=line.get_color(), linestyles="--", lw=2,
                      label=f"{vm} dirty (per iteration)")
    ax.set(title="Dirty rate against transfer rate", xlabel="emulated s since migration start", ylabel="MiB/s")
    ax.legend(fontsize="small")
    return _done(fig)


def plot_guest(run: Run):
    """Guest operations per second over time, one panel per migration, phases shaded."""
    plt = _plt()
    migs = run.migrations()
    fig, axes = plt.subplots(len(migs), 1, figsize=(10, 2.8 * len(migs)), squeeze=False)
    t0 = run.t0
    for (vm, mig), (ax,) in zip(migs, axes):
        _shade(ax, phase_spans(run, vm, mig), t0)
        g = run.of("guest", vm=vm)
        ts, ys = break_gaps([r["t"] - t0 for r in g], [r["ops_per_s"] for r in g])
        ax.plot(ts, ys, color="black", lw=1.2, label="ops/s")
        ax.set(title=f"{vm}: guest operations per second", xlabel="emulated s since migration start",
               ylabel="ops/s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small", loc="lower left", ncol=4)
    return _done(fig)


def break_gaps(ts: list[float], ys: list[float], factor: float = 1.5) -> tuple[list[float], list[float]]:
    """The samples with a NaN point inserted wherever two are further apart than `factor` times
    the median interval (a guest blocked on post-copy faults leaves none), so a line breaks there
    instead of being drawn straight across."""
    if len(ts) < 3:
        return list(ts), list(ys)
    gaps = sorted(b - a for a, b in pairwise(ts))
    limit = factor * gaps[len(gaps) // 2]
    out_t, out_y = [ts[0]], [ys[0]]
    for (a, b), y in zip(pairwise(ts), ys[1:]):
        if b - a > limit:
            out_t.append((a + b) / 2)
            out_y.append(float("nan"))
        out_t.append(b)
        out_y.append(y)
    return out_t, out_y


def postcopy_migrations(run: Run) -> list[tuple[str, int, dict]]:
    """(vm, migration, its result's `postcopy` section) of each migration that switched to post-copy."""
    per_vm = run.result.get("vms") or [run.result]
    out = []
    for vm, mig in run.migrations():
        res = next((v for v in per_vm if v.get("vm") == vm and v.get("migration", mig) == mig), {})
        pc = res.get("postcopy") or {}
        if pc.get("switched") or pc.get("faults") is not None:
            out.append((vm, mig, pc))
    return out


def plot_postcopy(run: Run):
    """Per migration that switched to post-copy: faults per second and the share of time the
    guest was blocked (blocktime) in each sample interval, phases shaded; and the fault-latency
    histogram (power-of-two buckets, QEMU's postcopy-latency-dist)."""
    plt = _plt()
    migs = postcopy_migrations(run)
    fig, axes = plt.subplots(len(migs), 2, figsize=(10, 3.0 * len(migs)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    t0 = run.t0
    for (vm, mig, pc), (left, right) in zip(migs, axes):
        _shade(left, [sp for sp in phase_spans(run, vm, mig) if sp[2].startswith("postcopy")], t0)
        g = [r for r in run.of("guest", vm=vm) if "postcopy_faults" in r]
        ts, rates, blocked = _postcopy_intervals(g)
        left.bar([t - t0 for t in ts[1:]], rates, width=[-(b - a) * 0.95 for a, b in pairwise(ts)],
                 align="edge", color="#1b7837", label="faults/s")  # each over the interval it counts
        if len(g) < 2:
            left.text(0.5, 0.5, "no fault samples in the timeline", transform=left.transAxes, ha="center")
        left.set(title=f"{vm}: post-copy faults ({pc.get('faults', 0):.0f}) and blocktime "
                       f"({pc.get('blocktime_ms', 0):.0f} ms)", xlabel="emulated s since migration start",
                 ylabel="faults/s")
        twin = left.twinx()
        if blocked:  # each value over the interval it measures
            twin.plot([t - t0 for t in ts], blocked[:1] + blocked, color="#e66101", drawstyle="steps-pre",
                      label="blocked (% of interval)")
        twin.set(ylabel="% of time blocked", ylim=(0, 105))
        left.set_ylim(bottom=0)
        handles = left.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        left.legend(handles=handles, fontsize="small", loc="upper right")
        _latency_histogram(right, vm, pc)
    return _done(fig)


def _postcopy_intervals(g: list[dict]) -> tuple[list[float], list[float], list[float]]:
    """Sample times, faults per emulated second and % of time blocked in each interval, from the
    guest records' cumulative `postcopy_faults` and `postcopy_blocktime_s`."""
    ts = [r["t"] for r in g]
    rates, blocked = [], []
    for a, b in pairwise(g):
        dt = b["t"] - a["t"]
        rates.append((b["postcopy_faults"] - a["postcopy_faults"]) / dt if dt > 0 else 0.0)
        blocked.append(min(100.0, 100 * (b["postcopy_blocktime_s"] - a["postcopy_blocktime_s"]) / dt) if dt > 0 else 0.0)
    return ts, rates, blocked


def _latency_histogram(ax, vm: str, pc: dict) -> None:
    """Bucket N of `postcopy_latency_dist` holds faults resolved in [2^N, 2^(N+1)) us: bars at
    their lower bounds, in ms, on a log axis; p50 and p99 marked."""
    dist = pc.get("postcopy_latency_dist") or []
    used = [n for n, c in enumerate(dist) if c]
    if used:
        lo, hi = used[0], used[-1] + 1
        edges = [2.0 ** n / 1000 for n in range(lo, hi + 1)]
        ax.bar(edges[:-1], dist[lo:hi], width=[b - a for a, b in pairwise(edges)], align="edge",
               color="#b2abd2", edgecolor="#5e3c99", label="faults")
        ax.set_xscale("log", base=2)
    for key, style in (("latency_p50_us", "--"), ("latency_p99_us", ":")):
        if pc.get(key):
            ax.axvline(pc[key] / 1000, color="black", ls=style, label=f"{key.split('_')[1]} {pc[key] / 1000:.1f} ms")
    ax.set(title=f"{vm}: fault latency", xlabel="latency (ms, emulated)", ylabel="faults")
    ax.legend(fontsize="small")


def plot_links(run: Run):
    """Throughput of every link as a share of its capacity."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.0))
    t0 = run.t0
    for link in sorted({r["link"] for r in run.of("link")}):
        s = run.of("link", link=link)
        ax.plot([r["t"] - t0 for r in s], [100 * r["throughput_bytes_s"] / r["capacity_bytes_s"]
                                          if r.get("capacity_bytes_s") else 0 for r in s], label=link)
    ax.set(title="Link use", xlabel="emulated s since migration start", ylabel="% of capacity")
    ax.set_ylim(0, 105)
    ax.legend(fontsize="small")
    return _done(fig)


def plot_cpu(run: Run):
    """Emulated cores busy per host, stacked by pipeline stage."""
    plt = _plt()
    hosts = sorted({r["host"] for r in run.of("host")})
    fig, axes = plt.subplots(len(hosts), 1, figsize=(10, 2.4 * len(hosts)), squeeze=False)
    t0 = run.t0
    for host, (ax,) in zip(hosts, axes):
        s = run.of("host", host=host)
        stages = sorted({k for r in s for k in r["cpu_cores"]})
        if stages:
            ax.stackplot([r["t"] - t0 for r in s], *[[r["cpu_cores"].get(k, 0.0) for r in s] for k in stages],
                         labels=stages)
            ax.legend(fontsize="small", loc="upper right")
        ax.set(title=f"{host}: CPU", xlabel="emulated s since migration start", ylabel="cores")
    return _done(fig)


# --- several runs -----------------------------------------------------------------------------

def plot_overlay(runs: list[Run]):
    """Bytes remaining, transfer rate, guest ops/s and link throughput of every run, overlaid."""
    plt = _plt()
    fig, axes = plt.subplots(4, 1, figsize=(10, 11))
    for run, style in zip(runs, _styles(runs)):
        t0 = run.t0
        m = run.of("migration")
        for i, (vm, mig) in enumerate(run.migrations()):
            s = [r for r in m if r["vm"] == vm and r["migration"] == mig]
            axes[0].plot([r["t"] - t0 for r in s], [r["remaining"] / MIB for r in s],
                         label=run.name if i == 0 else None, **style)
            axes[1].plot([r["t"] - t0 for r in s], [r["transfer_rate"] / MIB for r in s], **style)
        for vm in sorted({r["vm"] for r in run.of("guest")}):
            g = run.of("guest", vm=vm)
            axes[2].plot([r["t"] - t0 for r in g], [r["ops_per_s"] for r in g], **style)
        links = run.of("link")
        for link in sorted({r["link"] for r in links}):
            s = [r for r in links if r["link"] == link]
            axes[3].plot([r["t"] - t0 for r in s], [r["throughput_bytes_s"] / MIB for r in s], **style)
    for ax, (title, unit) in zip(axes, [("Bytes remaining", "MiB"), ("Transfer rate", "MiB/s"),
                                        ("Guest operations per second", "ops/s"), ("Link throughput", "MiB/s")]):
        ax.set(title=title, xlabel="emulated s since migration start", ylabel=unit)
    axes[0].legend(fontsize="small", ncol=2)
    return _done(fig)


def _group(name: str) -> str:
    """A run's sweep point (`point/r2` -> `point`), or its own name."""
    return name.rsplit("/", 1)[0] if "/" in name else name


def plot_iterations_overlay(runs: list[Run]):
    """Every run's migrations: bytes remaining after each iteration, and each iteration's rate."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for run, style in zip(runs, _styles(runs)):
        for i, (vm, mig) in enumerate(run.migrations()):
            its = _iterations(run, vm, mig)
            n = [r["iteration"] for r in its]
            left.plot(n, [r["remaining"] / MIB for r in its], marker="o", label=None if i else run.name, **style)
            right.plot(n, [r["bytes"] / r["duration_s"] / MIB if r["duration_s"] else 0 for r in its],
                       marker="o", **style)
    left.set(title="Bytes remaining after each iteration", xlabel="iteration", ylabel="MiB")
    right.set(title="Transfer rate of each iteration", xlabel="iteration", ylabel="MiB/s")
    from matplotlib.ticker import MaxNLocator
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are counted, not measured
    left.legend(fontsize="x-small", ncol=2)
    return _done(fig)


def plot_sweep(summ: dict):
    """A sweep's points: median and min-max of each repeat's figures (sweep.json), as error bars."""
    plt = _plt()
    shown = [("total_time_s", "Migration time", "s", 1.0), ("downtime_ms", "Downtime", "ms", 1.0),
             ("memory_bytes_sent", "Memory sent", "GiB", 2**-30), ("avg_throughput_mbytes_s", "Throughput", "MiB/s", 1.0)]
    points = summ["points"]
    fig, axes = plt.subplots(1, len(shown), figsize=(12, 3.4))
    x = list(range(len(points)))
    for ax, (key, title, unit, k) in zip(axes, shown):
        figs = [p["figures"].get(key) for p in points]
        med = [f["median"] * k if f else float("nan") for f in figs]
        low = [(f["median"] - f["min"]) * k if f else 0 for f in figs]
        high = [(f["max"] - f["median"]) * k if f else 0 for f in figs]
        ax.errorbar(x, med, yerr=[low, high], fmt="o-", capsize=4)
        ax.set(title=title, ylabel=unit)
        ax.set_xticks(x, [p["point"] for p in points], rotation=30, ha="right", fontsize="small")
        ax.set_ylim(bottom=0)
    several = " (several VMs per run: each run's whole figures)" if summ.get("aggregate") else ""
    fig.suptitle(f"sweep {summ['sweep']}: median and min-max of {summ['repeats']} repeat(s){several}")
    return _done(fig)


def _styles(runs: list[Run]) -> list[dict]:
    """A colour per sweep point (or run), a line style per repeat."""
    groups = list(dict.fromkeys(_group(run.name) for run in runs))
    seen: dict[str, int] = {}
    out = []
    for run in runs:
        g = _group(run.name)
        out.append({"color": f"C{groups.index(g) % 10}", "ls": ("-", "--", ":", "-.")[seen.get(g, 0) % 4]})
        seen[g] = seen.get(g, 0) + 1
    return out


# --- tables ---------------------------------------------------------------------------------

def columns(runs: list[Run]) -> list[tuple[str, dict]]:
    """The results table's columns: one per run, or for one run of several migrations, one per migration."""
    if len(runs) == 1 and len(runs[0].result.get("vms") or []) > 1:
        return [(f"{v['vm']} -> {v.get('destination', '')}", v) for v in runs[0].result["vms"]]
    return [(r.name, r.result) for r in runs]


def table_rows(cols: list[tuple[str, dict]]) -> list[dict]:
    """The rows of `livemig compare` for every column (name, result): {metric, unit, values,
    ratios to the first column}."""
    results = [r for _, r in cols]
    out = []
    for label, key, unit, k in ROWS:
        values = [figure(r, key) for r in results]
        if all(v is None for v in values):
            continue
        values = [None if v is None else v * k for v in values]
        base = values[0]
        ratios = [v / base if v is not None and base else None for v in values]
        out.append({"metric": label, "unit": unit, "values": values, "ratios": ratios})
    for window in ("before", "during", "after"):  # the guest's slowdown, as guestperf shows it
        values = [_app(r).get(f"ops_per_s_{window}") for r in results]
        if any(v is not None for v in values):
            base = values[0]
            out.append({"metric": f"Guest ops/s {window}", "unit": "ops/s", "values": values,
                        "ratios": [v / base if v is not None and base else None for v in values]})
    out.append({"metric": "Verified", "unit": "", "values": [r.get("verified") for r in results], "ratios": None})
    return out


def _app(result: dict) -> dict:
    """The application figures: the result's own, or its first migration's."""
    app = result.get("app") or {}
    if "ops_per_s_before" not in app and result.get("vms"):
        app = result["vms"][0].get("app") or {}
    return app


def iteration_table(run: Run) -> str:
    """Every migration's iterations (QEMU's figures per pass), as an HTML table."""
    lines = ["<table><tr><th>VM</th><th>iteration</th><th>pages</th><th>MiB sent</th><th>duration s</th>"
             "<th>MiB/s</th><th>dirty pages/s</th><th>MiB remaining</th></tr>"]
    for vm, mig in run.migrations():
        for r in _iterations(run, vm, mig):
            rate = r["bytes"] / r["duration_s"] / MIB if r.get("duration_s") else None
            cells = [r["iteration"], r.get("pages"), r["bytes"] / MIB, r.get("duration_s"), rate,
                     r.get("dirty_pages_rate"), r["remaining"] / MIB]
            lines.append(f"<tr><td>{html.escape(vm)}</td>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"


def html_table(runs: list[Run]) -> str:
    cols = columns(runs)
    heads = "".join(f"<th>{html.escape(name)}</th>" for name, _ in cols)
    lines = [f"<table><tr><th>metric</th><th>unit</th>{heads}</tr>"]
    for row in table_rows(cols):
        cells = []
        for i, v in enumerate(row["values"]):
            ratio = row["ratios"][i] if row["ratios"] and i else None
            cells.append(f"<td>{_cell(v)}" + (f" <small>(&times;{ratio:.2f})</small>" if ratio is not None else "")
                         + "</td>")
        lines.append(f"<tr><td>{html.escape(row['metric'])}</td><td>{row['unit']}</td>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


# --- the page ----------------------------------------------------------------------------------

def figures(runs: list[Run], sweep: dict | None = None) -> list[tuple[str, str, bytes]]:
    """(file stem, caption, PNG bytes) of every plot of the report; with a sweep's
    summary (sweep.json), its points' medians and spread first."""
    if len(runs) == 1:
        run = runs[0]
        if not run.migrations():  # nothing migrated: the table says why
            return []
        plots = [("iterations", "Bytes remaining and transfer rate per iteration", plot_iterations),
                 ("dirty-vs-transfer", "Dirty rate against transfer rate", plot_dirty_vs_transfer),
                 ("guest", "Guest operations per second, phases shaded (gaps: blocked on faults)", plot_guest),
                 ("postcopy", "Post-copy: faults, blocktime and fault latency", plot_postcopy),
                 ("links", "Link use", plot_links), ("cpu", "CPU per host", plot_cpu)]
        left_out = set(omitted_plots(run))
        return [(stem, caption, draw(run)) for stem, caption, draw in plots if stem not in left_out]
    out = [("sweep", "The sweep's points: median and min-max", plot_sweep(sweep))] if sweep else []
    return out + [("overlay", f"{len(runs)} runs overlaid", plot_overlay(runs)),
                  ("iterations", "Each run's iterations (every migration)", plot_iterations_overlay(runs))]


def omitted_plots(run: Run) -> dict[str, str]:
    """Plots left out of one run's page, with why (said on the page)."""
    out = {}
    if not any(_iterations(run, vm, mig) for vm, mig in run.migrations()):
        why = "No pre-copy iteration ran (pure post-copy sends every page after the switch), "
        out["iterations"] = why + "so there is no per-iteration plot; the post-copy plot shows its faults instead."
    if not postcopy_migrations(run):
        out["postcopy"] = ""  # nothing switched to post-copy: nothing to say
    return out


def load_sweep(paths: list[Path]) -> dict | None:
    """sweep.json of a single sweep directory given, or None (none there); ReportError (one line)
    for one that is not JSON or holds NaN or Infinity, which `livemig sweep` never writes."""
    if len(paths) != 1:
        return None
    path = paths[0] / "sweep.json"
    try:
        summ = strict_json(path.read_text())
    except OSError:
        return None
    except ValueError as exc:  # json.JSONDecodeError too
        raise ReportError(f"{path}: not a sweep.json ({exc})") from None
    return summ if isinstance(summ, dict) and summ.get("points") else None


PLOT_STEMS = ("iterations", "dirty-vs-transfer", "guest", "postcopy", "links", "cpu", "sweep", "overlay")


def check_out(target: Path) -> Path:
    """The page's path once it is known the page and its PNG files can be written there (its
    directory made if missing); ReportError (one line) otherwise, before anything is drawn."""
    if target.is_dir():
        raise ReportError(f"--out: {target} is a directory; give the page's file name, e.g. {target / 'report.html'}")
    if target.suffix.lower() not in (".html", ".htm"):  # x.png would get the page, beside x-guest.png ...
        raise ReportError(f"--out: {target} does not end in .html; the page is HTML (its PNG files go beside it), "
                          f"e.g. {target.with_suffix('.html')}")
    blocker = next((p for p in target.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ReportError(f"--out: {blocker} is a file, not a directory")
    taken = [q for stem in PLOT_STEMS if (q := target.with_name(f"{target.stem}-{stem}.png")).is_dir()]
    if taken:
        raise ReportError(f"--out: {taken[0]} is a directory; the report's PNG files go there")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".livemig-report-"):
            pass
    except OSError as exc:
        raise ReportError(f"--out: cannot write in {target.parent}: {exc.strerror or exc}") from None
    return target


def render(runs: list[Run], out_html: Path, sweep: dict | None = None) -> dict:
    """Write the page and its PNG files (next to it, `<stem>-<plot>.png`); returns
    {html, pngs, bytes}."""
    out_html.parent.mkdir(parents=True, exist_ok=True)
    figs = figures(runs, sweep if len(runs) > 1 else None)
    pngs, parts = [], []
    for stem, caption, png in figs:
        p = out_html.with_name(f"{out_html.stem}-{stem}.png")
        p.write_bytes(png)
        pngs.append(p)
        data = base64.b64encode(png).decode()
        parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if len(runs) == 1 and runs[0].migrations():
        parts += [f'<p class="note">{html.escape(why)}</p>' for why in omitted_plots(runs[0]).values() if why]
    out_html.write_text(_page(runs, parts))
    return {"html": out_html, "pngs": pngs, "bytes": out_html.stat().st_size}


def _page(runs: list[Run], parts: list[str]) -> str:
    title = runs[0].name if len(runs) == 1 else f"{len(runs)} runs"
    iterations = f"<h2>Iterations</h2>\n{iteration_table(runs[0])}\n" if len(runs) == 1 else ""
    sub = "; ".join(f"{html.escape(r.name)}: {html.escape(str(r.result.get('scenario')))} "
                    f"({html.escape(str(r.result.get('status')))}, "
                    f"{html.escape(str((r.result.get('run') or {}).get('started_at', '')))})" for r in runs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>livemig report: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #bbb;padding:2px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left;white-space:nowrap}}img{{max-width:100%}}figure{{margin:1em 0}}
.wide{{overflow-x:auto}}</style>
</head><body>
<h1>livemig report: {html.escape(title)}</h1>
<p>{sub}</p>
<p>Emulated units throughout. Ratios are to the first column.</p>
<h2>Results</h2>
<div class="wide">{html_table(runs)}</div>
{iterations}<h2>Plots</h2>
{''.join(parts)}
</body></html>
"""


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _done(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    _plt().close(fig)
    return buf.getvalue()
