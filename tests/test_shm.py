"""Shared-memory regions: a prefaulted image really holds its pages."""
from __future__ import annotations

import os

import pytest

from agents.datapath import shm
from agents.datapath.shm import Region

SIZE = 8 << 20


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def region():
    r = Region.create(shm.region_path(f"{os.getpid()}_test", "prefault"), SIZE)
    yield r
    r.close()
    r.unlink()


@pytest.mark.parametrize("how", ["madvise", "a write per page"])
def test_prefault_allocates_every_page_and_keeps_contents(region, how, monkeypatch):
    if how != "madvise":
        monkeypatch.setattr(shm, "MADV_POPULATE_WRITE", -1)  # an invalid advice: take the fallback
    assert allocated(region.path) == 0  # a fresh region holds no pages yet
    pages = region.pages()
    pages[3, :8] = 7  # contents written before the prefault stay
    assert allocated(region.path) == 4096
    region.prefault()
    assert allocated(region.path) == SIZE
    assert (pages[3, :8] == 7).all() and not pages[4:].any() and not pages[:3].any()


def test_a_prefaulted_region_is_resident_in_the_process_that_mapped_it(region):
    assert shm.resident_bytes(region.path) == 0  # mapped, never touched
    region.pages()[5, 0] = 1
    assert shm.resident_bytes(region.path) == 4096
    region.prefault()
    assert shm.resident_bytes(region.path) == SIZE

