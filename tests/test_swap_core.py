"""The swap-assisted baseline's destination (agents/split/swap.py) without
Ray: LRU victims, real bytes through a swap file, re-sent swapped pages read
in first, read-ahead on faults, device costs as the model says."""
from __future__ import annotations

import numpy as np
import pytest

from agents.split.swap import DEVICES, READ_AHEAD, SWAP_CLUSTER, SwapDevice, SwapSpace

PAGE = 4096


def space(n=64, capacity=16, device="ssd", scale=1.0):
    image = np.zeros((n, PAGE), dtype=np.uint8)
    return image, SwapSpace(image, capacity, DEVICES[device], scale)


def test_device_costs_follow_the_model():
    d = SwapDevice("x", access_s=0.01, read_bytes_s=4096e3, write_bytes_s=4096e3)
    assert d.write_s(SWAP_CLUSTER) == pytest.approx(0.01 + SWAP_CLUSTER / 1e3)
    assert d.write_s(SWAP_CLUSTER + 1) == pytest.approx(0.02 + (SWAP_CLUSTER + 1) / 1e3)
    assert d.read_s(3, 24) == pytest.approx(0.03 + 0.024)
    assert DEVICES["hdd"].write_s(1 << 18) > 10 * DEVICES["ssd"].write_s(1 << 18) / 4  # 1 GiB: HDD far slower


def test_receiving_beyond_capacity_swaps_out_the_least_recent_and_keeps_every_byte():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (64, PAGE), dtype=np.uint8)
    image, sp = space()
    for start in range(0, 64, 8):
        idx = np.arange(start, start + 8)
        sp.received(idx, lambda idx=idx: image.__setitem__(idx, truth[idx]))
        assert sp.resident_count <= 16
    assert sp.resident[48:].all() and not sp.resident[:48].any(), "the last received stay, the oldest went"
    assert sp.swapped_out == 48
    assert np.array_equal(sp.contents(), truth)
    assert not image[:48].any(), "swapped-out frames are freed"


def test_a_resent_swapped_page_is_read_in_before_it_is_overwritten_and_faults_read_ahead():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 256, (64, PAGE), dtype=np.uint8)
    image, sp = space()
    all_pages = np.arange(64)
    sp.received(all_pages, lambda: image.__setitem__(all_pages, truth))
    before = sp.swapped_in
    page = np.array([3])
    truth[3] = 7
    sp.received(page, lambda: image.__setitem__(page, truth[page]))
    assert sp.swapped_in == before + 1
    cost = sp.access(np.array([10]))  # a fault reads the page and the next swapped ones
    assert sp.swapped_in == before + 1 + READ_AHEAD and cost > 0
    assert sp.resident[10:10 + READ_AHEAD].all()
    assert np.array_equal(sp.contents(), truth)
    assert sp.resident_count <= 16
    sp.close()


def test_costs_scale_with_the_pages_a_real_page_stands_for():
    _, fine = space(scale=1.0)
    _, coarse = space(scale=1 / 64)
    for sp in (fine, coarse):
        idx = np.arange(64)
        sp.received(idx, lambda: None)
    assert coarse.device_s == pytest.approx(64 * fine.device_s, rel=0.3)


def test_a_zero_page_never_written_takes_no_memory_until_touched():
    from agents.techniques.swap import SwapDestination
    image = np.zeros((32, PAGE), dtype=np.uint8)
    resident = np.zeros(32, dtype=np.uint8)
    dest = SwapDestination(image, resident, np.zeros(8, dtype=np.uint8), 0.25, "ssd", 1.0, 1.0)
    zero = np.zeros(32, dtype=bool)
    zero[16:] = True
    dest.received(np.arange(32), zero, lambda: None)
    assert dest.space.resident_count == 8 and dest.space.swapped_out == 8, "only the 16 pages with contents count"
    dest.fault(np.array([20]))  # first touch of a zero page: resident, no read from the device
    assert resident[20] == 1 and dest.space.swapped_in == 0
    dest.close()


def test_a_page_first_received_as_zero_swapped_then_resent_with_contents_is_not_read_back_stale():
    """The bug the memcached reproduction found: a slot left behind made the swap file's stale copy win."""
    from agents.techniques.swap import SwapDestination
    rng = np.random.default_rng(3)
    image = np.zeros((32, PAGE), dtype=np.uint8)
    resident = np.zeros(32, dtype=np.uint8)
    dest = SwapDestination(image, resident, np.zeros(8, dtype=np.uint8), 0.25, "ssd", 1.0, 1.0)
    truth = np.zeros((32, PAGE), dtype=np.uint8)
    for rnd in range(6):
        idx = rng.choice(32, 12, replace=False)
        zero = rng.random(12) < 0.4
        data = rng.integers(0, 256, (12, PAGE), dtype=np.uint8)
        data[zero] = 0
        truth[idx] = data
        unmapped = idx[zero & ~dest.space.present[idx]]
        dest.received(idx, zero, lambda idx=idx, data=data: image.__setitem__(idx, data))
        resident[unmapped] = 1  # what the receiver's post-copy marks used to do to this map: must not matter
        assert np.array_equal(dest.space.contents(), truth), f"round {rnd}"
        assert dest.space.resident_count <= 8
    dest.close()


@pytest.mark.parametrize("device", ["ssd", "hdd"])
def test_resent_pages_read_back_in_slot_order_seek_once_per_run_on_an_hdd_only(device):
    """Pages swapped out in address order sit in ascending slots; re-sent in address order
    (QEMU's walk) they are read back as one run: an HDD seeks once for it, an SSD pays its
    access time per read-ahead window."""
    image, sp = space(n=64, capacity=16, device=device)
    for start in range(0, 64, 8):
        idx = np.arange(start, start + 8)
        sp.received(idx, lambda: None)
    assert np.array_equal(np.diff(sp.slot[:48]), np.ones(47)), "swapped out in page order, ascending slots"
    d = DEVICES[device]
    before = sp.device_s
    sp._page_in(np.arange(0, 16), faults=16 // READ_AHEAD, seeks=1)
    read = sp.device_s - before
    expected_ios = 1 if device == "hdd" else 16 // READ_AHEAD
    assert read == pytest.approx(expected_ios * d.access_s + 16 * PAGE / d.read_bytes_s)
    # Through `received`: pages 24-39 re-sent, two read-ahead windows, one run of slots.
    before, write_before = sp.device_s, sp.swapped_out
    sp.received(np.arange(24, 40), lambda: None)
    cost = sp.device_s - before - d.write_s(sp.swapped_out - write_before)
    assert cost == pytest.approx((1 if device == "hdd" else 2) * d.access_s + 16 * PAGE / d.read_bytes_s)
