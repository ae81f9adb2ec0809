"""Technique options: each setting of a migration declared once.

An `Option` is a name, a default, a unit, an allowed range and one line of
help, in the spirit of QEMU's migration parameters (migration/options.c) and
ns-3's attributes. The scenario schema (cluster/scenario.py), its validation
and `livemig techniques` are all generated from these declarations, so a
setting's default or bound is written in exactly one place.

Options come in groups named after what they govern; a technique declares the
groups (or single options) it understands. Where a QEMU migration parameter
plays the same part, `qemu_name` names it: downtime_limit_ms is QEMU's
downtime-limit, bandwidth_cap_gbps its max-bandwidth, consumers roughly its
multifd-channels, xbzrle_cache_mib its xbzrle-cache-size, zstd_level its
multifd-zstd-level. Where a setting chooses between the papers' behaviour and
QEMU's (stop_rule, switchover_bandwidth), each choice is named after its source.

Defaults are written as the schema always had them (300, not 300.0), so a
dumped scenario reads the same as before. Pure declarations: no pydantic, no
Ray, no numpy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

PAGE_SIZE = 4096
# Bounds are physical: a value past them cannot describe a real migration and
# would hang or crash the emulation (a setup of 1e12 ms, a cache of 1e308 MiB).
MAX_PAUSE_MS = 60_000  # a minute: no setup or resume phase of a live migration takes longer
MAX_MIB = 64 << 20  # 64 TiB in MiB: the largest server's memory; no buffer or cache is bigger
PAGE_MIB = PAGE_SIZE / 2**20  # one page, in MiB: the smallest slice or buffer that holds anything


@dataclass(frozen=True)
class Option:
    """One setting of a technique: default, unit, allowed values and help."""

    name: str
    default: object
    unit: str = ""
    help: str = ""
    type: type = float
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is allowed (and then means "work it out")
    qemu_name: str = ""

    def bounds(self) -> dict[str, float]:
        """The numeric bounds that are set, by pydantic's names (gt, ge, le, lt)."""
        return {k: v for k, v in (("gt", self.gt), ("ge", self.ge), ("le", self.le), ("lt", self.lt))
                if v is not None}

    def allowed(self) -> str:
        """The allowed values in words, e.g. "1 to 64", "> 0", "image | time-sliced"."""
        if self.choices:
            text = " | ".join(self.choices)
        elif self.type is bool:
            text = "true | false"
        else:
            text = range_text(self.bounds()) or f"any {self.type.__name__}"
        return text + (" (or unset)" if self.optional else "")

    def description(self) -> str:
        """The help with its unit and QEMU name, one paragraph (the option's text in `livemig schema`)."""
        unit = f" Unit: {self.unit}." if self.unit else ""
        qemu = f" QEMU: {self.qemu_name}." if self.qemu_name else ""
        return f"{self.help}.{unit}{qemu}"

    def describe(self) -> dict:
        """A JSON-ready description (for `livemig techniques --json`)."""
        d = asdict(self)
        d["type"] = self.type.__name__
        d["choices"] = list(self.choices)
        d["allowed"] = self.allowed()
        return d


def range_text(b: dict[str, float]) -> str:
    """Bounds by pydantic's names (gt, ge, le, lt) in words: "1 to 64", "> 0", ">= 1, < 100"."""
    low = b.get("ge", b.get("gt"))
    high = b.get("le", b.get("lt"))
    if "ge" in b and "le" in b:
        return f"{_num(low)} to {_num(high)}"
    parts = [f"{op} {_num(b[k])}" for k, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if k in b]
    return ", ".join(parts)


def _num(x: float) -> str:
    return f"{x:,g}" if isinstance(x, float) else f"{x:,}"


# What every technique has: the stop-and-copy, the rate, the batching and the fixed costs.
COMMON: tuple[Option, ...] = (
    Option("downtime_limit_ms", 300, "ms", "Longest pause allowed: iterating stops once the rest fits in it",
           float, gt=0, le=3_600_000, qemu_name="downtime-limit"),  # an hour: a longer pause is not live
    Option("bandwidth_cap_gbps", None, "Gbit/s", "Cap on the migration's own sending over all its links together, "
           "while it iterates (the links keep their NIC speed)", float, ge=0.001, le=1000, optional=True,
           qemu_name="max-bandwidth"),  # 1 Mbit/s to 1 Tbit/s, as NICs
    Option("switchover_bandwidth", "link", "", "Rate of the stop-and-copy: link (QEMU: max-bandwidth is lifted "
           "when the VM stops, the rest leaves at the link's speed) or capped (bandwidth_cap_gbps still applies)",
           str, choices=("link", "capped")),
    Option("device_state_kib", 256, "KiB", "CPU and device state sent during the downtime", float, ge=0,
           le=1 << 20),  # 1 GiB: more than any device's state (a GPU's memory travels as RAM)
    Option("batch_pages", None, "pages", "Pages per batch on a connection (default: a few emulated ms of link time)",
           int, ge=1, le=4096, optional=True),
    Option("setup_ms", 50, "ms", "Setup before the first iteration (connections, dirty logging on)", float, ge=0,
           le=MAX_PAUSE_MS),
    Option("resume_ms", 0, "ms", "Fixed part of every downtime: suspend, restore devices, resume "
           "(Xen 4.1: about 300 ms)", float, ge=0, le=MAX_PAUSE_MS),
    Option("tcp_user_timeout_ms", 30_000, "ms", "How long sent batches may wait unacknowledged (the link down, "
           "the destination gone) before the connection gives up: pre-copy aborts (the VM stays on its source), "
           "post-copy pauses (Linux's TCP_USER_TIMEOUT; the default is libvirt's keepalive: 5 probes 5 s apart)",
           float, gt=0, le=3_600_000),
)

# Iterative pre-copy: how an iteration is cut and when iterating stops.
PRECOPY: tuple[Option, ...] = (
    Option("strategy", "image", "", "image: each iteration a pass over the dirty image (PMigrate); time-sliced: "
           "a slice of slice_mib after each dirty-log fetch (vanilla KVM)", str, choices=("image", "time-sliced")),
    Option("slice_mib", 2.0, "MiB", "Data put on the wire per iteration by the time-sliced strategy (at least one 4 KiB page)", float,
           ge=PAGE_MIB,
           le=MAX_MIB),
    Option("stop_rule", "pass", "", "pass: the stop rule is checked after each pass over the dirty image "
           "(PMigrate's image-oriented iteration); qemu: about every 100 ms, the dirty log synced mid-pass once the "
           "rest of the pass fits in bandwidth x downtime limit (QEMU's migration_iteration_run)", str,
           choices=("pass", "qemu")),
    Option("max_iterations", 30, "", "Stop iterating after this many iterations", int, ge=1, le=1_000_000),
    Option("stall_iterations", 3, "", "Stop when the dirty set has not shrunk for this many iterations", int, ge=1,
           le=1_000_000),  # max_iterations' bound
    Option("max_sent_ratio", 3.0, "x memory", "Stop when the bytes sent reach this multiple of the VM's memory",
           float, ge=1, le=10_000),  # sending the memory 10,000 times over is no longer a migration
    Option("io_thread_taken", 0.0, "fraction", "Share of the I/O thread a time-sliced migration takes from an "
           "I/O-bound guest while pre-copying", float, ge=0, le=1),
)

# PMigrate's parallel pipeline: producer -> consumers -> receivers.
PIPELINE: tuple[Option, ...] = (
    Option("consumers", 1, "threads", "Consumer threads, each with its own connection, spread over the NIC pairs",
           int, ge=1, le=64, qemu_name="multifd-channels"),
    Option("address_space_lock", "global", "", "Guest-mapping lock: global (all exclusive), rwlock (mapping "
           "shared) or range (only overlapping ranges exclude)", str, choices=("global", "rwlock", "range")),
    Option("memory_pool_mib", 128, "MiB", "Bounded memory pool per pipeline stage, emulated", float, gt=0,
           le=MAX_MIB),
    # Xen 4.1's tools/libxc/xc_domain_save.c: MAX_BATCH_SIZE 1024 pages (4 MiB) mapped and sent at a time.
    Option("task_pages", 1024, "pages", "Pages per task the producer hands a consumer, emulated (PMigrate on "
           "Xen 4.1: xc_domain_save's batch of 1024); with one consumer a task is a batch", int, ge=1,
           le=1 << 22),
)

# Page compression (agents/encodings/encoding.py).
COMPRESSION: tuple[Option, ...] = (
    Option("compression", "none", "", "zstd over each batch (multifd-zstd), XBZRLE deltas against a cache of "
           "sent pages, or both", str, choices=("none", "zstd", "xbzrle", "xbzrle+zstd"),
           qemu_name="multifd-compression"),
    Option("zstd_level", 1, "", "zstd compression level", int, ge=-7, le=22, qemu_name="multifd-zstd-level"),
    Option("xbzrle_cache_mib", 64, "MiB", "Cache of sent pages per VM, emulated", float, gt=0,
           le=MAX_MIB, qemu_name="xbzrle-cache-size"),  # and at most the VM's memory (cluster/scenario.py)
    Option("xbzrle_budget", None, "bytes", "Largest delta per page; a longer one is sent whole (default: a page)",
           int, ge=1, le=PAGE_SIZE, optional=True),
)

# Convergence control (agents/techniques/convergence.py): slowing a guest that
# dirties memory faster than pre-copy sends it. QEMU's auto-converge and
# dirty-limit with its parameter names and defaults (qapi/migration.json),
# and vMotion's SDPS. One method at a time.
CONVERGENCE: tuple[Option, ...] = (
    Option("auto_converge", False, "", "Throttle the vCPUs while the guest dirties faster than the threshold "
           "allows (QEMU's auto-converge capability)", bool, qemu_name="auto-converge"),
    Option("throttle_trigger_threshold", 50, "%", "Dirtied bytes over transferred bytes in a sync period above "
           "which a period counts as not converging", int, ge=1, le=100, qemu_name="throttle-trigger-threshold"),
    Option("cpu_throttle_initial", 20, "%", "First throttle, once two periods did not converge", int, ge=1, le=99,
           qemu_name="cpu-throttle-initial"),
    Option("cpu_throttle_increment", 10, "%", "Throttle added each time two more periods did not converge", int,
           ge=1, le=99, qemu_name="cpu-throttle-increment"),
    Option("max_cpu_throttle", 99, "%", "Highest throttle (auto-converge and SDPS)", int, ge=1, le=99,
           qemu_name="max-cpu-throttle"),
    Option("cpu_throttle_tailslow", False, "", "Step by less than the increment near the end: only as much as "
           "brings the dirty rate down to the threshold", bool, qemu_name="cpu-throttle-tailslow"),
    Option("dirty_limit", False, "", "Once two periods did not converge, cap every vCPU's dirty rate at "
           "vcpu_dirty_limit_mbytes_s (QEMU's dirty-limit capability)", bool, qemu_name="dirty-limit"),
    # Bounded by memory bandwidth: no vCPU dirties more than ~100 GB/s.
    Option("vcpu_dirty_limit_mbytes_s", 1.0, "MiB/s", "Dirty-rate cap per vCPU under dirty_limit", float, gt=0,
           le=100_000, qemu_name="vcpu-dirty-limit"),
    Option("x_vcpu_dirty_limit_period_ms", 1000, "ms", "How often the guest measures each vCPU's dirty rate and "
           "adjusts its sleep under dirty_limit", int, ge=1, le=1000, qemu_name="x-vcpu-dirty-limit-period"),
    Option("sdps", False, "", "Stun During Page Send (vMotion): when pre-copy stops making progress, delay the "
           "vCPUs so the guest dirties below the transfer rate", bool),
    Option("sdps_target_ratio", 0.5, "x transfer rate", "Dirty rate SDPS holds the guest at, as a share of the "
           "transfer rate", float, gt=0, lt=1),
)

# Post-copy (agents/techniques/postcopy.py): QEMU's postcopy-ram capability
# (the technique itself) and when to switch; Hines and Gopalan's adaptive pre-paging.
POSTCOPY: tuple[Option, ...] = (
    Option("postcopy_after_iterations", None, "", "Switch to post-copy after this many pre-copy rounds "
           "(0: pure post-copy; unset: only when pre-copy stops without converging, or on a start-postcopy event)",
           int, ge=0, le=1_000_000, optional=True),
    Option("postcopy_on_stall", True, "", "Switch to post-copy when pre-copy stops without converging "
           "(stalled, max-iterations, max-sent) instead of a long stop-and-copy", bool),
    Option("adaptive_prepaging", True, "", "Push the remaining pages outward from the most recent fault "
           "(Hines' bubbling around a pivot) instead of in page order", bool),
    Option("postcopy_preempt", False, "", "Send requested pages on a channel of their own instead of behind "
           "the background push's socket buffers (10 MiB)", bool, qemu_name="postcopy-preempt"),
)

# After a migration to a host that pages (split, swap): how long the run keeps watching.
OBSERVE_AFTER = Option("observe_after_s", 1.0, "s", "How long the run goes on after the switch-over, to watch "
                       "paging and the application's recovery", float, ge=0, le=86_400)

# Split migration (agents/techniques/split.py, S-memV §IV-B, IV-C, V-D): the
# chunk the memory is split and paged by, the splitting policy, and how the
# access history is kept before the migration.
SPLIT: tuple[Option, ...] = (
    Option("chunk_pages", 256, "pages", "Contiguous pages split and paged together (S-memV: 256, the best for "
           "remote paging); at most the VM's pages", int, ge=1, le=1 << 40),
    Option("split_policy", "lru", "", "lru: the chunks with the largest access history to the main host, and "
           "page-outs of the smallest (S-memV); random: both at random (its §V-D comparison)", str,
           choices=("lru", "random")),
    Option("history_collect_ms", 100, "ms", "How often the accessed bits are collected into the history", float,
           gt=0, le=60_000),
    Option("history_age_collections", 10, "", "Collections per aging period (the history shifts right after "
           "each period)", int, ge=1, le=1_000_000),
    OBSERVE_AFTER,
)

# Swap-assisted migration (agents/techniques/swap.py), S-memV's baseline: the
# destination's free memory as a share of the VM's, and its swap device.
SWAP: tuple[Option, ...] = (
    Option("swap_resident_share", 0.5, "fraction", "Share of the VM's memory the destination has free; the rest "
           "is paged to swap (S-memV: half)", float, gt=0, le=1),
    Option("swap_device", "ssd", "", "ssd: a SATA SSD (Crucial MX300: 0.1 ms, 530/510 MB/s); hdd: a 7200 rpm "
           "SATA disk (12.7 ms, 150 MB/s)", str, choices=("ssd", "hdd")),
    OBSERVE_AFTER,
)

# Policies of the management layer (agents/techniques/policy.py): a preset a
# scenario names, and the settings that replace its numbers. Flat options,
# as every other group: the schema, the per-migration overrides and
# `livemig techniques` are generated from flat declarations.
POLICY: tuple[Option, ...] = (
    Option("policy", "none", "", "Management-layer policy preset: nova (OpenStack Nova's libvirt defaults), "
           "nova-force (the same, force_complete on timeout), kubevirt (KubeVirt's defaults), none; the settings "
           "below replace a preset's numbers", str, choices=("none", "nova", "nova-force", "kubevirt")),
    Option("completion_timeout_s_per_gib", None, "s/GiB", "Give up pre-copy after this many seconds per GiB of "
           "memory (Nova's live_migration_completion_timeout; 0: none)", float, ge=0, le=1e6, optional=True),
    Option("timeout_action", None, "", "What a timeout does: cancel (the VM stays on its source) or force "
           "(post-copy where the technique has it, else stop-and-copy now); Nova's live_migration_timeout_action",
           str, choices=("cancel", "force"), optional=True),
    Option("progress_timeout_s", None, "s", "Time out when the remaining bytes reached no new low for this long "
           "(Nova's deprecated live_migration_progress_timeout, KubeVirt's progressTimeout; 0: none)", float, ge=0,
           le=1e6, optional=True),
    Option("downtime_max_ms", None, "ms", "Downtime limit reached in steps, replacing downtime_limit_ms "
           "(Nova's live_migration_downtime)", float, gt=0, le=3_600_000, optional=True),
    Option("downtime_steps", None, "", "Steps to reach downtime_max_ms (Nova's live_migration_downtime_steps)",
           int, ge=1, le=1000, optional=True),
    Option("downtime_delay_s_per_gib", None, "s/GiB", "Time between downtime steps, per GiB of memory "
           "(Nova's live_migration_downtime_delay)", float, ge=0, le=1e6, optional=True),
    Option("policy_monitor_period_s", 0.5, "s", "How often the policy looks at the migration and acts (Nova's "
           "libvirt driver polls the job every 0.5 s in _live_migration_monitor)", float, ge=0.01, le=3600),
    Option("hard_max_downtime_ms", None, "ms", "A stop-and-copy expected to pause the VM longer is refused: "
           "pre-copy goes on until a timeout, else the migration is cancelled", float, gt=0, le=3_600_000,
           optional=True),
)

# Storage migration (agents/techniques/storage.py, agents/datapath/mirror.py):
# where the disk goes and how its mirror behaves. QEMU's block mirror names
# where one fits (copy-mode, buf-size; a region is its MAX_IO_BYTES).
STORAGE: tuple[Option, ...] = (
    Option("target_datastore", None, "", "Datastore the VM's disk moves to (unset: the disk stays where it is, "
           "on storage both hosts reach)", str, optional=True),
    Option("copy_mode", "background", "", "background: guest writes mirrored asynchronously through the "
           "transmit buffer, switching to write-blocking while they outrun the data path (vMotion 5.1); "
           "write-blocking: every mirrored write waits for the destination (Storage vMotion)", str,
           choices=("background", "write-blocking"), qemu_name="copy-mode"),
    Option("mirror_buffer_mib", 16, "MiB", "Transmit buffer shared by the bulk copy (half of it at most) and "
           "mirrored writes, emulated", float, gt=0, le=MAX_MIB, qemu_name="buf-size"),
    Option("disk_region_mib", 1, "MiB", "Region the bulk copy reads and sends at a time, emulated", float, gt=0,
           le=1024),
    Option("disk_path", "auto", "", "Data path of the disk: auto (the cheapest the topology allows, as vMotion "
           "picks: array-offload, then storage-interface, then network) or one of them", str,
           choices=("auto", "array-offload", "storage-interface", "network")),
    Option("mirror_window_s", 0.5, "s", "Window over which the guest's mirrored write rate is compared with the "
           "data path's, to switch between background and write-blocking", float, gt=0, le=60),
)

# Disk dirty-bitmap migration (agents/techniques/block_dirty.py): PMigrate-KVM
# and QEMU's old block migration (block-migration.c): the disk's blocks are
# sent in the first iteration and the blocks dirtied since in later ones.
BLOCK_DIRTY: tuple[Option, ...] = (
    Option("disk_chunk_mib", 1, "MiB", "Disk chunk the dirty bitmap tracks and the disk producer sends "
           "(QEMU's BLK_MIG_BLOCK_SIZE is 1 MiB)", float, gt=0, le=1024),
)
