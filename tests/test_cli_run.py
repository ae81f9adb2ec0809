"""`livemig run` end to end, as a user types it: exit codes, result.json, clean tear-down."""
import glob
import json
import signal
import subprocess

import pytest

from tests.conftest import LIVEMIG, ROOT, scenario_text, start_migrating

REQUIRED_KEYS = {"scenario", "status", "verified", "total_time_s", "downtime_ms", "setup_time_s", "iterations",
                 "memory_bytes_sent", "disk_bytes_sent", "downtime_bytes_sent", "pages", "avg_throughput_mbytes_s",
                 "cpu_seconds", "app", "emulation"}


def _livemig(*args, timeout=180, **kw):
    return subprocess.run([LIVEMIG, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


def _leftover_shm(pid: int) -> list[str]:
    return glob.glob(f"/dev/shm/livemig-{pid}_*")


def test_quickstart_completes_and_verifies(tmp_path):
    p = subprocess.Popen([LIVEMIG, "run", "scenarios/quickstart.toml", "--out", str(tmp_path), "--quiet"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    # --quiet: the result path, not Ray's token notice (a fresh-eyes finding; a saturation warning may show).
    assert out.strip() == str(tmp_path / "result.json") and "Token authentication" not in err, (out, err)
    r = json.loads((tmp_path / "result.json").read_text())
    assert REQUIRED_KEYS <= set(r)
    assert r["status"] == "completed" and r["verified"] is True
    by_name = {v["vm"]: v for v in r["vms"]}
    idle, busy = by_name["idle-vm"], by_name["busy-vm"]
    assert idle["verified"] and busy["verified"]
    # The dirtying VM has to send more, and more in its downtime, than the idle one.
    assert busy["memory_bytes_sent"] > idle["memory_bytes_sent"]
    assert busy["downtime_bytes_sent"] > idle["downtime_bytes_sent"]
    assert r["emulation"]["memory_scale"] == pytest.approx(1 / 64)
    # Peak memory: the images in /dev/shm (both VMs on both ends), plus the processes' own.
    e = r["emulation"]
    images = 2 * sum(v["memory_bytes"] for v in r["vms"]) / 64
    assert images <= e["shared_memory_bytes"] <= images * 1.2
    assert e["peak_memory_bytes"] == e["peak_private_memory_bytes"] + e["shared_memory_bytes"]
    assert e["peak_private_memory_bytes"] > 100 * 2**20
    # Self-describing: what made it, and the scenario with its defaults filled in.
    assert r["run"]["livemig_version"] and r["run"]["run_id"].startswith(f"{p.pid}_")
    assert r["scenario_as_loaded"]["migration"]["downtime_limit_ms"] == 300
    assert (tmp_path / "timeline.jsonl").stat().st_size > 0
    assert not _leftover_shm(p.pid), "shared memory left behind"
    # The transfer rate is counted over a sampling period at least: the sample at busy-vm's
    # switch-over, milliseconds after the one before, read 1.5-2 times the 25 GbE link before.
    records = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    rates = [x["transfer_rate"] / (25e9 / 8) for x in records if x["kind"] == "migration"]
    assert len(rates) >= 20 and max(rates) <= 1.3, rates
    # Where the wall clock went, Ray's own part apart: its start, its actors' processes
    # (within the build) and its shutdown (within the tear-down).
    wall = e["wall_clock_s"]
    ray = wall["ray_s"]
    assert ray["start_s"] == wall["ray_start_s"] > 0
    assert 0 < ray["actor_processes_s"] < wall["phases"]["build_s"]
    assert 0 < ray["shutdown_s"] <= wall["phases"]["teardown_s"]


def test_version_and_schema():
    v = _livemig("--version")
    assert v.returncode == 0 and v.stdout.startswith("livemig ")
    s = _livemig("schema")
    schema = json.loads(s.stdout)
    assert {"hosts", "vms", "migration", "migrations", "events"} <= set(schema["properties"])
    # The migration options come from the techniques' declarations.
    options = schema["$defs"]["Migration"]["properties"]
    assert options["downtime_limit_ms"]["default"] == 300 and "consumers" in options
    # Editors show descriptions: every property has one, on one line, with what is allowed.
    props = {f"{model}.{name}": p for model, d in [("Scenario", schema), *schema["$defs"].items()]
             for name, p in d.get("properties", {}).items()}
    assert len(props) > 300
    assert not [name for name, p in props.items() if not p.get("description", "").strip()]
    assert not [name for name, p in props.items() if "\n" in p["description"]]
    assert props["Vm.vcpus"]["description"].endswith("Allowed: 1 to 1,024.")
    # Units: the datastore's MB/s are 10^6 bytes, background traffic's MiB/s 2^20; options say theirs.
    assert "10^6 bytes" in props["Datastore.read_mbytes_s"]["description"]
    assert "MiB/s" in props["BackgroundTraffic.mbytes_s"]["description"]
    assert "Unit: MiB/s" in options["vcpu_dirty_limit_mbytes_s"]["description"]
    assert "QEMU: downtime-limit" in options["downtime_limit_ms"]["description"]


@pytest.mark.slow  # long end to end: make test-slow
def test_corrupted_page_in_transit_fails_verification(tmp_path):
    r = _livemig("run", "scenarios/quickstart.toml", "--out", str(tmp_path), "--quiet", "--inject-fault", "corrupt-page")
    assert r.returncode == 1, r.stderr
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["verified"] is False
    assert res["status"] == "failed"
    bad = [v for v in res["vms"] if not v["verified"]]
    assert len(bad) == 1 and len(bad[0]["mismatched_pages"]) == 1
    assert "verification failed" in bad[0]["stop_reason"]


@pytest.mark.parametrize("body, field", [
    (scenario_text().replace("memory_gib = 1", "memory_gib = -1"), "vms[0].memory_gib"),
    (scenario_text().replace('kind = "idle"', 'kind = "sleepy"'), "vms[0].workload"),
    (scenario_text().replace("dilation = 1.0", "dilation = 1.0\nspeed = 3"), "emulation.speed"),
    (scenario_text().replace('to = "dst:eth0"', 'to = "dst:eth9"'), "network.links[0].to"),
])
def test_bad_scenario_exit_2_one_line(tmp_path, body, field):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    r = _livemig("run", str(f), "--out", str(tmp_path / "out"), timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{f}: {field}")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_ctrl_c_aborts_and_vm_stays_on_source(tmp_path):
    p = start_migrating(tmp_path, tmp_path, 19311)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["status"] == "aborted"
    assert r["verified"] is False
    # The guest went on running on its source after the abort.
    assert r["app"]["ops_per_s_after"] == pytest.approx(4000, rel=0.2)
    assert not _leftover_shm(p.pid)


@pytest.mark.parametrize("args, words", [
    (["run", "scenarios/quickstart.toml", "--linger", "5"], "needs --metrics-port"),
    (["reproduce", "nope"], "known: pmigrate, xbrle, convergence, smemv, model"),
    # A suite takes minutes: a bad option is refused before its first run, not ignored or met after it.
    (["reproduce", "xbrle", "--tolerance", "-1"], "--tolerance: must be a fraction from 0 to 10"),
    (["reproduce", "xbrle", "--tolerance", "nan"], "--tolerance: must be a fraction from 0 to 10"),
    (["reproduce", "model", "--only", "x"], "--only: picks experiments of the smemv suite only"),
])
def test_options_refused_in_one_line_before_ray(tmp_path, args, words):
    r = _livemig(*args, "--out", str(tmp_path / "out"), timeout=60)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_metrics_port_in_use_is_refused_in_one_line_before_anything_starts(tmp_path):
    """It was a failed run (exit 1), an OSError and a traceback file (a fresh-eyes finding)."""
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _livemig("run", "scenarios/quickstart.toml", "--metrics-port", str(port), "--out", str(tmp_path / "out"),
                     timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == (f"--metrics-port: 127.0.0.1:{port} cannot be used (Address "
                                                      "already in use); pick a free port"), r.stderr
    assert not (tmp_path / "out").exists()


def test_reproduce_refuses_an_out_that_is_a_file_before_its_first_run(tmp_path):
    (tmp_path / "f").write_text("")
    r = _livemig("reproduce", "xbrle", "--out", str(tmp_path / "f"), timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(f"--out: {tmp_path / 'f'} is a file"), r.stderr


def test_an_interrupted_run_stops_a_reproduction_after_keeping_its_result(tmp_path):
    """Ctrl-C aborts the running scenario; the suite must stop there, not go on with its next runs
    (it went on: `reproduce xbrle` ran its five other scenarios after a Ctrl-C; a fresh-eyes finding)."""
    from cluster.reproduce import kept
    done = {"status": "completed", "verified": True, "vms": []}
    assert kept(done, tmp_path / "a") == done and (tmp_path / "a" / "result.json").exists()
    aborted = {"status": "aborted", "verified": False, "vms": [{"vm": "vm", "status": "aborted",
                                                                "stop_reason": "interrupted (Ctrl-C)"}]}
    with pytest.raises(KeyboardInterrupt):
        kept(aborted, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "result.json").read_text())["status"] == "aborted"


@pytest.mark.parametrize("out", ["/proc/livemig-out", "/sys/livemig-out"])
def test_an_out_directory_nothing_can_be_written_to_fails_at_once(out):
    r = _livemig("run", "scenarios/quickstart.toml", "--out", out, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"--out: {out} cannot be written") and "Traceback" not in r.stderr


def test_the_command_leaves_at_once_but_joins_its_threads_and_flushes_first(tmp_path):
    """`livemig` exits without the interpreter's final clean-up (cluster/cli.py `_leave`), but
    as a normal exit would: its threads joined, atexit handlers run, output flushed, the
    exit code kept (a message given to SystemExit: printed, code 1)."""
    done = tmp_path / "thread-done"
    code = ("import atexit, threading, time, sys\n"
            "from cluster.cli import _leave\n"
            f"threading.Thread(target=lambda: (time.sleep(0.3), open({str(done)!r}, 'w').close())).start()\n"
            "atexit.register(lambda: print('atexit ran'))\n"
            "print('unflushed', end='')\n"
            "_leave(sys.argv[1] if sys.argv[1] != 'none' else None)\n")
    for arg, rc in (("none", 0), ("refused", 1)):
        r = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code, arg], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == rc and done.exists()
        assert r.stdout == "unflushedatexit ran\n"
        assert r.stderr == ("refused\n" if rc else "")
        done.unlink()
    ok = subprocess.run([str(LIVEMIG), "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("livemig ")


def test_the_verbose_line_shows_each_phase_and_what_was_ray_s_own():
    from cluster.cli import _phase_line
    wall = {"ray_start_s": 1.6, "total_s": 6.0, "ray_s": {"start_s": 1.6, "actor_processes_s": 0.9, "shutdown_s": 0.3},
            "phases": {"build_s": 1.4, "warmup_s": 0.5, "migrations_s": 1.2, "after_s": 0.5, "collect_s": 0.0,
                       "teardown_s": 0.4}}
    line = _phase_line(0.3, 0.4, wall, 6.5)
    assert line.startswith("wall clock: imports 0.30, load 0.10, Ray start 1.60, build 1.40 (Ray's actor processes 0.90)")
    assert "teardown 0.40 (Ray's shutdown 0.30), result and table 0.10; run 6.00 s; command 6.50 s" in line
    assert line.endswith("Ray's own 2.80 s, livemig's 3.70 s (migrations 1.20)")
    # Without /proc: the run's phases alone, Ray's part counted against the run.
    assert _phase_line(0, 0, wall, 0).endswith("run 6.00 s; Ray's own 2.80 s, livemig's 3.20 s (migrations 1.20)")
