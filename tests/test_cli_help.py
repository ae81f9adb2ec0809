"""`livemig --help` and every command's: each option and argument says what it does (a
fresh-eyes finding: flags read as `<bool>`, `bench capacity --steps` unexplained)."""
from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from cluster.cli import app

ROOT = typer.main.get_command(app)


def _commands(group: click.Group = ROOT, path: tuple[str, ...] = ()):
    """(path, command) of every command and group, the root included."""
    yield path, group
    for name, cmd in getattr(group, "commands", {}).items():
        if not cmd.hidden:
            yield from _commands(cmd, (*path, name))


COMMANDS = list(_commands())


def test_every_command_is_found():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"run", "sweep", "report", "bench capacity", "bench codec"} <= names and len(names) > 20


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) or "livemig" for p, _ in COMMANDS])
def test_every_option_and_argument_has_help_and_the_command_a_summary(path, cmd):
    assert (cmd.help or "").strip(), f"livemig {' '.join(path)} has no summary"
    shown = [p for p in cmd.params if not getattr(p, "hidden", False)]
    missing = [p.name for p in shown if not (getattr(p, "help", None) or "").strip()]
    assert not missing, f"livemig {' '.join(path)}: no help for {missing}"
    # Every help line is a sentence that ends, and a flag shows no value type.
    out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
    assert "<bool>" not in out, out
    assert "<list[" not in out, out  # Python's type of a repeated argument
    assert all(p.help.rstrip().endswith((".", ")")) for p in shown if getattr(p, "help", None)), path


def test_report_names_its_repeated_argument_as_the_other_commands_name_theirs():
    """`livemig report --help` read `<list[Path]>`; its run directories read as `run --help`'s scenario does."""
    out = CliRunner().invoke(app, ["report", "--help"], env={"COLUMNS": "200"}).output
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert usage.split()[-3:] == ["report", "[OPTIONS]", "{run_dir}..."], usage
    row = next(line for line in out.splitlines() if "Run directories" in line)
    assert row.split()[1:4] == ["*", "run_dir", "<path>..."], row
    single = next(line for line in CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
                  .splitlines() if "Scenario TOML file" in line)
    assert single.split()[1:4] == ["*", "scenario", "<path>"], single


@pytest.mark.parametrize("args", [["pipeline", "--mib", "0"], ["pipeline", "--batch-pages", "0"],
                                  ["link", "--seconds", "-1"], ["link", "--seconds", "nan"],
                                  ["scaling", "--memory-gib", "-1"], ["timeline", "--repeats", "0"],
                                  ["checksum", "--repeats", "0"], ["disk", "--mib", "-5"],
                                  ["disk", "--directory", "/nonexistent"], ["codec", "--seconds", "nan"]],
                         ids=lambda a: " ".join(a))
def test_a_bad_bench_option_is_refused_with_exit_2_not_a_traceback(args):
    """Each ended in a traceback (OSError, ZeroDivisionError, IndexError, StatisticsError...) after
    doing part of its work (a fresh-eyes finding); now the option's range is checked first."""
    import subprocess
    import sys
    from pathlib import Path
    livemig = Path(sys.executable).parent / "livemig"
    r = subprocess.run([str(livemig), "bench", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Invalid value for" in r.stderr and "Traceback" not in r.stderr, r.stderr[-800:]
