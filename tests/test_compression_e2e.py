"""Migrations with compression end to end (real Ray): each encoding verifies,
XBZRLE really sends deltas, and incompressible memory costs nothing extra."""
import pytest

from cluster.runner import RunOptions, run_scenario
from cluster.scenario import parse_scenario
from tests.conftest import scenario_text

MEMWRITE = '{ kind = "memwrite", writes_per_s = 20000, bytes_per_write = 64, working_set_gib = 0.05 }'
ERP = ('{ kind = "erp", ops_per_s = 2000, working_set_gib = 0.05, log_mib = 4, session_mib = 2, '
       'max_downtime_ms = 500 }')
RANDOM = "content = { zero = 0.0, text = 0.0, structured = 0.0, random = 1.0 }"


def _run(workload: str, compression: str, *, extra_vm: str = "", migration: str = "", gbps: float = 1) -> dict:
    text = scenario_text(f"c-{compression}", memory_gib=0.25, workload=workload, gbps=gbps, dilation=1.0,
                         downtime_ms=30, extra_vm=extra_vm,
                         migration=f'compression = "{compression}"\nxbzrle_cache_mib = 128\nbatch_pages = 16\n{migration}')
    r = run_scenario(parse_scenario(text, "test.toml"), RunOptions())
    assert r["status"] == "completed" and r["verified"] is True, r.get("stop_reason")
    assert r["emulation"]["fidelity"]["saturation"] < 0.05
    return r


def test_zstd_migration_compresses_and_verifies(ray_cluster):
    r = _run(ERP, "zstd")
    c = r["compression"]
    assert c["method"] == "zstd" and c["zstd_level"] == 1
    assert r["pages"]["compressed"] > 0 and r["pages"]["delta"] == 0
    assert 0.1 < c["memory_compress_rate"] < 0.8
    assert c["compress_cpu_seconds"] > 0 and c["decompress_cpu_seconds"] > 0
    # Every page is accounted for by exactly one encoding.
    assert sum(r["pages"].values()) >= r["memory_bytes"] / 4096
    assert r["app"]["max_downtime_ms"] == 500 and r["app"]["survived"] is (r["downtime_ms"] <= 500)


def test_xbzrle_sends_deltas_for_small_writes_and_verifies(ray_cluster):
    r = _run(MEMWRITE, "xbzrle")
    x = r["compression"]["xbzrle"]
    assert r["iterations"] >= 2
    assert r["pages"]["delta"] > 0 and x["pages"] > 0
    # QEMU's xbzrle pages: every cache hit (deltas, unchanged pages and overflows alike).
    hits = r["pages"]["delta"] + r["compression"]["unchanged_pages"] + x["overflow"]
    assert x["pages"] == pytest.approx(hits, rel=0.01)
    assert x["cache_size"] == pytest.approx(128 * 2**20, rel=0.01)
    assert x["cache_miss"] > 0 and 0 < x["cache_miss_ratio_overall"] < 1
    assert 0 <= x["cache_miss_rate"] < 1  # the last period's (QEMU's): may be all hits
    # QEMU's encoding_rate is the last period's (a second at least): here the one of the first round, 0.
    assert x["encoding_ratio_overall"] > 5  # 64-byte writes: deltas far smaller than pages
    assert set(x) == {"cache_size", "bytes", "pages", "cache_miss", "cache_miss_rate", "encoding_rate", "overflow",
                      "cache_miss_ratio_overall", "encoding_ratio_overall"}
    assert r["compression"]["memory_compress_rate"] < 1


def test_xbzrle_with_zstd_on_two_consumers_verifies(ray_cluster):
    """One page cache per VM shared by two consumers on two connections. The guest writes
    steadily (a video workload's 25 frames a second decided, by where they fell, between two passes,
    whose second sends no delta yet, and three)."""
    text = scenario_text("c-both", memory_gib=0.25, workload=MEMWRITE, gbps=1, dilation=0.5, downtime_ms=30,
                         migration='compression = "xbzrle+zstd"\nxbzrle_cache_mib = 64\nconsumers = 2\nbatch_pages = 16')
    text = text.replace('nics = [{ name = "eth0", speed_gbps = 1 }]',
                        'nics = [{ name = "eth0", speed_gbps = 1 }, { name = "eth1", speed_gbps = 1 }]')
    text = text.replace('[[network.links]]\nfrom = "src:eth0"\nto = "dst:eth0"\nrtt_ms = 0.2\n', "")
    r = run_scenario(parse_scenario(text, "test.toml"), RunOptions())
    assert r["status"] == "completed" and r["verified"] is True, r.get("stop_reason")
    assert len(r["links"]) == 2
    assert r["pages"]["delta"] > 0 and r["pages"]["compressed"] > 0


@pytest.mark.slow  # long end to end: make test-slow
def test_incompressible_memory_costs_no_time(ray_cluster):
    plain = _run('{ kind = "idle" }', "none", extra_vm=RANDOM)
    packed = _run('{ kind = "idle" }', "zstd", extra_vm=RANDOM)
    # Random pages come from a pool of templates: a batch holding two copies compresses a little.
    assert packed["compression"]["memory_compress_rate"] == pytest.approx(1.0, abs=0.02)
    assert plain["compression"]["memory_compress_rate"] == 1.0
    assert packed["pages"]["compressed"] < 0.05 * packed["pages"]["normal"]
    assert packed["total_time_s"] <= 1.10 * plain["total_time_s"]
