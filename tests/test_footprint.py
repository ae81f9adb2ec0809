"""The resource guard (cluster/footprint.py): a run that does not fit this
machine is refused in one line naming a memory_scale that fits."""
from __future__ import annotations

import math
import re
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.footprint import (ACTOR_RSS_BYTES, IMAGE_BYTES_PER_PAGE, RAY_BASE_BYTES, Machine, disk_refusal,
                               footprint, predicted_wall_s, refusal, this_machine, wall_refusal)
from cluster.scaling import Scale
from cluster.scenario import parse_scenario
from tests.conftest import LIVEMIG, ROOT

GIB = 1 << 30


def pairs(n: int, memory_gib: float, memory_scale: float) -> str:
    """n source/destination pairs, one VM of `memory_gib` migrating in each."""
    text = f'name = "pairs"\n[emulation]\nmemory_scale = {memory_scale}\n'
    for i in range(n):
        for h, role in ((f"s{i}", "source"), (f"d{i}", "destination")):
            text += f'[[hosts]]\nname = "{h}"\nrole = "{role}"\nmemory_gib = 4096\nnics = [{{ name = "e0", speed_gbps = 10 }}]\n'
    for i in range(n):
        text += f'[[vms]]\nname = "vm{i}"\nhost = "s{i}"\nmemory_gib = {memory_gib}\n'
        text += f'[[migrations]]\nvm = "vm{i}"\nto = "d{i}"\n'
    return text


def test_images_count_on_both_ends_with_their_logs():
    sc = parse_scenario(pairs(2, 1.0, 1 / 64), "pairs.toml")
    fp = footprint(sc, Scale(1 / 64, 1.0))
    pages = GIB // 64 // 4096
    # Four images (two sources, two destinations), plus one ring per connection.
    assert 4 * pages * IMAGE_BYTES_PER_PAGE < fp.shm_bytes < 4 * pages * IMAGE_BYTES_PER_PAGE + 2 * 64 << 20
    assert fp.processes == 4 + 2 + 2  # hosts, links, guests
    assert fp.fixed_bytes == RAY_BASE_BYTES + 8 * ACTOR_RSS_BYTES


def test_a_run_that_fits_is_not_refused():
    sc = parse_scenario(pairs(1, 1.0, 1 / 64), "pairs.toml")
    assert refusal(footprint(sc, Scale(1 / 64, 1.0)), Machine(8 * GIB, 8 * GIB), Scale(1 / 64, 1.0)) is None


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), gib=st.sampled_from([16, 32, 64, 128]), shm=st.integers(1, 64), mem=st.integers(2, 64))
def test_the_scale_it_names_fits(n, gib, shm, mem):
    scale = Scale(1.0 / 16, 1.0)
    sc = parse_scenario(pairs(n, gib, scale.memory_scale), "pairs.toml")
    machine = Machine(shm * GIB, mem * GIB)
    why = refusal(footprint(sc, scale), machine, scale)
    if why is None or "alone do not fit" in why:
        return
    fit = float(why.rsplit("memory_scale = ", 1)[1].split()[0])
    assert fit < scale.memory_scale and math.log2(fit).is_integer()
    smaller = Scale(fit, 1.0)
    sc2 = parse_scenario(pairs(n, gib, fit), "pairs.toml")
    assert refusal(footprint(sc2, smaller), machine, smaller) is None


def test_livemig_run_refuses_what_does_not_fit_here_in_one_line(tmp_path):
    # Enough 7.5 GiB-per-host pairs to need twice this machine's free shared memory.
    n = max(2, math.ceil(2 * this_machine().shm_free / (15 * GIB)))
    path = tmp_path / "too-big.toml"
    path.write_text(pairs(n, 60, 0.125))
    p = subprocess.run([LIVEMIG, "run", str(path), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "memory_scale" in lines[0] and "would fit" in lines[0], p.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_that_would_last_for_days_is_refused_naming_a_dilation(tmp_path):
    # 16 GiB (a quarter of it zero pages) over 10 Mbit/s: about 2.9 emulated hours; at dilation 10, 29 real hours.
    text = pairs(1, 16.0, 1 / 1024).replace("speed_gbps = 10", "speed_gbps = 0.01")
    (tmp_path / "slow.toml").write_text(text.replace("[emulation]\n", "[emulation]\ndilation = 10\n"))
    sc = parse_scenario(text, "slow.toml")
    emulated = predicted_wall_s(sc, Scale(1 / 1024, 1.0))
    assert 2 * 3600 < emulated < 4 * 3600
    assert wall_refusal(predicted_wall_s(sc, Scale(1 / 1024, 1.0)), Scale(1 / 1024, 1.0)) is None
    why = wall_refusal(predicted_wall_s(sc, Scale(1 / 1024, 10.0)), Scale(1 / 1024, 10.0))
    assert why.startswith("emulation.dilation: at 10 "), why
    fits = float(re.search(r"dilation = ([0-9.]+) would take a day", why).group(1))
    assert fits * emulated == pytest.approx(24 * 3600, rel=0.01)
    proc = subprocess.run([LIVEMIG, "run", str(tmp_path / "slow.toml"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "slow.toml: emulation.dilation: at 10 " in proc.stderr


def test_disk_images_that_do_not_fit_the_run_directory_are_refused():
    assert disk_refusal(10 * GIB, 100 * GIB) is None
    why = disk_refusal(10 * GIB, 11 * GIB)
    assert why.startswith("emulation.memory_scale: the disk images need 10.0 GiB") and "11.0 GiB free" in why
