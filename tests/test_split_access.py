"""Guest read access patterns for split migration: a running guest marks the
pages it reads and writes in its access bitmap (the emulated EPT accessed
bits), the host folds them into the 8-bit history (agents/split/history.py),
and a read-mostly hot set ends up with the highest chunk histories while
its reads dirty nothing."""
from __future__ import annotations

import time

import numpy as np
import pytest

from agents.guest.content import assign_classes, fill_image, template_pools
from agents.guest.vcpus import Guest
from agents.guest.workloads import HotsetWriter, ReadMostly, footprint_gib, make_workload
from agents.split.history import AccessHistory, bitmap_bytes
from agents.split.splitting import lru_split
from cluster.scenario import ScenarioError, parse_scenario
from tests.conftest import scenario_text

NPAGES, PAGE = 2048, 4096
MIX = {"zero": 0.0, "text": 0.4, "structured": 0.3, "random": 0.3}


@pytest.fixture
def guest_with_access():
    made = []

    def build(workload):
        pools, classes = template_pools(1), assign_classes(NPAGES, MIX, 1)
        pages = np.zeros((NPAGES, PAGE), dtype=np.uint8)
        fill_image(pages, classes, pools, 1)
        g = Guest(pages, workload, classes, pools, 2, dilation=1.0, fault_s=0.0, seed=1,
                  access=np.zeros(bitmap_bytes(NPAGES), dtype=np.uint8))
        made.append(g)
        return g

    yield build
    for g in made:
        g.stop()


def test_read_mostly_workload_reads_its_read_set_and_writes_only_its_working_set():
    wl = ReadMostly(NPAGES, 1.0, np.random.default_rng(0), reads_per_s=10_000, read_set_pages=512,
                    dirty_pages_per_s=1_000, working_set_pages=64)
    reads, writes = wl.reads(1_100), wl.step(1_100)
    assert len(reads) == 1_000 and len(writes) == 100
    assert reads.min() >= NPAGES - 512 and reads.max() < NPAGES
    assert writes.max() < 64 and wl.footprint == 64
    scaled = ReadMostly(NPAGES, 0.25, np.random.default_rng(0), 10_000, 512)
    assert len(scaled.reads(400)) == 100 and len(scaled.step(400)) == 0  # a real page stands for 4


def test_memcached_gets_read_their_values():
    wl = HotsetWriter(NPAGES, 1.0, np.random.default_rng(0), ops_per_s=1000, write_fraction=0.1, zipf_s=1.2,
                      working_set_pages=1024)
    assert len(wl.reads(1000)) == 900 and len(wl.step(1000)) == 100


def test_running_guest_marks_reads_and_writes_and_its_hot_set_wins_the_split(guest_with_access):
    wl = ReadMostly(NPAGES, 1.0, np.random.default_rng(0), reads_per_s=200_000, read_set_pages=256,
                    dirty_pages_per_s=20_000, working_set_pages=64)
    g = guest_with_access(wl)
    hist = AccessHistory(NPAGES, chunk_pages=32)
    g.start_dirty_log()
    g.start()
    for _ in range(4):  # four aging periods of two collections each
        for _ in range(2):
            time.sleep(0.05)
            hist.collect(g.access)
        hist.age()
    g.pause()
    dirty = g.harvest()
    read_set = np.arange(NPAGES - 256, NPAGES)
    assert (hist.page[read_set] >= 0x20).all(), "every hot page was read in the last aging periods"
    assert not hist.page[64:NPAGES - 256].any(), "pages outside the sets were never accessed"
    assert dirty.max() < 64, "reads dirty nothing"
    main = lru_split(hist.chunk, capacity=10)  # 64 + 256 pages = 2 + 8 chunks of 32
    assert main[:2].all() and main[-8:].all() and main.sum() == 10


def test_scenario_accepts_read_mostly_and_checks_its_sets_fit():
    wl = '{ kind = "readmostly", reads_per_s = 1000, read_set_gib = 2, working_set_gib = 1, dirty_pages_per_s = 10 }'
    vm = parse_scenario(scenario_text("r", memory_gib=4, workload=wl), "r.toml").vms[0]
    assert vm.workload.read_set_gib == 2
    assert footprint_gib(vm.workload.model_dump(), 4) == 1
    assert make_workload(vm.workload.model_dump(), 4096, 1 / 256, 0).footprint == 1024
    too_big = '{ kind = "readmostly", reads_per_s = 1000, read_set_gib = 3.5, working_set_gib = 1 }'
    with pytest.raises(ScenarioError, match="read_set_gib"):
        parse_scenario(scenario_text("r", memory_gib=4, workload=too_big), "r.toml")
