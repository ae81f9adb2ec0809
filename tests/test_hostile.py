"""Hostile input: every file of tests/hostile/ is refused in one line naming the file and the field.

Each entry of tests/hostile/ is one bad scenario whose first line says what is
wrong and what the error must name: `# expect: FIELD -- what is wrong` (for a
directory, in its expect.txt). FIELD is what follows `FILE: ` in the one line
of the refusal: a field path, or a file-level verdict such as `not UTF-8`.
Also here: what cannot be shipped as a file (a FIFO, an endless file, 60,000
VMs) and the run options refused before Ray starts; each must answer within
seconds, so a hang fails the test through its timeout.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest

from cluster.scenario import MAX_FILE_BYTES, ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "hostile"
LIVEMIG = ROOT / ".venv" / "bin" / "livemig"
CASES = sorted(HOSTILE.iterdir())
# Through the real CLI too: a type, a bound, NaN, a semantic check, a file-level refusal, a directory.
CLI_CASES = ["type-vcpus-string.toml", "zero-nic-speed.toml", "nan-memory.toml", "passthrough-vm-nic.toml",
             "not-utf8.toml", "directory.toml", "own-destination.toml", "start-postcopy-on-pure-postcopy.toml"]


def expectation(case: Path) -> tuple[str, str]:
    """(what the line must name after `FILE: `, what is wrong) from the case's first line."""
    first = (case / "expect.txt" if case.is_dir() else case).read_bytes().split(b"\n", 1)[0].decode("ascii")
    assert first.startswith("# expect: "), f"{case.name}: the first line must be `# expect: FIELD -- why`"
    field, _, why = first.removeprefix("# expect: ").partition(" -- ")
    return field, why


def refusal(path: Path) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return info.value.lines


def livemig(*args, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(LIVEMIG), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_the_corpus_has_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_file_is_refused_in_one_line_naming_file_and_field(case):
    field, why = expectation(case)
    lines = refusal(case)
    assert len(lines) == 1, f"{why}: {lines}"
    assert lines[0].startswith(f"{case}: {field}: "), f"{why}: {lines[0]}"


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_validate_exits_2_with_the_same_line(name):
    case = HOSTILE / name
    r = livemig("validate", case)
    assert r.returncode == 2, r
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == refusal(case)


@pytest.mark.parametrize("command", ["predict", "run"])
def test_cli_predict_and_run_refuse_the_same_way(command, tmp_path):
    case = HOSTILE / "tiny-link-bandwidth.toml"
    r = livemig(command, case, *(["--out", tmp_path] if command == "run" else []))
    assert r.returncode == 2, r
    assert r.stderr.splitlines() == refusal(case)
    assert not (tmp_path / "result.json").exists()


# --- what a file in git cannot hold -------------------------------------------------------

def test_a_fifo_without_writer_is_refused_at_once(tmp_path):
    fifo = tmp_path / "scenario.toml"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    assert refusal(fifo) == [f"{fifo}: not a regular file: it is a FIFO; give a scenario .toml file"]
    assert time.monotonic() - t0 < 1
    r = livemig("validate", fifo, timeout=20)  # a blocking open would hang here until the timeout
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1


def test_an_endless_device_is_refused(tmp_path):
    r = livemig("validate", "/dev/zero", timeout=20)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["/dev/zero: not a regular file: it is a character device; give a scenario .toml file"]


def test_a_file_over_the_limit_is_not_read_to_its_end(tmp_path):
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:  # sparse: 1 GiB of NUL bytes costs no disk
        f.truncate(1 << 30)
    t0 = time.monotonic()
    lines = refusal(big)
    assert time.monotonic() - t0 < 1
    assert len(lines) == 1 and lines[0].startswith(f"{big}: too large: ")


def sixty_thousand_vms() -> str:
    vms = "".join(f'[[vms]]\nname = "vm{i}"\nmemory_gib = 1\n' for i in range(60_000))
    return ('name = "many"\n[[hosts]]\nname = "a"\nrole = "source"\nnics = [{ name = "e", speed_gbps = 10 }]\n'
            '[[hosts]]\nname = "b"\nrole = "destination"\nnics = [{ name = "e", speed_gbps = 10 }]\n' + vms)


def test_sixty_thousand_vms_are_refused_within_seconds(tmp_path):
    text = sixty_thousand_vms()
    assert len(text.encode()) > MAX_FILE_BYTES
    f = tmp_path / "many.toml"
    f.write_text(text)
    t0 = time.monotonic()
    r = livemig("validate", f, timeout=20)
    assert time.monotonic() - t0 < 10
    assert r.returncode == 2 and r.stderr.splitlines() == [f"{f}: too large: over 1 MiB; a scenario is a "
                                                           f"hand-written experiment (at most 4096 hosts, VMs or migrations)"]
    # Past the size guard (text handed in directly), the schema's bound answers, also in one line and in seconds.
    t0 = time.monotonic()
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "many.toml")
    assert time.monotonic() - t0 < 10
    assert len(info.value.lines) == 1 and info.value.lines[0].startswith("many.toml: vms: ")


# --- run options: refused before Ray starts, in one line ------------------------------------

@pytest.mark.parametrize("args, start", [
    (["--metrics-port", "0"], "--metrics-port: "),
    (["--metrics-port", "70000"], "--metrics-port: "),
    (["--dilation", "nan"], "--dilation: "),
    (["--dilation", "1e9"], "--dilation: "),
    (["--interval", "inf"], "--interval: "),
    (["--address", ""], "--address: "),  # empty: not silently the embedded cluster
])
def test_bad_run_options_fail_at_once(args, start, tmp_path):
    t0 = time.monotonic()
    r = livemig("run", "scenarios/quickstart.toml", "--out", tmp_path / "out", "--quiet", *args)
    assert time.monotonic() - t0 < 10  # no Ray started, no migration run
    assert r.returncode == 2, r
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(start), r.stderr
    assert not (tmp_path / "out").exists()


def test_out_under_a_file_fails_at_once(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = livemig("run", "scenarios/quickstart.toml", "--out", blocker / "sub", "--quiet")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"--out: {blocker} is a file, not a directory; result.json cannot be written under it"]


def test_result_json_never_holds_nan_or_infinity(tmp_path):
    np = pytest.importorskip("numpy")
    from cluster.results import write_result
    p = write_result({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float64("nan"), "d": np.int64(3),
                      "e": {"f": np.array([1.0, np.inf])}}, tmp_path)

    def refuse(token):
        raise AssertionError(f"{token} in result.json")
    data = json.loads(p.read_text(), parse_constant=refuse)
    assert data == {"a": None, "b": [None, None, 1.5], "c": None, "d": 3, "e": {"f": [1.0, None]}}
