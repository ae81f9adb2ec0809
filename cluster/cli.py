"""The `livemig` command line.

  livemig run SCENARIO        emulate a migration on a local Ray cluster
  livemig predict SCENARIO    the analytic model's figures, instantly
  livemig validate SCENARIO   check a scenario file
  livemig sweep SPEC          vary one or two settings, N repeats: medians and spread
  livemig report RUN...       plots of runs in one HTML page (and PNG files)
  livemig compare A B         two results side by side, with the paper's ratios
  livemig reproduce SUITE     run a paper's experiment pairs (or the model grid) and compare
  livemig list                the shipped scenarios
  livemig techniques          the migration techniques and their options
  livemig bench pipeline|link|crossnode|codec|lru|disk|capacity   figures of this machine

Exit codes: 0 done (and verified), 1 the migration failed or was aborted,
2 bad input (one line on stderr naming file, field and what is allowed).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import tomllib
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from cluster.scenario import ScenarioError, load_scenario

def _readable_help_types() -> None:
    """typer (0.2x, with click 8.2+) shows a value type for every option, `<bool>` for a flag,
    which takes no value: `--help` then reads as if `--quiet <bool>` were expected. Flags show none.
    An argument that takes several values shows Python's `<list[Path]>`: it shows its values'
    type as a single one does, repeated (`<path>...`)."""
    shown = typer.core.TyperOption.display_type_rich
    shown_argument = typer.core.TyperArgument.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    def argument_type_rich(self, ctx):
        t = shown_argument(self, ctx)
        if self.nargs == 1 or not t or not t.startswith("<list[") or not t.endswith("]>"):
            return t
        return f"<{t[len('<list['):-len(']>')].lower()}>..."
    typer.core.TyperOption.display_type_rich = display_type_rich
    typer.core.TyperArgument.display_type_rich = argument_type_rich


_readable_help_types()
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="livemig: a live VM migration emulator. Real bytes move between Ray actors over shaped links.")
bench_app = typer.Typer(no_args_is_help=True, help="Measure what this machine does (prints JSON).")
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)
SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"


def _fail_input(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)
    raise typer.Exit(2)


def _load(path: Path):
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        _fail_input(exc.lines)


def _summary_table(title: str, columns: list[tuple[str, dict]]) -> Table:
    from cluster.results import table_rows
    t = Table(title=title, title_justify="left")
    t.add_column("Metric")
    for name, _ in columns:
        t.add_column(name, justify="right")
    for label, cells in table_rows([r for _, r in columns]):
        t.add_row(label, *cells)
    return t


@app.command()
def run(
    scenario: Path = typer.Argument(..., help="Scenario TOML file (see `livemig list`)."),
    out_dir: Path = typer.Option(None, "--out", help="Directory for result.json and timeline.jsonl (default: runs/<scenario name>)."),
    dilation: Optional[float] = typer.Option(None, help="Real seconds per emulated second, overriding the scenario's emulation.dilation (default: the "
                                            "scenario's). Raise it when the result reports saturation."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print no progress bar and no table, only the result path (default: both are printed)."),
    address: Optional[str] = typer.Option(None, help="Join a running Ray cluster (HEAD:6379, or 'auto') instead of "
                                          "starting one (default: a local Ray for this run); hosts with ray_node run on the nodes "
                                          "offering that resource."),
    auth_token_file: Optional[str] = typer.Option(None, help="With --address: the cluster's token file (Ray's "
                                                  "RAY_AUTH_TOKEN_PATH); default: RAY_AUTH_TOKEN, or ~/.ray/auth_token."),
    dashboard: bool = typer.Option(False, help="Start the Ray dashboard on 127.0.0.1 and print its address; it asks "
                                   "for the token in ~/.ray/auth_token."),
    dashboard_port: int = typer.Option(8265, help="The Ray dashboard's TCP port, with --dashboard."),
    metrics_port: Optional[int] = typer.Option(None, help="Serve Prometheus metrics on 127.0.0.1:PORT (a TCP port) during the run (default: no "
                                                "metrics served)."),
    linger: float = typer.Option(0.0, help="Keep the metrics exporter up this many real seconds after the run, "
                                 "so Prometheus scrapes the final figures (with --metrics-port)."),
    inject_fault: Optional[str] = typer.Option(None, hidden=True, help="Testing: 'corrupt-page' flips a byte in transit; "
                                                "'memory-server-refuses': a sub-host's memory server does not start."),
    interval: float = typer.Option(0.1, help="The timeline's sampling interval (timeline.jsonl), in emulated seconds."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print where the wall clock went, phase by phase (default: not printed)."),
) -> None:
    """Emulate the scenario's migrations and print the paper-style summary; writes result.json and timeline.jsonl."""
    started_s = _process_age_s()  # the interpreter's start and the imports, before any work
    sc = _load(scenario)
    out_dir = out_dir or Path("runs") / sc.name
    _check_run_options(dilation, interval, inject_fault, metrics_port, out_dir)
    _check_join(address, auth_token_file)
    if not 0 <= linger <= 3600:  # `not (a <= x <= b)`: NaN is refused too
        _fail_input([f"--linger: must be between 0 and 3600 seconds (got {linger:g})"])
    if linger and metrics_port is None:
        _fail_input(["--linger: keeps the metrics exporter up, so it needs --metrics-port PORT"])
    from cluster.results import write_result
    from cluster.runner import RunOptions, run_scenario

    progress_cb, stop_progress = (None, lambda: None) if quiet else _progress_bar()
    if quiet:  # only the result path, not Ray's notice that its token authentication is on (see the README)
        import logging
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if not 1 <= dashboard_port <= 65535:
        _fail_input([f"--dashboard-port: must be a TCP port, 1 to 65535 (got {dashboard_port})"])
    opts = RunOptions(address=address, dilation=dilation, dashboard=dashboard, dashboard_port=dashboard_port,
                      metrics_port=metrics_port,
                      inject_fault=inject_fault, progress=progress_cb, out_dir=str(out_dir), interval_s=interval,
                      linger_s=linger)
    signal.signal(signal.SIGTERM, _interrupt)  # tear down cleanly when killed, too
    loaded_s = _process_age_s()  # the scenario read and checked, the runner imported
    try:
        result = run_scenario(sc, opts, str(scenario))
    except KeyboardInterrupt:
        stop_progress()
        write_result({"scenario": sc.name, "scenario_file": str(scenario), "status": "aborted", "verified": False,
                      "stop_reason": "interrupted before the migrations started", "vms": []}, out_dir)
        err.print("interrupted: every VM stays on its source; cluster torn down")
        raise typer.Exit(1)
    except ScenarioError as exc:  # refused before anything started (the resource guard)
        stop_progress()
        _fail_input(exc.lines)
    except Exception as exc:  # a bug or a broken environment: one line here, the details in a file
        stop_progress()
        _report_crash(sc.name, str(scenario), out_dir, exc)
    finally:
        stop_progress()
    path = write_result(result, out_dir)
    if quiet:
        print(path)
    else:
        _print_result(sc, result, path, _process_age_s() or result["emulation"]["wall_clock_s"]["total_s"])
    if verbose:
        print(_phase_line(started_s, loaded_s, result["emulation"]["wall_clock_s"], _process_age_s()),
              file=sys.stderr)
    # A VM lost after its migration (a memory server killed, post-copy cut off) fails the run too.
    lost = any(f.get("outcome") == "vm-lost" for f in result.get("faults") or [])
    raise typer.Exit(0 if result["status"] == "completed" and result["verified"] and not lost else 1)


def _process_age_s() -> float:
    """Real seconds since this process started (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def _phase_line(started_s: float, loaded_s: float, wall: dict, ended_s: float) -> str:
    """One line: real seconds of each phase of a run, in order, and of the whole command (--verbose);
    then how much of it was Ray's own (its start, its actors' processes, its shutdown) and how much
    livemig's, migrations included. `started_s`, `loaded_s`, `ended_s`: the process's age when the
    command began, when the run began, and now (0 where /proc is missing: then only the run's phases)."""
    ray = wall.get("ray_s", {})
    within = {"build_s": ("Ray's actor processes", ray.get("actor_processes_s")),
              "teardown_s": ("Ray's shutdown", ray.get("shutdown_s"))}
    parts = [("Ray start", wall["ray_start_s"])]
    parts += [(k.removesuffix("_s").replace("_", " "), v, within.get(k)) for k, v in wall.get("phases", {}).items()]
    whole = wall["total_s"]
    if ended_s:
        parts = [("imports", started_s), ("load", loaded_s - started_s), *parts,
                 ("result and table", ended_s - loaded_s - wall["total_s"])]
        whole = ended_s
    line = "wall clock: " + ", ".join(_phase(*p) for p in parts) + f"; run {wall['total_s']:.2f} s"
    line += f"; command {ended_s:.2f} s" if ended_s else ""
    if ray:
        own = ray["start_s"] + ray["actor_processes_s"] + ray["shutdown_s"]
        line += (f"; Ray's own {own:.2f} s, livemig's {whole - own:.2f} s "
                 f"(migrations {wall['phases'].get('migrations_s', 0):.2f})")
    return line


def _phase(name: str, seconds: float, within: tuple | None = None) -> str:
    return f"{name} {seconds:.2f}" + (f" ({within[0]} {within[1]:.2f})" if within and within[1] is not None else "")


def _check_join(address: str | None, token_file: str | None) -> None:
    """A cluster to join must answer, and a token file given must be readable: one line at once, not a long hang."""
    from cluster import join
    if token_file is not None and address is None:
        _fail_input(["--auth-token-file: only with --address (the embedded cluster makes its own token)"])
    problem = join.token_problem(token_file) or (join.address_problem(address) if address is not None else None)
    if problem:
        _fail_input([problem])
    join.use_token_file(token_file)


def _check_run_options(dilation, interval, inject_fault, metrics_port, out_dir: Path) -> None:
    """Refuse bad options at once, in one line, before Ray starts (not after the run)."""
    from cluster.scenario import MAX_DILATION
    # `not (a <= x <= b)` and not `x < a or x > b`: NaN fails every comparison and must be refused too.
    if dilation is not None and not 0 < dilation <= MAX_DILATION:
        _fail_input([f"--dilation: must be > 0 and at most {MAX_DILATION:g}, as emulation.dilation (got {dilation:g})"])
    if not 0.001 <= interval <= 60:
        _fail_input([f"--interval: must be between 0.001 and 60 emulated seconds (got {interval:g})"])
    if inject_fault not in (None, "corrupt-page", "memory-server-refuses"):
        _fail_input([f"--inject-fault: unknown fault {inject_fault!r}; allowed: corrupt-page, memory-server-refuses"])
    if metrics_port is not None and not 1 <= metrics_port <= 65535:
        _fail_input([f"--metrics-port: must be a TCP port, 1 to 65535 (got {metrics_port})"])
    if metrics_port is not None:
        _check_port_free(metrics_port)
    from cluster.footprint import nearest_existing
    blocker = nearest_existing(out_dir)
    if not blocker.is_dir():
        _fail_input([f"--out: {blocker} is a file, not a directory; result.json cannot be written under it"])
    # Tried now, so that a place nothing can be written to (/proc, a read-only mount) fails at once;
    # what the try made is removed again (a refused run leaves no directory behind).
    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        writable, why = os.access(out_dir, os.W_OK), "permission denied"
    except OSError as exc:
        writable, why = False, exc.strerror
    finally:
        for p in made:  # the deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
    if not writable:
        _fail_input([f"--out: {out_dir} cannot be written ({why}); give a directory you can write"])


def _check_port_free(port: int) -> None:
    """The exporter's port must be free on 127.0.0.1: taken, the run failed after its set-up with
    an OSError and a traceback file; now one line before anything starts."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the exporter binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            _fail_input([f"--metrics-port: 127.0.0.1:{port} cannot be used ({exc.strerror}); pick a free port"])


def _report_crash(name: str, scenario_file: str, out_dir: Path, exc: Exception) -> None:
    """One line on stderr, the traceback in a file, a failed result.json; exit 1."""
    import traceback

    from cluster.results import write_result
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "error.txt").write_text(traceback.format_exc())
    write_result({"scenario": name, "scenario_file": scenario_file, "status": "failed", "verified": False,
                  "stop_reason": f"{type(exc).__name__}: {exc}"}, out_dir)
    print(f"livemig: the run failed: {type(exc).__name__}: {exc} (traceback in {out_dir / 'error.txt'})",
          file=sys.stderr)
    raise typer.Exit(1)


def _print_result(sc, result: dict, path: Path, wall_s: float) -> None:
    """The summary table (a column per migration), evacuations, fidelity; `wall_s`: the
    command's real seconds so far, from its process's start."""
    names = [v["vm"] for v in result["vms"]]
    cols = [(v["vm"] if names.count(v["vm"]) == 1 else f"{v['vm']} -> {v['destination']}", v) for v in result["vms"]]
    out.print(_summary_table(f"{sc.name}: emulated at memory_scale {sc.emulation.memory_scale:g}, "
                             f"dilation {result['emulation']['dilation']:g}", cols))
    from cluster.results import fault_line
    if faults := fault_line(result):
        print(faults)  # one line, however wide
    for host, e in result.get("evacuations", {}).items():
        out.print(f"evacuation of {host}: {len(e['vms'])} VMs in {e['evacuation_time_s']:.2f} s "
                  f"(their migration times add up to {e['sum_of_migration_times_s']:.2f} s), "
                  f"{e['memory_bytes_sent'] / 2**30:.2f} GiB sent")
    fid = result["emulation"]["fidelity"]
    if not fid["faithful"]:
        err.print(f"[yellow]fidelity: saturation {fid['saturation']:.1%}: real work overran its charged CPU; "
                  f"rerun with --dilation {unsaturating_dilation(result['emulation']['dilation'], fid['saturation']):g} "
                  f"(or a smaller memory_scale)[/]")
    for u in result.get("events_not_fired") or []:
        err.print(f"[yellow]events[{u['index']}] ({u['action']}) never fired: the run ended before it[/yellow]")
    out.print(f"result: {path}   (wall clock {wall_s:.1f} s)")


def unsaturating_dilation(dilation: float, saturation: float) -> float:
    """A dilation likely to run unsaturated: the overrun's share of extra real time, a quarter more
    for margin, rounded up to two significant digits."""
    import math
    want = dilation * (1 + saturation) * 1.25
    step = 10 ** (math.floor(math.log10(want)) - 1)
    return math.ceil(want / step) * step


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _progress_bar():
    """One line per migration: its phase, iteration, what is left and its rate."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cluster.scenario import MIB
    prog = Progress(TextColumn("{task.fields[vm]:>10}"), TextColumn("{task.fields[phase]:<16}"),
                    TextColumn("iter {task.fields[iteration]:>3}"), BarColumn(),
                    TextColumn("{task.fields[remaining]:>11} left"), TextColumn("{task.fields[tp]:>12}"),
                    TimeElapsedColumn(), console=err, transient=True)
    tasks: dict[int, int] = {}
    prog.start()

    def update(states) -> None:
        for s in states:
            if s.index not in tasks:
                tasks[s.index] = prog.add_task("migrate", total=1.0, vm=s.vm, phase="", iteration=0, remaining="",
                                               tp="")
            done = 1 - min(1.0, s.remaining_bytes / s.memory_bytes) if s.memory_bytes else 0.0
            prog.update(tasks[s.index], completed=done, phase=s.phase, iteration=s.iteration,
                        remaining=f"{s.remaining_bytes / MIB:,.0f} MiB", tp=f"{s.throughput_bytes_s / MIB:,.0f} MiB/s")

    return update, prog.stop


@app.command()
def predict(scenario: Path = typer.Argument(..., help="Scenario TOML file."),
            json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON, keyed as result.json (default: a table).")) -> None:
    """The analytic model's figures for the scenario, instantly and without Ray: pre-copy (with
    compression, PMigrate's consumers, auto-converge, dirty-limit, SDPS), post-copy, storage,
    split and swap; what it does not model is listed under 'not modelled'."""
    sc = _load(scenario)
    from cluster.predict import predict as model
    try:
        result = model(sc, str(scenario))
    except Exception as exc:  # a bug: one line, never a traceback (the scenario itself was valid)
        print(f"livemig: the prediction failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise typer.Exit(1)
    if json_out:
        from cluster.results import finite
        print(json.dumps(finite(result), indent=2, allow_nan=False))  # strict JSON, as result.json
        return
    out.print(_summary_table(f"{sc.name}: analytic prediction", [(v["vm"], v) for v in result["vms"]]))
    for line in result["not_modelled"]:
        print(f"not modelled: {line}")


@app.command()
def validate(scenario: Path = typer.Argument(..., help="Scenario TOML file.")) -> None:
    """Check a scenario: one line per problem on stderr and exit 2, or 'ok'."""
    sc = _load(scenario)
    print(f"{scenario}: ok ({len(sc.vms)} VM(s), {len(sc.hosts)} hosts)")


@app.command()
def compare(result_a: Path = typer.Argument(..., help="result.json (or its directory) of the baseline, e.g. vanilla."),
            result_b: Path = typer.Argument(..., help="result.json (or its directory) to compare, e.g. PMigrate."),
            json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON (default: a table)."),
            markdown_out: bool = typer.Option(False, "--markdown", help="Print the table as Markdown (default: a table for the terminal).")) -> None:
    """Two results side by side with ratios A/B (and the paper's, when the scenarios give them)."""
    from cluster.compare import CompareError, load, rows, status_of
    try:
        a, b = load(result_a), load(result_b)
    except CompareError as exc:
        _fail_input([str(exc)])
    table_rows = rows(a, b)
    if json_out:
        print(json.dumps({"a": str(result_a), "b": str(result_b), "rows": table_rows,
                          "status": {"a": status_of(a), "b": status_of(b)}}, indent=2))
        return
    from cluster.tables import print_table, rich_table, saturation_cell, to_markdown
    with_paper = any("paper_ratio" in r for r in table_rows)
    headers = ["Metric", "A", "B", "A/B"] + (["paper A", "paper B", "paper A/B", "deviation"] if with_paper else [])
    fmt = lambda v, u="": "-" if v is None else f"{v:,.2f}{(' ' + u) if u else ''}"
    cells = [["Status", status_of(a), status_of(b), "-"] + (["-"] * 4 if with_paper else [])]
    for r in table_rows:
        row = [r["metric"], fmt(r["a"], r["unit"]), fmt(r["b"], r["unit"]), fmt(r["ratio"])]
        if r["key"] == "iterations" and all(float(v or 0).is_integer() for v in (r["a"], r["b"])):
            row[1:3] = ["-" if v is None else f"{int(v)}" for v in (r["a"], r["b"])]
        if r["key"] == "saturation":  # a fraction in result.json, a percentage in the rows
            row[1:3] = [saturation_cell(None if v is None else v / 100) for v in (r["a"], r["b"])]
        if with_paper:
            dev = r.get("deviation")
            row += [fmt(r.get("paper_a"), r["unit"]), fmt(r.get("paper_b"), r["unit"]), fmt(r.get("paper_ratio")),
                    "-" if dev is None else f"{dev:+.0%}"]
        cells.append(row)
    title = f"A = {a.get('scenario')}   B = {b.get('scenario')}"
    for side, res in (("A", a), ("B", b)):
        if not status_of(res).endswith(", verified"):
            err.print(f"[yellow]{side} did not complete a verified migration ({status_of(res)}): "
                      "its figures are not a migration's")
    if markdown_out:
        print(f"{title}\n\n{to_markdown(headers, cells)}")
    else:
        print_table(rich_table(headers, cells, title), out)


@app.command()
def reproduce(suite: str = typer.Argument(..., help="Which experiments: pmigrate, xbrle, convergence, smemv, or model (emulator "
                                                    "against predictor)."),
              out_dir: Path = typer.Option(Path("runs/reproduce"), "--out", help="Where each run's result.json goes."),
              tolerance: float = typer.Option(0.25, help="Allowed deviation of a ratio from the paper's, as a fraction (0.25: 25%)."),
              markdown_out: bool = typer.Option(False, "--markdown", help="Print the table as Markdown (default: a "
                                                                      "table for the terminal)."),
              only: str = typer.Option("", help="smemv: only these experiments, comma-separated "
                                                "(e.g. idle-12g-10gbe,memcached-12g; default: all).")) -> None:
    """Run a paper's experiment pairs and compare every ratio with the paper's (takes minutes)."""
    from cluster.reproduce import SUITES
    known = [*SUITES, "convergence", "smemv", "model"]
    if suite not in known:
        _fail_input([f"reproduce: unknown suite {suite!r}; known: {', '.join(known)}"])
    _check_reproduce_options(suite, out_dir, tolerance, only)
    signal.signal(signal.SIGTERM, _interrupt)  # killed: stop as at Ctrl-C
    try:
        _reproduce(suite, out_dir, tolerance, markdown_out, only)
    except KeyboardInterrupt:  # the suite stops at its interrupted run; nothing is checked
        err.print(f"interrupted: the finished runs stay in {out_dir}; nothing was checked")
        raise typer.Exit(1)


def _check_reproduce_options(suite: str, out_dir: Path, tolerance: float, only: str) -> None:
    """Refuse bad options in one line before the first run (a suite takes minutes)."""
    if not 0 <= tolerance <= 10:  # NaN is refused too
        _fail_input([f"--tolerance: must be a fraction from 0 to 10 (0.25: 25%) (got {tolerance:g})"])
    if only and suite != "smemv":
        _fail_input([f"--only: picks experiments of the smemv suite only; {suite} runs all of its own"])
    _check_run_options(None, 0.1, None, None, out_dir)


def _reproduce(suite: str, out_dir: Path, tolerance: float, markdown_out: bool, only: str) -> None:
    from cluster.reproduce import markdown, run_suite
    if suite == "model":
        _reproduce_model(out_dir, markdown_out)
        return
    if suite == "convergence":
        _reproduce_convergence(out_dir, markdown_out)
    if suite == "smemv":
        _reproduce_smemv(out_dir, markdown_out, [g for g in only.split(",") if g.strip()])
        return
    report = run_suite(suite, out_dir, tolerance, progress=lambda m: err.print(m))
    (out_dir / f"{suite}.json").write_text(json.dumps(report, indent=2, default=float))
    _print_markdown(markdown(report), markdown_out, f"reproduce {suite}")
    checked = [r for e in report for r in e["rows"] if r.get("checked")]
    good = [r for r in checked if r.get("direction") and r.get("within")]
    err.print(f"{len(good)} of {len(checked)} checked ratios in the paper's direction and within {tolerance:.0%}")
    # Exit 1 when a run did not verify or a checked ratio misses the paper's.
    raise typer.Exit(0 if all(e["verified"] for e in report) and len(good) == len(checked) else 1)


def _reproduce_convergence(out_dir: Path, markdown_out: bool) -> None:
    """The convergence suite: six ways to migrate a non-converging VM, and SolidDB over one and two NICs."""
    from cluster import reproduce_convergence as rc
    report = rc.run(out_dir, progress=lambda m: err.print(m))
    (out_dir / "convergence.json").write_text(json.dumps(report, indent=2, default=float))
    table = rc.markdown(report)
    print(table if markdown_out else table.replace("|", " ").strip())
    raise typer.Exit(0 if all(c["holds"] for c in report["checks"]) else 1)


def _reproduce_smemv(out_dir: Path, markdown_out: bool, only: list[str]) -> None:
    """S-memV's §V: ideal, split, SSD- and HDD-assisted, LRU and random (cluster/reproduce_smemv.py)."""
    from cluster import reproduce_smemv
    known = [stem for _, stem, _ in reproduce_smemv.GROUPS]
    unknown = [g for g in only if g not in known]
    if unknown:
        _fail_input([f"reproduce smemv: --only: unknown experiment {unknown[0]!r}; known: {', '.join(known)}"])
    groups = only or None
    rows = reproduce_smemv.run(out_dir, groups, progress=lambda m: err.print(m))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "smemv.json").write_text(json.dumps(rows, indent=2, default=float))
    table = reproduce_smemv.markdown(rows)
    if not groups or "idle-12g-10gbe" in groups:  # Fig. 7(b)'s extra downtime, mechanism by mechanism
        table += ("\n\nSwap-assisted extra downtime (idle 12 GB, 10 GbE), documented mechanisms:\n\n"
                  + reproduce_smemv.mechanisms_markdown(reproduce_smemv.downtime_mechanisms()))
    print(table if markdown_out else table.replace("|", " ").strip())
    raise typer.Exit(0 if all(r["verified"] for r in rows) else 1)


def _reproduce_model(out_dir: Path, markdown_out: bool) -> None:
    """The model suite: a grid of pre-copy scenarios through emulator and predictor."""
    from cluster.reproduce import model_markdown, run_model
    rows = run_model(out_dir, progress=lambda m: err.print(m))
    (out_dir / "model.json").write_text(json.dumps(rows, indent=2, default=float))
    _print_markdown(model_markdown(rows), markdown_out, "reproduce model: emulator / predictor (deviation)")
    raise typer.Exit(0 if all(r["verified"] for r in rows) else 1)


@app.command()
def sweep(spec_file: Path = typer.Argument(..., help="Sweep TOML: base scenario, \\[vary] one or two settings, repeats."),
          out_dir: Optional[Path] = typer.Option(None, "--out", help="Directory of the sweep (default: runs/sweep-<name>)."),
          only: list[str] = typer.Option([], "--only", metavar="SETTING=VALUE", help="Run only the points where SETTING=VALUE (the dotted "
                                         "path or its last name); repeat for several (default: every point)."),
          fresh: bool = typer.Option(False, "--fresh", help="Run every point again instead of reusing finished runs (default: reuse)."),
          dilation: Optional[float] = typer.Option(None, help="Real seconds per emulated second for every run (default: each "
                                                                 "scenario's emulation.dilation)."),
          json_out: bool = typer.Option(False, "--json", help="Print sweep.json instead of the table (default: the table).")) -> None:
    """Vary one or two settings of a base scenario, each point repeated (default 3): medians and spread (min to
    max) on screen, in sweep.csv and sweep.json; completed, verified runs are reused, so an interrupted sweep
    resumes (Ctrl-C stops the sweep; the interrupted run is run again)."""
    from cluster import sweep as sw
    try:
        spec = sw.load_spec(spec_file)
        points = spec.points()
        selected = sw.select(points, only)
        if not selected:
            raise sw.SweepError(f"--only: no point matches {' and '.join(only)}; points: "
                                f"{', '.join(p.name for p in points)}")
        for p in points:
            sw.point_scenario(spec, p, dilation)  # every point valid before the first run
    except sw.SweepError as exc:
        _fail_input([str(exc)])
    _check_run_options(dilation, 0.1, None, None, out_dir or Path("runs"))
    out_dir = out_dir or Path("runs") / f"sweep-{spec.name}"
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)  # killed: stop as at Ctrl-C
    try:
        sw.run_sweep(spec, out_dir, points, selected, fresh, dilation, progress=lambda m: err.print(m))
        points = [p for p in points if p.results]
    except KeyboardInterrupt:
        print(f"interrupted: the finished runs stay in {out_dir}; run the sweep again to resume", file=sys.stderr)
        raise typer.Exit(1)
    summ = sw.summary(spec, points)
    js, cv = sw.write_summary(summ, out_dir)
    if json_out:
        print(js.read_text(), end="")
    else:
        from cluster.tables import print_table
        print_table(sw.screen_table(summ), out)
    reused = sum(p.reused for p in points)
    runs = sum(len(p.results) for p in points)
    err.print(f"{runs} run(s), {reused} reused, in {time.monotonic() - t0:.1f} s; {js}, {cv}")
    raise typer.Exit(0 if all(r.get("verified") for p in points for r in p.results) else 1)


@app.command()
def report(run_dirs: list[Path] = typer.Argument(..., metavar="run_dir", help="Run directories (livemig run --out), or a sweep's directory."),
           out_file: Optional[Path] = typer.Option(None, "--out", help="The HTML page (default: report.html in the "
                                                   "first directory); its PNG files go next to it.")) -> None:
    """Plots of one run (iterations, dirty against transfer rate, guest ops/s with phases, links, CPU) or of
    several runs overlaid, with the results table, in one self-contained HTML page plus PNG files."""
    from cluster.report import ReportError, check_out, load_runs, load_sweep, render
    try:
        runs = load_runs(run_dirs, warn=lambda m: print(m, file=sys.stderr))
        target = out_file or run_dirs[0] / "report.html"
        if out_file is not None and out_file.is_dir():  # a directory given: the page goes into it
            target = out_file / "report.html"
        check_out(target)
        sweep = load_sweep(run_dirs)
    except ReportError as exc:
        _fail_input([f"report: {exc}"])
    done = render(runs, target, sweep)
    print(f"{done['html']} ({done['bytes'] / 1e6:.2f} MB, {len(runs)} run(s)); "
          f"PNG: {', '.join(p.name for p in done['pngs'])}")


def _print_markdown(md: str, markdown_out: bool, title: str) -> None:
    """A Markdown table as it is (--markdown) or as a rich table."""
    from cluster.tables import from_markdown, print_table, rich_table
    if markdown_out:
        print(md)
    else:
        print_table(rich_table(*from_markdown(md), title), out)


@app.command()
def schema() -> None:
    """The scenario file's JSON schema (from the same declarations as validation), for editors."""
    from cluster.scenario import json_schema
    print(json.dumps(json_schema(), indent=2))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version
        print(f"livemig {version('livemig')}")
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print livemig's version and exit.")) -> None:
    """livemig: a live VM migration emulator. Real bytes move between Ray actors over shaped links."""


@app.command("list")
def list_scenarios() -> None:
    """The shipped scenarios, one line each."""
    from cluster.scenario import shipped_scenarios
    for p in shipped_scenarios(SCENARIO_DIR):
        try:
            data = tomllib.loads(p.read_text())
            lines = str(data.get("description") or "").strip().splitlines()
            desc = lines[0] if lines else ""
        except (tomllib.TOMLDecodeError, OSError):
            desc = "(unreadable)"
        # A path the user can pass to `livemig run` from where they are: relative below the working
        # directory (scenarios/... in the repository), absolute elsewhere.
        shown = p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p
        print(f"{shown}  {desc}")


@app.command()
def techniques(json_out: bool = typer.Option(False, "--json", help="Print the declarations as JSON (default: a table per technique).")) -> None:
    """The migration techniques and their options: default, unit, allowed values, QEMU name, help."""
    from agents.techniques import registry
    specs = registry.all_specs()
    if json_out:
        print(json.dumps([spec.describe() for spec in specs], indent=2))
        return
    from cluster.tables import WIDTH, print_table
    width = out.width if out.is_terminal else WIDTH  # piped: print_table's fixed width
    for spec in specs:
        if width >= WIDE_TABLE:
            print_table(_technique_table(spec), out)
        else:  # too narrow for six columns: a block per option, the help wrapped below it
            print(_technique_blocks(spec, width))


WIDE_TABLE = 120  # columns from which `livemig techniques` prints tables


def _technique_blocks(spec, width: int) -> str:
    """A technique's options as plain text: one block per option, `name = default unit`, what is
    allowed and the QEMU name, then the help, wrapped at `width` columns."""
    import textwrap
    wrap = lambda text, indent: textwrap.fill(text, max(width, 40), initial_indent=indent, subsequent_indent=indent)
    lines = [wrap(f"{spec.name}: {spec.summary}", ""), ""]
    for o in spec.options:
        default = "-" if o.default is None else str(o.default)
        qemu = f"; QEMU: {o.qemu_name}" if o.qemu_name else ""
        lines += [f"  {o.name} = {default}{(' ' + o.unit) if o.unit else ''}",
                  wrap(f"allowed: {o.allowed()}{qemu}", "      "), wrap(o.help, "      ")]
    return "\n".join(lines) + "\n"


def _technique_table(spec) -> Table:
    t = Table(title=f"{spec.name}: {spec.summary}", title_justify="left")
    for col in ("option", "default", "unit", "allowed", "QEMU name", "help"):
        # Names stay whole (they are typed into scenario files); the help wraps.
        t.add_column(col, no_wrap=col in ("option", "QEMU name"), overflow="fold")
    for o in spec.options:
        default = "-" if o.default is None else str(o.default)
        t.add_row(o.name, default, o.unit, o.allowed(), o.qemu_name, o.help)
    return t


@bench_app.command("pipeline")
def bench_pipeline(mib: int = typer.Option(256, min=1, max=4096, help="Guest memory per content mix, in real MiB."),
                   batch_pages: int = typer.Option(256, min=1, max=4096, help="Pages per batch (4 KiB pages).")) -> None:
    """Unshaped real MB/s of the whole path (scan, encode, send, restore, verify) per content mix."""
    from cluster.bench import pipeline_bench
    print(json.dumps(pipeline_bench(mib, batch_pages), indent=2))


@bench_app.command("crossnode")
def bench_crossnode(mib: int = typer.Option(64, min=1, max=4096, help="Guest image sent, in real MiB."),
                    batch_pages: int = typer.Option(256, min=1, max=4096, help="Pages per batch (4 KiB pages)."),
                    repeats: int = typer.Option(3, min=1, max=20, help="Sends per path; the best is kept."),
                    mix: str = typer.Option("random", help="Content of the image: random, text, mixed or zero.")) -> None:
    """Cross-node (TCP) against same-node (shared memory) throughput, and Ray's object transfer, on a
    two-node Ray cluster started on this machine (MB/s of real bytes)."""
    from cluster.bench import MIXES
    from cluster.bench_crossnode import crossnode_bench
    if mix not in MIXES:
        _fail_input([f"--mix: unknown content {mix!r}; allowed: {', '.join(MIXES)}"])
    print(json.dumps(crossnode_bench(mib, batch_pages, repeats, mix), indent=2))


CAPACITY_STEPS = ("Runs spent narrowing each boundary: once doubling (or halving) a knob makes the run change side "
                  "(saturated or not), each further run halves the gap between the last two values (geometric "
                  "bisection); 0: report the doubling's bracket.")


@bench_app.command("capacity")
def bench_capacity(scenario: Path = typer.Argument(..., help="Scenario TOML file whose faithful range to find."),
                   knob: list[str] = typer.Option(["dilation", "memory_scale", "link_gbps"], "--knob", metavar="KNOB",
                                                  help="What to search: dilation, memory_scale, link_gbps; repeat "
                                                       "for several."),
                   steps: int = typer.Option(3, min=0, max=10, help=CAPACITY_STEPS)) -> None:
    """The smallest dilation, and at dilation 1 the largest memory_scale and link speed, at which
    SCENARIO runs unsaturated (fidelity.saturation < 0.05): a few runs in one Ray per knob."""
    from cluster.capacity import KNOBS, capacity
    from cluster.reproduce import one_ray
    from cluster.runner import RunOptions, run_in_series
    from cluster.scenario import read_scenario_text

    bad = [k for k in knob if k not in KNOBS]
    if bad:
        _fail_input([f"livemig bench capacity: --knob {bad[0]!r} is not one of {', '.join(KNOBS)}"])
    _load(scenario)  # a bad scenario: one line, exit 2, before Ray starts
    err = Console(stderr=True)
    with one_ray():
        out = capacity(read_scenario_text(scenario), str(scenario), lambda sc: run_in_series(sc, RunOptions()),
                       tuple(knob), steps, progress=lambda line: err.print(line, highlight=False))
    print(json.dumps(out, indent=2))


@bench_app.command("lru")
def bench_lru(sizes: str = typer.Option("1,4,16,64,256,1024,2048", help="Emulated memory sizes, in GiB, comma-separated."),
              chunk_pages: int = typer.Option(256, help="Pages per chunk (the paper's 256)."),
              repeats: int = typer.Option(3, help="Measurements per size; the best is kept.")) -> None:
    """S-memV Fig. 14: access-history collection, LRU splitting and page-out decision time against memory size."""
    from cluster.bench import lru_bench
    try:
        gib = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        gib = []
    if not gib or min(gib) <= 0 or chunk_pages <= 0 or repeats <= 0:
        print("livemig bench lru: --sizes must be positive integers (GiB), --chunk-pages and --repeats positive",
              file=sys.stderr)
        raise typer.Exit(2)
    print(json.dumps(lru_bench(gib, chunk_pages, repeats), indent=2))


@bench_app.command("link")
def bench_link(seconds: float = typer.Option(3.0, min=0.1, max=600,
                                             help="Real seconds of sending per rate measured.")) -> None:
    """Achieved rate against target at 1 and 10 Gbit/s, and latency error at 1 and 10 ms RTT."""
    from cluster.bench import link_bench
    print(json.dumps(link_bench(seconds), indent=2))


@bench_app.command("scaling")
def bench_scaling(memory_gib: float = typer.Option(1.0, min=0.0625, max=64,
                                                  help="Memory of the idle VM, in emulated GiB."),
                  dilation: float = typer.Option(0.15, min=0.001, max=1000,
                                                 help="Real seconds per emulated second (time dilation).")) -> None:
    """PMigrate Figures 6-7: migration time and speed-up with 1, 2, 4, 8 consumers under each address-space lock."""
    from cluster.bench import scaling_bench
    print(json.dumps(scaling_bench(memory_gib=memory_gib, dilation=dilation), indent=2))


@bench_app.command("checksum")
def bench_checksum(repeats: int = typer.Option(200, min=1, max=100_000, help="Batches timed at each batch size.")) -> None:
    """The per-batch checksum (XXH3, the receiver's full check) against packing the batch (which hashes as it copies), at 16, 64 and 256 pages per batch."""
    from cluster.bench import checksum_bench
    print(json.dumps(checksum_bench(repeats=repeats), indent=2))


@bench_app.command("timeline")
def bench_timeline(scenario: Path = typer.Argument(Path("scenarios/quickstart.toml"), help="Scenario TOML file to run."),
                   repeats: int = typer.Option(2, min=1, max=20, help="Runs at each sampling interval.")) -> None:
    """The timeline's cost: the driver's time spent sampling at 0.1 s intervals, as a share of the run."""
    _load(scenario)
    from cluster.bench import timeline_bench
    print(json.dumps(timeline_bench(str(scenario), repeats), indent=2))


@bench_app.command("soak")
def bench_soak(rounds: int = typer.Option(10, min=1, max=500, help="Round trips a -> b -> a (two migrations each)."),
               memory_gib: float = typer.Option(1.0, min=0.0625, max=64,
                                                help="Memory of the VM, in emulated GiB.")) -> None:
    """A writing VM migrated back and forth: rounds, failures, and private memory growth per round."""
    from cluster.bench_scale import soak_bench
    print(json.dumps(soak_bench(rounds, memory_gib), indent=2))


@bench_app.command("evacuation")
def bench_evacuation(vms: list[int] = typer.Option([8, 16, 32], "--vms", min=1, max=256, metavar="N",
                                                   help="How many VMs are evacuated at once, one run per number (repeat the option)."),
                     dilation: float = typer.Option(1.0, min=0.01, max=100,
                                                    help="Real seconds per emulated second (time dilation).")
                     ) -> None:
    """Many small VMs off one host at once: wall clock, peak memory, saturation; the largest unsaturated."""
    from cluster.bench_scale import evacuation_bench
    print(json.dumps(evacuation_bench(tuple(vms), dilation=dilation), indent=2))


@bench_app.command("disk")
def bench_disk(mib: int = typer.Option(256, min=1, max=65536, help="Size of the test file, in real MiB."),
               seconds: float = typer.Option(2.0, min=0.1, max=600, help="Real seconds per case."),
               directory: Path = typer.Option(None, exists=True, file_okay=False, writable=True,
                                              help="Directory where the test files go (default: the temp directory).")) -> None:
    """The machine's file I/O (dd-like, sequential 1 MiB and random 4 KiB) against the disk agent's."""
    from cluster.bench import disk_bench
    print(json.dumps(disk_bench(mib, seconds, str(directory) if directory else None), indent=2))


@bench_app.command("codec")
def bench_codec(seconds: float = typer.Option(0.5, min=0.01, max=600, help="Real seconds per case."),
                calibrate: bool = typer.Option(False, "--calibrate", help="Measure the codec cost model's figures "
                                               "and store them (agents/encodings/codec_costs.json); default: only print them.")) -> None:
    """Real MB/s on one core: zero detection, zstd levels 1 and 3, XBZRLE encode and decode."""
    from agents.encodings import codec_bench
    if not calibrate:
        print(json.dumps(codec_bench.run_codec_bench(seconds), indent=2))
        return
    from agents.encodings.cost_model import CALIBRATION
    data = codec_bench.calibrate(seconds)
    CALIBRATION.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
    print(f"stored in {CALIBRATION}", file=sys.stderr)


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        app()
    except SystemExit as exc:  # every command ends here, its tear-down done
        _leave(exc.code)


def _leave(code) -> None:
    """Exit with `code` (SystemExit's: None, a number or a message) without the interpreter's
    final clean-up of its modules, which took 0.2 s after every command with Ray loaded
    (its compiled objects' destructors). Threads are joined, atexit handlers run and the
    output is flushed first, as a normal exit does; the command released what it made."""
    import atexit
    import threading
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
