"""Scenario files: the schema of a migration experiment and its validation.

A scenario is TOML in physical units (GiB, Gbit/s, ms, pages/s, cores): hosts
with roles, the links between them, VMs and where they start, the migrations
(which VM goes from which host to which, with which technique, when) and
scheduled events. This module knows what a valid scenario is and turns every
problem into one line that names the file, the field path, what is wrong and
what is allowed. The migration options' schema is generated from the
techniques' declarations (agents/techniques/registry.py). `migration_plans()`
is the resolved view the runner and the predictor read. It knows nothing of
Ray, scaling or migration mechanics.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model,
                      model_validator)

from agents.techniques import registry
from agents.techniques.options import Option, range_text

PAGE_SIZE = 4096
GIB = 1 << 30
MIB = 1 << 20


class ScenarioError(Exception):
    """A scenario that cannot be used; `lines` holds one message per problem."""

    def __init__(self, lines: list[str]):
        lines = [_one_line(line) for line in lines]
        super().__init__("\n".join(lines))
        self.lines = lines


# Whatever str.splitlines() breaks at: a name or key holding one must not split a problem into two lines.
_LINE_BREAKS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def _one_line(text: str) -> str:
    """The text with line breaks and other control characters escaped (\\n, \\x1c)."""
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


class _Strict(BaseModel):
    # strict: TOML has types, so `vcpus = true` or `memory_gib = "0.5"` is a mistake, not a coercion;
    # no NaN or infinity: no physical quantity is either, and both poison every figure derived from them.
    # Field docstrings are the fields' descriptions in `livemig schema` (what editors show).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)


Fraction = Annotated[float, Field(ge=0, le=1)]

# --- physical bounds --------------------------------------------------------------
# Every number a scenario holds is bounded by what a real machine could have,
# so a value that validates cannot hang or crash a run (1e-300 Gbit/s, 1e12 ms,
# 1e308 MiB); NaN and infinity are refused everywhere (_Strict.allow_inf_nan).
MIN_GBPS = 0.001  # 1 Mbit/s: slower, a migration of even 1 GiB takes hours, and the emulation as long
MAX_GBPS = 1000.0  # 1 Tbit/s: above the fastest NIC sold (800 Gbit/s)
MAX_MEMORY_GIB = 65536  # 64 TiB: above the largest single servers (about 32 TiB)
MAX_MEMORY_MIB = MAX_MEMORY_GIB * 1024
MAX_DISK_GIB = 1 << 20  # 1 PiB of virtual disk
MAX_RATE_MBYTES_S = 125_000  # 1 Tbit/s in MByte/s: traffic or a reservation on the fastest link
MAX_MEM_BW_MBYTES_S = 100_000  # about a server's whole memory bandwidth (100 GB/s)
MAX_PAGES_S = 25_000_000  # that memory bandwidth in 4 KiB pages per second
MAX_WRITES_S = 2_000_000_000  # that memory bandwidth in 64-byte cache lines per second
MAX_OPS_S = 100_000_000  # 100 M requests/s: above the fastest in-memory stores on one VM
MAX_DILATION = 1000  # real seconds per emulated second: a 30 s migration then takes over 8 hours
MAX_SCHEDULE_S = 3600  # an experiment spans at most an emulated hour (at dilation 1, a real hour)
MAX_MS = 3_600_000  # an hour in ms: no pause or RTT a live migration could survive is longer
MAX_PAGE_COST_US = 10_000  # 10 ms of CPU per 4 KiB page (0.4 MB/s a core): far slower than any hypervisor
MAX_COUNT = 4096  # hosts, VMs, links, migrations or events in one scenario: a rack's worth and more
MAX_NICS = 64  # NICs per host: more than any server has ports
MAX_FILE_BYTES = 1 << 20  # 1 MiB: hundreds of times the largest shipped scenario; bigger is not hand-written
# A name: used in actor names, link names ("host:nic->host:nic") and the default run directory
# (runs/<scenario name>), so no "/", ":" or ">" and no leading dot (".." would leave runs/).
NAME = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
NAME_TEXT = "1 to 64 letters, digits, '_', '-' or '.', and does not start with '.'"

Gbps = Annotated[float, Field(ge=MIN_GBPS, le=MAX_GBPS)]
MemoryGib = Annotated[float, Field(gt=0, le=MAX_MEMORY_GIB)]
MemoryMib = Annotated[float, Field(gt=0, le=MAX_MEMORY_MIB)]
MbytesS = Annotated[float, Field(ge=0, le=MAX_RATE_MBYTES_S)]  # link traffic: MiB/s (2^20 bytes per second)
PagesS = Annotated[float, Field(ge=0, le=MAX_PAGES_S)]
OpsS = Annotated[float, Field(gt=0, le=MAX_OPS_S)]
RttMs = Annotated[float, Field(ge=0, le=10_000)]  # 10 s: beyond any metro or intercontinental path
ScheduleS = Annotated[float, Field(ge=0, le=MAX_SCHEDULE_S)]
PageCostUs = Annotated[float, Field(ge=0, le=MAX_PAGE_COST_US)]


class Nic(_Strict):
    name: str = Field(pattern=NAME)
    """The NIC's name, unique on its host; links name it "host:nic"."""
    speed_gbps: Gbps
    """Line rate in Gbit/s (10^9 bits per second)."""
    passthrough: bool = False
    """A pass-through NIC (SR-IOV / DirectPath I/O) belongs to its VM: no migration traffic can use it and it cannot be
    live-migrated."""


ROLES = ("source", "destination", "main", "sub-host")
Role = Literal[ROLES]


def _or(words: tuple[str, ...]) -> str:
    quoted = [repr(w) for w in words]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _roles_in(value: Any) -> Any:
    """One role or a list of them; checked here so a bad role is one line, not one per union branch."""
    if isinstance(value, str):
        if value not in ROLES:
            raise ValueError(f"Input should be {_or(ROLES)}")
        return value
    if isinstance(value, (list, tuple)) and value:
        bad = [r for r in value if r not in ROLES]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a role; allowed: {_or(ROLES)}")
        twice = [r for i, r in enumerate(value) if r in value[:i]]
        if twice:
            raise ValueError(f"{twice[0]!r} is listed twice; list each role once")
        return tuple(value)
    raise ValueError(f"needs a role or a non-empty list of roles ({_or(ROLES)})")


class Host(_Strict):
    name: str = Field(pattern=NAME)
    """The host's name, unique in the scenario."""
    role: Annotated[Role | tuple[Role, ...], BeforeValidator(_roles_in)]
    """What the host does: one role, or a list of them (a host may be the destination of one migration and the source
    of another)."""
    cores: Annotated[int, Field(ge=1, le=4096)] = 16
    """Physical cores; pipeline stages charge their CPU to them."""
    memory_gib: MemoryGib = 64
    """Memory in GiB (2^30 bytes), for the VMs placed on it."""
    nics: list[Nic] = Field(min_length=1, max_length=MAX_NICS)
    """The host's NICs."""
    storage_gbps: Gbps = 8.0
    """The storage interface (HBA) in Gbit/s: how fast the host copies between datastores it reaches (8 Gbit/s Fibre
    Channel by default)."""
    ray_node: str | None = Field(None, pattern=NAME)
    """The Ray node that plays this host: the name of a custom resource the node was started with (ray start
    --resources='{"node-b": 1}'); unset: wherever Ray places it."""

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.role,) if isinstance(self.role, str) else self.role


class BackgroundTraffic(_Strict):
    """A co-located VM's traffic sharing the link (e.g. a web server)."""

    mbytes_s: MbytesS = 0.0
    """Rate of the co-located traffic in MiB/s (2^20 bytes per second)."""


class Link(_Strict):
    """One NIC pair: `from_nic` and `to_nic` are written "host:nic"."""

    from_nic: str = Field(alias="from", pattern=r"^[^:]+:[^:]+$")
    """The sending NIC, "host:nic"."""
    to_nic: str = Field(alias="to", pattern=r"^[^:]+:[^:]+$")
    """The receiving NIC, "host:nic"."""
    bandwidth_gbps: Gbps | None = None
    """The link's rate in Gbit/s; unset: the slower NIC's speed."""
    rtt_ms: RttMs = 0.2
    """Round-trip time in ms."""
    background: BackgroundTraffic = BackgroundTraffic()
    """Traffic of co-located VMs sharing the link."""


class Network(_Strict):
    """NIC pairs for the migration: listed in `links`, or paired automatically
    by link speed (the vMotion rule, cluster/nic_pairing.py) when `links` is empty."""

    links: list[Link] = Field([], max_length=MAX_COUNT)
    """The NIC pairs the migrations use; empty: paired automatically by link speed."""
    rtt_ms: RttMs = 0.2
    """Round-trip time in ms of the automatically paired links."""
    rate_control: bool = False
    """PMigrate §3.2 network rate control: the migration takes only the bandwidth other traffic leaves, keeping
    reserved_mbytes_s."""
    reserved_mbytes_s: MbytesS = 0.0
    """The minimum rate kept for the migration under rate_control, in MiB/s (2^20 bytes per second)."""
    transport: Literal["auto", "tcp"] = "auto"
    """How a connection's bytes cross: auto shares memory when both ends are on one Ray node and uses TCP when not; tcp
    always crosses TCP (the cross-node path on one node)."""


class ContentMix(_Strict):
    """What guest pages hold (agents/guest/content.py). At start, the fractions
    (adding up to 1) are spread at random over the image; `working_set` names
    a class that fills the workload's working set instead (the pages it
    writes, from the first: working set, sweep, frame buffers, or ERP log,
    session area and tables; `working_set_fraction` of memory overrides its
    size), and the fractions describe the rest. `writes` is what a guest's
    whole-page write (uniform, hotset, sweeper) leaves in a page: "image" keeps
    a page's class and gives a zero page one of the image's non-zero classes;
    a class name makes every written page that class. (memwrite, video and erp
    write their own bytes into parts of pages.)"""

    zero: Fraction = 0.25
    """Fraction of pages that are all zeros."""
    text: Fraction = 0.25
    """Fraction of pages holding text-like words (about 3-4x compressible with zstd)."""
    structured: Fraction = 0.25
    """Fraction of pages holding records of small integers (highly compressible)."""
    random: Fraction = 0.25
    """Fraction of pages holding random bytes (incompressible, like encrypted data)."""
    working_set: Literal["zero", "text", "structured", "random"] | None = None
    """A class that fills the workload's working set instead of the fractions; unset: the fractions apply to all of
    memory."""
    working_set_fraction: Fraction | None = None
    """Share of memory the working_set class fills; unset: the workload's footprint."""
    writes: Literal["image", "text", "structured", "random"] = "image"
    """What a whole-page guest write leaves in a page: image keeps the page's class (a zero page takes one of the
    image's non-zero classes); a class name makes every written page that class."""

    @model_validator(mode="after")
    def _sums_to_one(self) -> "ContentMix":
        total = self.zero + self.text + self.structured + self.random
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"zero + text + structured + random is {total:g}; they must add up to 1")
        return self


class IdleWorkload(_Strict):
    kind: Literal["idle"]
    """An idle guest: it writes nothing."""


class UniformWorkload(_Strict):
    """Writes pages chosen uniformly at random in a working set."""

    kind: Literal["uniform"]
    """Selects this workload."""
    dirty_pages_per_s: PagesS
    """Pages written per second (4 KiB pages)."""
    working_set_gib: MemoryGib | None = None
    """The working set in GiB, from the start of memory; unset: all of memory."""
    hot_set_gib: Annotated[float, Field(ge=0, le=MAX_MEMORY_GIB)] = 0.0
    """A hot set inside the working set in GiB, written at hot_pages_per_s on top (memcached's hash table and LRU
    heads)."""
    hot_pages_per_s: PagesS = 0.0
    """Pages of the hot set written per second (4 KiB pages)."""


class HotsetWorkload(_Strict):
    """memcached-like: Zipf-skewed keys over a hot set, a read/write mix."""

    kind: Literal["hotset"]
    """Selects this workload."""
    ops_per_s: OpsS
    """Requests per second."""
    write_fraction: Fraction = 0.1
    """Fraction of requests that write."""
    zipf_s: Annotated[float, Field(gt=1, le=5)] = 1.2
    """Zipf exponent of the key popularity (larger: more skewed)."""
    working_set_gib: MemoryGib | None = None
    """The keys' memory in GiB; unset: all of memory."""


class ReadMostlyWorkload(_Strict):
    """A read-mostly hot set (GNU sort's input, memcached's values): reads
    `reads_per_s` pages uniformly in a read set of `read_set_gib` that is never
    written, and writes `dirty_pages_per_s` in the first `working_set_gib`."""

    kind: Literal["readmostly"]
    """Selects this workload."""
    reads_per_s: PagesS
    """Pages read per second (4 KiB pages), uniformly in the read set."""
    read_set_gib: MemoryGib
    """The read set in GiB, never written."""
    dirty_pages_per_s: PagesS = 0.0
    """Pages written per second (4 KiB pages) in the working set."""
    working_set_gib: Annotated[float, Field(ge=0, le=MAX_MEMORY_GIB)] = 0.0
    """The written working set in GiB, from the start of memory."""


class SweeperWorkload(_Strict):
    """RapidWrite-like: writes `sweep_gib` sequentially, then sleeps."""

    kind: Literal["sweeper"]
    """Selects this workload."""
    sweep_gib: MemoryGib
    """Memory written by one sweep, in GiB."""
    write_mbytes_s: Annotated[float, Field(gt=0, le=MAX_MEM_BW_MBYTES_S)] = 1000
    """Write rate of a sweep in MB/s (10^6 bytes per second)."""
    sleep_s: ScheduleS = 5
    """Sleep between sweeps, in emulated seconds."""


class MemwriteWorkload(_Strict):
    """lmbench-like memory write benchmark: small writes at random offsets into
    pages of a working set, over and over (near-ideal for delta encoding)."""

    kind: Literal["memwrite"]
    """Selects this workload."""
    writes_per_s: Annotated[float, Field(ge=0, le=MAX_WRITES_S)]
    """Writes per second."""
    bytes_per_write: Annotated[int, Field(ge=1, le=PAGE_SIZE)] = 64
    """Bytes per write."""
    working_set_gib: MemoryGib | None = None
    """The working set in GiB; unset: all of memory."""


class VideoWorkload(_Strict):
    """HD video transcoding: frame buffers of `frame_mib` rewritten at `fps`;
    per frame, `changed_fraction` of every page (its moving part) changes."""

    kind: Literal["video"]
    """Selects this workload."""
    frame_mib: MemoryMib
    """The frame buffers in MiB."""
    fps: Annotated[float, Field(gt=0, le=1000)] = 25  # 1000 frames/s: above any display or camera
    """Frames per second."""
    changed_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Fraction of every page (its moving part) that changes per frame."""


class ErpWorkload(_Strict):
    """Transactional ERP-like application: each transaction writes
    `writes_per_op` records of `record_bytes` in its tables, appends
    `log_bytes_per_op` to a redo log and rewrites `session_kib_per_op` of a
    session (roll) area of `session_mib`; it breaks (stops responding) when
    a downtime exceeds `max_downtime_ms`."""

    kind: Literal["erp"]
    """Selects this workload."""
    ops_per_s: OpsS
    """Transactions per second."""
    writes_per_op: Annotated[int, Field(ge=1, le=1000)] = 8
    """Records written per transaction."""
    record_bytes: Annotated[int, Field(ge=1, le=PAGE_SIZE)] = 128
    """Bytes per record."""
    log_bytes_per_op: Annotated[int, Field(ge=0, le=PAGE_SIZE)] = 256
    """Bytes appended to the redo log per transaction."""
    log_mib: MemoryMib = 64
    """The redo log in MiB (a ring)."""
    session_mib: Annotated[float, Field(ge=0, le=MAX_MEMORY_MIB)] = 0
    """The session (roll) area in MiB; 0: none."""
    session_kib_per_op: Annotated[float, Field(ge=0, le=1 << 20)] = 64  # 1 GiB rewritten per transaction at most
    """KiB of the session area rewritten per transaction."""
    working_set_gib: MemoryGib | None = None
    """The tables in GiB; unset: all of memory."""
    max_downtime_ms: Annotated[float, Field(gt=0, le=MAX_MS)] = 500
    """Longest downtime in ms the application survives; a longer one breaks it (it stops responding)."""


Workload = Annotated[
    IdleWorkload | UniformWorkload | HotsetWorkload | ReadMostlyWorkload | SweeperWorkload | MemwriteWorkload
    | VideoWorkload | ErpWorkload,
    Field(discriminator="kind"),
]


# Physical bounds: 1 IOPS and 0.01 MB/s are below any disk (a floppy moves 0.06 MB/s); a
# smaller figure only turns a prediction into 1e16 s. 100 M IOPS is above any array.
IopsValue = Annotated[float, Field(ge=1, le=100_000_000)]
DiskMbytesS = Annotated[float, Field(ge=0.01, le=MAX_RATE_MBYTES_S)]  # the vMotion seed's MB/s: 10^6 bytes/s


class Datastore(_Strict):
    """A datastore (agents/datapath/datastore.py): a preset `kind` whose
    figures may be overridden, its capacity, the hosts that reach it and the
    array it lives on (datastores of one array with `offload` copy between
    them without the hosts: VAAI)."""

    name: str = Field(pattern=NAME)
    """The datastore's name, unique in the scenario."""
    kind: Literal["fast-san", "slow-san", "local-ssd", "hdd", "nfs"] = "fast-san"
    """A preset of figures (IOPS, MB/s, latency); the figures below override it."""
    read_iops: IopsValue | None = None
    """Read requests per second; unset: the kind's."""
    write_iops: IopsValue | None = None
    """Write requests per second; unset: the kind's."""
    read_mbytes_s: DiskMbytesS | None = None
    """Read throughput in MB/s (10^6 bytes per second); unset: the kind's."""
    write_mbytes_s: DiskMbytesS | None = None
    """Write throughput in MB/s (10^6 bytes per second); unset: the kind's."""
    latency_ms: Annotated[float, Field(ge=0, le=10_000)] | None = None
    """Latency of one request in ms; unset: the kind's."""
    capacity_gib: Annotated[float, Field(gt=0, le=MAX_DISK_GIB)] = 2048
    """Capacity in GiB."""
    hosts: list[str] = Field(max_length=MAX_COUNT)
    """The hosts that reach this datastore."""
    array: str | None = Field(None, pattern=NAME)
    """The array the datastore lives on; unset: its own."""
    offload: bool = False
    """The array can copy between its datastores without the hosts (VAAI XCOPY)."""
    offload_mbytes_s: DiskMbytesS = 1000
    """The array's copy rate under offload, in MB/s (10^6 bytes per second)."""

    def model_figures(self) -> dict:
        """The datastore's performance: its kind's preset with the figures given here."""
        from agents.datapath.datastore import PRESETS
        base = PRESETS[self.kind].describe()
        return base | {k: getattr(self, k) for k in base if getattr(self, k) is not None}


class DiskWorkloadSpec(_Strict):
    """The guest's disk I/O (agents/guest/disk.py): a preset, or figures (which override a preset's)."""

    preset: Literal["none", "ds2", "dbench", "soliddb-8", "soliddb-16", "soliddb-32", "soliddb-64"] = "none"
    """A preset of the papers' disk workloads (vMotion seed: DS2, dbench, SolidDB with 8 to 64 clients); none: no disk
    I/O unless figures are given."""
    read_iops: Annotated[float, Field(ge=0, le=100_000_000)] | None = None
    """Read requests per second; unset: the preset's."""
    write_iops: Annotated[float, Field(ge=0, le=100_000_000)] | None = None
    """Write requests per second; unset: the preset's."""
    read_kib: Annotated[float, Field(ge=4, le=16384)] | None = None
    """Size of a read in KiB; unset: the preset's."""
    write_kib: Annotated[float, Field(ge=4, le=16384)] | None = None
    """Size of a write in KiB; unset: the preset's."""
    pattern: Literal["random", "sequential"] | None = None
    """Where requests fall: random or sequential offsets; unset: the preset's."""
    span_fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    """Part of the disk the requests fall in, from its start; unset: the preset's."""
    clients: Annotated[int, Field(ge=0, le=100_000)] | None = None
    """> 0: a closed loop of this many clients (the IOPS are then its throughput on its datastore unloaded); 0: an open
    loop at the IOPS; unset: the preset's."""

    def figures(self) -> dict:
        from dataclasses import asdict

        from agents.guest.disk import DISK_PRESETS, DiskWorkload
        base = asdict(DISK_PRESETS.get(self.preset, DiskWorkload()))
        return base | {k: getattr(self, k) for k in base if getattr(self, k) is not None}


class Vm(_Strict):
    name: str = Field(pattern=NAME)
    """The VM's name, unique in the scenario."""
    memory_gib: MemoryGib
    """Guest memory in GiB (2^30 bytes), emulated; the real image is memory_gib x emulation.memory_scale."""
    vcpus: Annotated[int, Field(ge=1, le=1024)] = 2
    """Virtual CPUs."""
    nic: Literal["virtio", "e1000", "vmxnet3", "passthrough"] = "virtio"
    """The guest's NIC model; passthrough (DirectPath I/O) forbids live migration."""
    disk_gib: Annotated[float, Field(ge=0, le=MAX_DISK_GIB)] = 0
    """Virtual disk in GiB; 0: no disk."""
    datastore: str | None = None
    """The datastore the disk is on; needed when disk_gib > 0."""
    disk_used_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Allocated share of a thin disk (what a disk copy moves)."""
    disk_workload: DiskWorkloadSpec = DiskWorkloadSpec()
    """The guest's disk I/O."""
    workload: Workload = IdleWorkload(kind="idle")
    """What the guest runs, chosen by kind."""
    content: ContentMix = ContentMix()
    """What the guest's pages hold."""
    io_bound: bool = False
    """Its operations are network requests served by the hypervisor's I/O thread."""
    migrate: bool = True
    """false: a co-located VM that stays on its host; its throughput before and during the others' migration is
    reported (PMigrate §6.3)."""
    host: str | None = None
    """Where it runs at the start; unset: the only host with role "source"."""

    @model_validator(mode="after")
    def _size_placed_working_set(self) -> "Vm":
        """content.working_set covers the workload's footprint unless sized."""
        c = self.content
        if c.working_set is None or c.working_set_fraction is not None:
            return self
        from agents.guest.workloads import footprint_gib
        share = footprint_gib(self.workload.model_dump(), self.memory_gib) / self.memory_gib
        return self.model_copy(update={"content": c.model_copy(update={"working_set_fraction": share})})


def _annotation(opt: Option) -> Any:
    """The pydantic type of a declared option: its type or choices, its bounds, None if optional."""
    base: Any = Literal[opt.choices] if opt.choices else opt.type
    bounds = opt.bounds()
    ann = Annotated[base, Field(**bounds)] if bounds else base
    return Optional[ann] if opt.optional else ann


def _declared_options() -> dict[str, Option]:
    """Every registered technique's options by name; techniques sharing a name share its declaration."""
    out: dict[str, Option] = {}
    for spec in registry.all_specs():
        for opt in spec.options:
            if out.setdefault(opt.name, opt) != opt:
                raise ValueError(f"option {opt.name!r} is declared differently by two techniques")
    return out


OPTIONS = _declared_options()
TechniqueName = Literal[registry.names()]
TECHNIQUE_TEXT = "The migration technique (`livemig techniques` lists each with its options)."

# The scenario-wide [migration] table: every option of every technique, with its declared default.
Migration = create_model(
    "Migration", __base__=_Strict, __module__=__name__,
    __doc__="The scenario-wide [migration] table; generated from the techniques' option declarations.",
    technique=(TechniqueName, Field("precopy", description=TECHNIQUE_TEXT)),
    **{name: (_annotation(opt), Field(opt.default, description=opt.description())) for name, opt in OPTIONS.items()},
)


def _host_names(value: Any) -> Any:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("needs a host name or a list of host names")


class _MigrationEntryBase(_Strict):
    """One [[migrations]] entry: a VM from one host to one host (or a main host and sub-hosts)."""

    vm: str = Field(min_length=1)
    """The VM that migrates."""
    to: Annotated[tuple[str, ...], BeforeValidator(_host_names), Field(min_length=1)]
    """The destination host, or a main host then sub-hosts (split migration)."""
    from_host: str | None = Field(None, alias="from")
    """The source host; unset: where the VM is by then."""
    start_s: ScheduleS = 0.0
    """When it starts, in emulated seconds after the warm-up."""

    def overrides(self) -> dict[str, Any]:
        """The options this entry sets, over the [migration] table's."""
        return {k: getattr(self, k) for k in self.model_fields_set if k in OPTIONS}


# Every option may be overridden per migration; unset ones (None) fall back to [migration].
_UNSET = " Unset: the [migration] table's."
MigrationEntry = create_model(
    "MigrationEntry", __base__=_MigrationEntryBase, __module__=__name__,
    technique=(Optional[TechniqueName], Field(None, description=TECHNIQUE_TEXT + _UNSET)),
    **{name: (Optional[_annotation(opt)], Field(None, description=opt.description() + _UNSET))
       for name, opt in OPTIONS.items()},
)


# --- scheduled events ---------------------------------------------------------------

def _link_name(value: str) -> str:
    ends = value.split("->")
    if len(ends) != 2 or any(len([p for p in end.split(":") if p]) != 2 or end.count(":") != 1 for end in ends):
        raise ValueError('needs "host:nic->host:nic", as links are named in results')
    return value


LinkName = Annotated[str, AfterValidator(_link_name)]


class PhaseTrigger(_Strict):
    """When a migration of `vm` enters `phase` (for precopy: optionally its `iteration`)."""

    vm: str = Field(min_length=1)
    """The VM whose migration is watched."""
    # post-copy's phases too: a fault may be injected on entering them (cluster/faults.py)
    phase: Literal["disk-copy", "setup", "precopy", "stop-and-copy", "postcopy-active", "postcopy-recover"]
    """The phase whose start fires the event."""
    iteration: Annotated[int, Field(ge=1, le=1_000_000)] | None = None  # max_iterations' bound
    """With phase precopy: the pre-copy iteration (from 1) whose start fires it; unset: entering the phase fires it."""

    @model_validator(mode="after")
    def _iteration_only_in_precopy(self) -> "PhaseTrigger":
        if self.iteration is not None and self.phase != "precopy":
            raise ValueError(f'iteration is only allowed with phase = "precopy" (got phase = "{self.phase}")')
        return self


class _Event(_Strict):
    """Fires once: at an emulated time after warm-up, or when a migration enters a phase."""

    at_s: ScheduleS | None = None
    """When it fires, in emulated seconds after the warm-up (or use on)."""
    on: PhaseTrigger | None = None
    """Fires when a migration enters a phase (or use at_s)."""

    @model_validator(mode="after")
    def _one_trigger(self) -> "_Event":
        if (self.at_s is None) == (self.on is None):
            raise ValueError("needs exactly one trigger: at_s = <seconds> or on = { vm = ..., phase = ... }")
        return self


class SetLinkEvent(_Event):
    action: Literal["set-link"]
    """Changes a link's bandwidth, round-trip time or both."""
    link: LinkName
    """The link, "host:nic->host:nic"."""
    bandwidth_gbps: Gbps | None = None
    """The new rate in Gbit/s; unset: unchanged."""
    rtt_ms: RttMs | None = None
    """The new round-trip time in ms; unset: unchanged."""

    @model_validator(mode="after")
    def _changes_something(self) -> "SetLinkEvent":
        if self.bandwidth_gbps is None and self.rtt_ms is None:
            raise ValueError("set-link needs bandwidth_gbps, rtt_ms or both")
        return self


class SetBackgroundEvent(_Event):
    action: Literal["set-background"]
    """Changes a link's background traffic."""
    link: LinkName
    """The link, "host:nic->host:nic"."""
    mbytes_s: MbytesS
    """The new background rate in MiB/s (2^20 bytes per second)."""


class SetWorkloadEvent(_Event):
    action: Literal["set-workload"]
    """Scales a VM's workload rate."""
    vm: str = Field(min_length=1)
    """The VM."""
    # Multiplies the workload's configured rate; 1000x is past any load spike (and the rate bounds).
    rate_factor: Annotated[float, Field(ge=0, le=1000)]
    """Multiplies the workload's configured rate (0 stops it)."""


class CancelEvent(_Event):
    action: Literal["cancel"]
    """Cancels the VM's running migration (QEMU's migrate_cancel): the VM stays on its source."""
    vm: str = Field(min_length=1)
    """The VM."""


class StartPostcopyEvent(_Event):
    """QEMU's migrate-start-postcopy: the VM's running post-copy migration switches now."""

    action: Literal["start-postcopy"]
    """Switches the VM's running pre-copy to post-copy now (QEMU's migrate-start-postcopy); needs a post-copy technique
    that did not start in post-copy."""
    vm: str = Field(min_length=1)
    """The VM."""


# Faults (cluster/faults.py): what each does and how its outcome is judged is documented there.
class _LinkFault(_Event):
    link: LinkName
    """The link, "host:nic->host:nic"."""


class _VmFault(_Event):
    vm: str = Field(min_length=1)
    """The VM whose running migration the fault hits."""


class LinkDownEvent(_LinkFault):
    """The link goes down: for `duration_s` emulated seconds, or for good (no duration)."""

    action: Literal["link-down"]
    """The link goes down."""
    duration_s: Annotated[float, Field(gt=0, le=MAX_SCHEDULE_S)] | None = None
    """How long it stays down, in emulated seconds; unset: for good."""


class LinkUpEvent(_LinkFault):
    """The link comes back (a paused post-copy over it recovers)."""

    action: Literal["link-up"]
    """The link comes back (a paused post-copy over it recovers)."""


class CorruptBatchEvent(_LinkFault):
    """The next `count` batches with contents entering the link are damaged in transit."""

    action: Literal["corrupt-batch"]
    """Damages batches in transit."""
    count: Annotated[int, Field(ge=1, le=1000)] = 1
    """Batches with contents entering the link that are damaged."""


class KillDestinationEvent(_VmFault):
    """The host actor of the destination of `vm`'s running migration is killed."""

    action: Literal["kill-destination"]
    """Kills the host actor of the destination of the VM's running migration."""


class CrashMigrationThreadEvent(_VmFault):
    """The source's migration thread of `vm`'s running migration crashes."""

    action: Literal["crash-migration-thread"]
    """Crashes the source's migration thread of the VM's running migration."""


class KillMemoryServerEvent(_Event):
    """The host actor of sub-host `host`, with the memory server of a split migration, is killed."""

    action: Literal["kill-memory-server"]
    """Kills the host actor of a sub-host holding a split migration's memory server."""
    host: str = Field(min_length=1)
    """The sub-host."""


Event = Annotated[SetLinkEvent | SetBackgroundEvent | SetWorkloadEvent | CancelEvent | StartPostcopyEvent
                  | LinkDownEvent | LinkUpEvent | CorruptBatchEvent | KillDestinationEvent | CrashMigrationThreadEvent
                  | KillMemoryServerEvent,
                  Field(discriminator="action")]


class CpuModel(_Strict):
    """Charged CPU (agents/cpu.py): a profile, any of whose costs may be overridden.

    Costs are microseconds of CPU per emulated 4 KiB page. `migration_cores`
    is how many cores of each host the migration may use (CPU rate control);
    by default all of them.
    """

    profile: Literal["modern", "xen-4.1", "kvm-0.14"] = "modern"
    """Per-page CPU costs: modern, xen-4.1 (PMigrate's Table 2) or kvm-0.14; the costs below override it."""
    mmap_us: PageCostUs | None = None
    """The mmap step of mapping guest memory (Xen 4.1: PMigrate Table 9), in µs of CPU per 4 KiB page; unset: the
    profile's."""
    map_us: PageCostUs | None = None
    """The foreign-map step of mapping guest memory, in µs of CPU per 4 KiB page; unset: the profile's."""
    munmap_us: PageCostUs | None = None
    """The munmap step of mapping guest memory, in µs of CPU per 4 KiB page; unset: the profile's."""
    handle_us: PageCostUs | None = None
    """Handling a page (unused and page-table pages included), in µs of CPU per 4 KiB page; unset: the profile's."""
    send_us: PageCostUs | None = None
    """Sending a page (transport: encryption, checksum, TCP), in µs of CPU per 4 KiB page; unset: the profile's."""
    receive_us: PageCostUs | None = None
    """Receiving a page, in µs of CPU per 4 KiB page; unset: the profile's."""
    restore_us: PageCostUs | None = None
    """Writing a page into the destination's memory, in µs of CPU per 4 KiB page; unset: the profile's."""
    shootdown_us: PageCostUs | None = None
    """TLB shootdown per page per other consumer, in µs of CPU; unset: the profile's."""
    dirty_sync_ns: Annotated[float, Field(ge=0, le=MAX_PAGE_COST_US * 1000)] | None = None
    """Fetching the dirty log, in ns of CPU per 4 KiB page of memory each time; unset: the profile's."""
    guest_fault_us: PageCostUs | None = None
    """The guest's first write to a page after each dirty-log fetch, in µs of guest CPU; unset: the profile's."""
    migration_cores: Annotated[int, Field(ge=1, le=4096)] | None = None
    """Cores of each host the migration may use (PMigrate's CPU rate control); unset: all of them."""
    # CPU rate control: how many of the migration's cores on the source are
    # also run by co-located VMs, and the migration's share of such a core
    # when both want it (PMigrate: "by default its priority is set below the average").
    shared_cores: Annotated[int, Field(ge=0, le=4096)] = 0
    """How many of the migration's cores on the source are also run by co-located VMs."""
    migration_priority: Annotated[float, Field(gt=0, le=1)] = 0.5
    """The migration's share of a shared core when both want it (PMigrate: below the average by default)."""

    def overrides(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in ("mmap_us", "map_us", "munmap_us", "handle_us", "send_us", "receive_us",
                                              "restore_us", "shootdown_us", "dirty_sync_ns", "guest_fault_us")}


MIN_WINDOW_S = 0.1  # the shortest warm-up or after window: 40 guest ticks in its measured 80%


class Emulation(_Strict):
    memory_scale: Annotated[float, Field(gt=0, le=1)] = 1 / 64
    """Real bytes allocated per emulated byte (1/64 turns a 16 GiB guest into a 256 MiB image); rates in bytes and
    pages scale with it."""
    dilation: Annotated[float, Field(gt=0, le=MAX_DILATION)] = 1.0
    """Real seconds per emulated second (time dilation, as in DieCast): 4 makes the run 4 times longer and gives every
    emulated core 4 times the real CPU."""
    # numpy seeds are non-negative and under 2**32; VM i uses seed + 1000 * i.
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 1
    """Seed of the random numbers; VM i uses seed + 1000 x i."""
    # The windows around the migrations (emulated seconds): the guests run `warmup_s`
    # before the first migration starts (the application's "before" is measured over
    # its last 80%), and the run goes on `after_s` after the last switch-over (its
    # "after"). The guest ticks every 2 real ms: 0.5 s gives its figures 200 ticks and
    # the timeline 5 records on each side; the run costs 1 s less than with 1 s each.
    warmup_s: Annotated[float, Field(ge=MIN_WINDOW_S, le=3600)] = 0.5
    """Emulated seconds the guests run before the first migration starts (the application's "before" is measured over
    its last 80%)."""
    after_s: Annotated[float, Field(ge=MIN_WINDOW_S, le=3600)] = 0.5
    """Emulated seconds the run goes on after the last switch-over (the application's "after")."""


REFERENCE_KEYS = ("total_time_s", "downtime_ms", "iterations", "memory_bytes_sent", "downtime_bytes_sent",
                  "avg_throughput_mbytes_s", "cpu_usage_percent", "cpu_seconds", "non_response_s",
                  "memory_compress_rate", "degradation")


class Reference(_Strict):
    """What the paper measured for this experiment, for `livemig compare`."""

    source: str = ""
    """Where the figures come from (paper, table or figure)."""
    figures: dict[Literal[REFERENCE_KEYS], float] = {}
    """The paper's figures by result key, in result.json's units (s, ms, bytes, MiB/s, %)."""


@dataclass(frozen=True)
class MigrationPlan:
    """One migration, resolved: the VM, its hosts, when it starts, its technique and options."""

    index: int  # position in [[migrations]] (or among the VMs with migrate = true when there is none)
    vm: Vm
    vm_index: int  # position in scenario.vms
    source: Host
    destinations: tuple[Host, ...]  # one host, or a main host then sub-hosts
    start_s: float  # emulated seconds after warm-up
    technique: str
    options: Any  # a Migration: the [migration] table overlaid with this migration's overrides

    @property
    def destination(self) -> Host:
        return self.destinations[0]


def link_name(link: Link) -> str:
    """A link's name in events and results: "host:nic->host:nic"."""
    return f"{link.from_nic}->{link.to_nic}"


def _host_of(ref: str) -> str:
    return ref.split(":")[0]


class Scenario(_Strict):
    name: str = Field(pattern=NAME)
    """The scenario's name (the default run directory is runs/<name>)."""
    description: str = ""
    """Free text: what the experiment shows."""
    reference: Reference = Reference()
    """What the paper measured for this experiment, for livemig compare."""
    hosts: list[Host] = Field(min_length=2, max_length=MAX_COUNT)
    """The hosts, at least two."""
    network: Network = Network()
    """The links between the hosts."""
    vms: list[Vm] = Field(min_length=1, max_length=MAX_COUNT)
    """The virtual machines."""
    datastores: list[Datastore] = Field([], max_length=MAX_COUNT)
    """The datastores that hold the VMs' disks."""
    migration: Migration = Migration()
    """The options of every migration; a [[migrations]] entry may override each."""
    # Without it, every VM with migrate = true goes from its host to the one destination, at once.
    migrations: list[MigrationEntry] = Field([], max_length=MAX_COUNT)
    """Each migration: which VM, from where to where, when; empty: every VM with migrate = true goes from its host to
    the one destination, at once."""
    events: list[Event] = Field([], max_length=MAX_COUNT)
    """Events at a time or a phase: link changes, workload changes, cancellation, start-postcopy, faults."""
    cpu: CpuModel = CpuModel()
    """The charged CPU costs."""
    emulation: Emulation = Emulation()
    """How the scenario maps onto this machine: memory scale, time dilation, seed, windows."""

    def as_loaded(self) -> dict:
        """The scenario as result.json records it (JSON types, defaults filled in), with only the
        options of the techniques it runs: [migration] keeps theirs, a [[migrations]] entry the
        ones it sets."""
        data = self.model_dump(mode="json", by_alias=True)
        used = {p.technique for p in self.migration_plans()} or {self.migration.technique}
        keep = {name for t in used for name in registry.get(t).option_names()}
        data["migration"] = {k: v for k, v in data["migration"].items() if k not in OPTIONS or k in keep}
        data["migrations"] = [{k: v for k, v in d.items() if k not in OPTIONS or k in e.model_fields_set}
                              for d, e in zip(data["migrations"], self.migrations)]
        return data

    def host(self, role: str) -> Host:
        """The first host with this role."""
        return next(h for h in self.hosts if role in h.roles)

    def host_named(self, name: str) -> Host | None:
        return next((h for h in self.hosts if h.name == name), None)

    def datastore_named(self, name: str | None) -> Datastore | None:
        return next((d for d in self.datastores if d.name == name), None)

    @property
    def source(self) -> Host:
        return self.host("source")

    @property
    def destination(self) -> Host:
        return self.host("destination")

    def initial_host(self, vm: Vm) -> Host | None:
        """Where the VM runs at the start: its `host`, or else the only host with role "source"."""
        if vm.host is not None:
            return self.host_named(vm.host)
        sources = [h for h in self.hosts if "source" in h.roles]
        return sources[0] if len(sources) == 1 else None

    def migration_entries(self) -> list:
        """[[migrations]] as written, or else one per VM with migrate = true to the destination host."""
        if self.migrations:
            return list(self.migrations)
        return [MigrationEntry.model_validate({"vm": v.name, "to": self.destination.name})
                for v in self.vms if v.migrate]

    def migration_plans(self) -> list[MigrationPlan]:
        """Every migration resolved, in list order (of a validated scenario).

        A migration without `from` starts where the VM is by then: its initial
        host, or the (main) destination of its previous migration in the list.
        """
        index = {v.name: i for i, v in enumerate(self.vms)}
        left_on: dict[str, Host] = {}
        plans = []
        for k, e in enumerate(self.migration_entries()):
            i = index[e.vm]
            src = self.host_named(e.from_host) if e.from_host else left_on.get(e.vm, self.initial_host(self.vms[i]))
            dsts = tuple(self.host_named(n) for n in e.to)
            technique = e.technique or self.migration.technique
            options = self.migration.model_copy(update={"technique": technique, **e.overrides()})
            plans.append(MigrationPlan(k, self.vms[i], i, src, dsts, e.start_s, technique, options))
            left_on[e.vm] = dsts[0]
        return plans

    def listed_links(self, src: Host, dst: Host) -> list[Link]:
        """The [[network.links]] from src to dst."""
        return [l for l in self.network.links if _host_of(l.from_nic) == src.name and _host_of(l.to_nic) == dst.name]

    def links_between(self, src: Host, dst: Host) -> list[Link]:
        """Links from src to dst: as listed, or else their NICs paired by speed (the vMotion
        rule, cluster/nic_pairing.py) at network.rtt_ms. ValueError if they cannot be paired."""
        return self.listed_links(src, dst) or self._paired_links(src, dst)

    def _paired_links(self, src: Host, dst: Host) -> list[Link]:
        from cluster.nic_pairing import Nic as PairNic
        from cluster.nic_pairing import pair_nics
        pairs = pair_nics([PairNic(n.name, n.speed_gbps) for n in src.nics if not n.passthrough],
                          [PairNic(n.name, n.speed_gbps) for n in dst.nics if not n.passthrough])
        return [Link.model_validate({"from": f"{src.name}:{p.source}", "to": f"{dst.name}:{p.dest}",
                                     "bandwidth_gbps": p.bandwidth_gbps, "rtt_ms": self.network.rtt_ms})
                for p in pairs]

    def paging_links(self, main: Host, sub: Host) -> list[Link]:
        """The links a split migration's remote paging crosses between its main host and a
        sub-host (S-memV §IV-E): as listed, in either direction; when the scenario lists no
        link at all, their NICs paired by speed. ValueError when there is none."""
        listed = self.listed_links(main, sub) or self.listed_links(sub, main)
        if listed:
            return listed
        if self.network.links:
            raise ValueError("none is listed")
        return self._paired_links(main, sub)

    def migration_links(self) -> list[Link]:
        """Links from the source host to the destination host (single-pair scenarios)."""
        return self.links_between(self.source, self.destination)

    def link_names(self) -> list[str]:
        """The links events may name: the listed ones, and those paired between the hosts of a migration."""
        names = [link_name(l) for l in self.network.links]
        for p in self.migration_plans():
            names += [link_name(l) for d in p.destinations for l in self.links_between(p.source, d)]
            for d in p.destinations[1:] if p.technique == "split" else ():
                try:
                    names += [link_name(l) for l in self.paging_links(p.destinations[0], d)]
                except ValueError:  # reported by _paging_link_problems
                    pass
        return list(dict.fromkeys(names))

    def link_bandwidth_gbps(self, link: Link) -> float:
        if link.bandwidth_gbps is not None:
            return link.bandwidth_gbps
        return min(self._nic(link.from_nic).speed_gbps, self._nic(link.to_nic).speed_gbps)

    def nic_speed_gbps(self, ref: str) -> float:
        """The speed of NIC "host:nic"."""
        return self._nic(ref).speed_gbps

    def _nic(self, ref: str) -> Nic:
        host_name, nic_name = ref.split(":")
        host = next(h for h in self.hosts if h.name == host_name)
        return next(n for n in host.nics if n.name == nic_name)


def json_schema() -> dict:
    """The scenario file's JSON schema (for editors): every property described by its field's
    docstring or option declaration, with its unit, and what is allowed (its bounds or choices,
    in words, from the same constraints validation uses) appended."""
    schema = Scenario.model_json_schema(by_alias=True)
    for model in (schema, *schema["$defs"].values()):
        for prop in model.get("properties", {}).values():
            text = " ".join(prop.get("description", "").split())  # a docstring's line breaks go
            allowed = _allowed_text(prop)
            prop["description"] = f"{text} Allowed: {allowed}." if allowed and text else text
    return schema


_JSON_BOUNDS = (("minimum", "ge"), ("exclusiveMinimum", "gt"), ("maximum", "le"), ("exclusiveMaximum", "lt"))


def _allowed_text(prop: dict) -> str:
    """A JSON-schema property's allowed values in words ("0 to 1 (or unset)"); "" for an object or list."""
    words, unset = [], False
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "null":
            unset = True
        elif "enum" in branch or "const" in branch:
            words.append(" | ".join(json.dumps(v) for v in branch.get("enum", [branch.get("const")])))
        elif branch.get("type") == "boolean":
            words.append("true | false")
        elif branch.get("pattern") == NAME:
            words.append(NAME_TEXT)
        elif branch.get("type") in ("number", "integer"):
            bounds = {name: branch[key] for key, name in _JSON_BOUNDS if key in branch}
            words.append(range_text(bounds) or f"any {branch['type']}")
    return " or ".join(words) + (" (or unset)" if unset and words else "")


# --- checks pydantic cannot express: each a (field path, message) -----------------------

Problems = list[tuple[str, str]]


def _names(names, limit: int = 10) -> str:
    """Names for a message: all of a few, the first `limit` of thousands (a line stays readable)."""
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _semantic_problems(s: Scenario) -> Problems:
    """Names and roles first; links, sizes and events only once the migrations resolve."""
    problems = _host_problems(s) + _nic_ref_problems(s) + _vm_start_problems(s)
    problems += _entry_problems(s) if s.migrations else _implicit_problems(s)
    problems += _option_problems(s.migration.technique, s.migration.model_fields_set, "migration")
    if problems:
        return problems
    links = _link_problems(s)
    problems = (links + _vm_problems(s) + _placement_problems(s) + _capacity_problems(s) + _cache_problems(s)
                + _convergence_problems(s) + _split_problems(s) + _storage_problems(s) + crossnode_problems(s))
    if not links:  # events name links, which must exist first
        problems += _event_problems(s)
    return problems


def crossnode_problems(s: Scenario) -> Problems:
    """Across Ray nodes (hosts on different `ray_node`s, or `network.transport = "tcp"`) only
    pre-copy and PMigrate run: post-copy's page requests, split and swap migration's remote
    paging and a storage migration's disk copy still assume one machine. One line per
    migration that would cross."""
    problems: Problems = []
    for mp in s.migration_plans():
        nodes = {h.ray_node for h in (mp.source, *mp.destinations)}
        if s.network.transport != "tcp" and len(nodes) == 1:
            continue
        why = ("network.transport = \"tcp\"" if s.network.transport == "tcp" else
               f"its hosts are on Ray nodes {', '.join(sorted(str(n) for n in nodes))}")
        where = f"migrations[{mp.index}]" if s.migrations else "migration"
        if mp.technique != "precopy":  # storage and block-dirty included: their disk copy
            msg = (f"\"{mp.technique}\" cannot cross Ray nodes ({why}); "
                   f"across nodes only \"precopy\" (with PMigrate's consumers) runs")
            problems.append((f"{where}.technique", msg))
    return problems


def _storage_problems(s: Scenario) -> Problems:
    """Datastores: unique names, hosts that exist; disks: on a datastore their host
    reaches, fitting it; a target datastore the destination reaches, with room."""
    from cluster.storage_plan import storage_problems
    return storage_problems(s)


def _host_problems(s: Scenario) -> Problems:
    problems: Problems = []
    if not s.migrations:  # the implicit migrations need one source and one destination
        for role in ("source", "destination"):
            count = sum(role in h.roles for h in s.hosts)
            if count != 1:
                problems.append(("hosts", f"needs exactly one host with role = \"{role}\", found {count}"))
    for i, first in _repeats([h.name for h in s.hosts]):
        problems.append((f"hosts[{i}].name", f"\"{s.hosts[i].name}\" is already the name of hosts[{first}]; "
                                             f"host names must be unique"))
    for i, h in enumerate(s.hosts):  # links name a NIC as "host:nic": two of one name would be one
        for j, first in _repeats([n.name for n in h.nics]):
            problems.append((f"hosts[{i}].nics[{j}].name", f"\"{h.nics[j].name}\" is already the name of "
                                                           f"hosts[{i}].nics[{first}]; NIC names must be unique on a host"))
    most = max(h.cores for h in s.hosts)
    if s.cpu.migration_cores is not None and s.cpu.migration_cores > most:
        problems.append(("cpu.migration_cores", f"{s.cpu.migration_cores} is more than any host has (the most is "
                                                f"cores = {most}); allowed: 1 to {most}"))
    return problems


def _repeats(names: list[str]) -> list[tuple[int, int]]:
    """(index, index of its first use) for each name used before: one problem per repeat, the
    first use left alone; a dict keeps validation linear in the names."""
    first: dict[str, int] = {}
    return [(i, first[n]) for i, n in enumerate(names) if first.setdefault(n, i) != i]


def _nic_ref_problems(s: Scenario) -> Problems:
    """Links name NICs that exist and that the hypervisor owns: a pass-through NIC belongs to its VM
    (DirectPath I/O), so no migration traffic can use it; automatic pairing skips it too."""
    nics = {f"{h.name}:{n.name}": n for h in s.hosts for n in h.nics}
    problems: Problems = []
    for i, first in _repeats([f"{l.from_nic}->{l.to_nic}" for l in s.network.links]):
        problems.append((f"network.links[{i}]", f"repeats the NIC pair of network.links[{first}] "
                                                f"(\"{s.network.links[i].from_nic}\" to \"{s.network.links[i].to_nic}\"); "
                                                f"a NIC pair has one link: list it once"))
    for i, link in enumerate(s.network.links):
        for key, ref in (("from", link.from_nic), ("to", link.to_nic)):
            if ref not in nics:
                problems.append((f"network.links[{i}].{key}", f"\"{ref}\" is not a NIC of any host; known: {_names(sorted(nics))}"))
            elif nics[ref].passthrough:
                problems.append((f"network.links[{i}].{key}", f"\"{ref}\" is a pass-through NIC, given to a VM; "
                                                              f"migration traffic needs a NIC of the hypervisor"))
    return problems


def _vm_start_problems(s: Scenario) -> Problems:
    """Unique VM names, and a host each VM starts on."""
    problems: Problems = []
    repeats = dict(_repeats([v.name for v in s.vms]))
    hosts = _names([h.name for h in s.hosts])
    sources = [h.name for h in s.hosts if "source" in h.roles]
    for i, vm in enumerate(s.vms):
        if i in repeats:
            problems.append((f"vms[{i}].name", f"\"{vm.name}\" is already the name of vms[{repeats[i]}]; "
                                               f"VM names must be unique"))
        if vm.host is not None and s.host_named(vm.host) is None:
            problems.append((f"vms[{i}].host", f"\"{vm.host}\" is not a host; known: {hosts}"))
        elif vm.host is None and len(sources) != 1 and s.migrations:  # without them, _host_problems says it
            problems.append((f"vms[{i}].host", f"missing, and no single host has role = \"source\" to start on "
                             f"(found {len(sources)}{': ' if sources else ''}{', '.join(sources)}); "
                             f"name the host the VM starts on"))
    return problems


def _convergence_problems(s: Scenario) -> Problems:
    """One convergence method at a time, and a first throttle within the maximum
    (agents/techniques/convergence.py); checked where the options are set."""
    from agents.techniques.convergence import conflicts
    names = {o.name for o in registry.get("precopy").options if o.name in _CONVERGENCE_NAMES}
    tables = [("migration", s.migration)]
    tables += [(f"migrations[{p.index}]", p.options) for p, e in zip(s.migration_plans(), s.migration_entries())
               if names & set(e.overrides())]
    problems: Problems = []
    for path, o in tables:
        clash = conflicts(o)
        if clash:
            problems.append((path, clash))
        if o.cpu_throttle_initial > o.max_cpu_throttle:
            problems.append((f"{path}.cpu_throttle_initial", f"{o.cpu_throttle_initial} is above max_cpu_throttle "
                                                              f"({o.max_cpu_throttle}); lower it or raise the maximum"))
    return problems or _idle_setting_problems(s)


_CONVERGENCE_NAMES = {"auto_converge", "dirty_limit", "sdps", "cpu_throttle_initial", "max_cpu_throttle"}
# A convergence setting and the methods that read it: set while they are all off, it does nothing.
_SETTING_USED_BY = {
    "throttle_trigger_threshold": ("auto_converge", "dirty_limit"), "cpu_throttle_initial": ("auto_converge",),
    "cpu_throttle_increment": ("auto_converge",), "cpu_throttle_tailslow": ("auto_converge",),
    "max_cpu_throttle": ("auto_converge", "sdps"), "vcpu_dirty_limit_mbytes_s": ("dirty_limit",),
    "x_vcpu_dirty_limit_period_ms": ("dirty_limit",), "sdps_target_ratio": ("sdps",),
}


def _idle_setting_problems(s: Scenario) -> Problems:
    """A throttle setting changed from its default where no migration turns on a method that
    reads it (a forgotten `auto_converge = true` would otherwise run unthrottled without a word)."""
    plans = list(zip(s.migration_plans(), s.migration_entries()))

    def off(name: str, options) -> bool:
        return not any(getattr(options, m, False) for m in _SETTING_USED_BY[name])
    problems: Problems = []
    for name, methods in _SETTING_USED_BY.items():
        turn_on = " or ".join(f"{m} = true" for m in methods)
        changed = name in s.migration.model_fields_set and getattr(s.migration, name) != OPTIONS[name].default
        if changed and all(off(name, p.options) for p, _ in plans):
            problems.append((f"migration.{name}", f"has no effect: no migration sets {turn_on}"))
        for p, e in plans:
            if s.migrations and name in e.overrides() and off(name, p.options):
                problems.append((f"migrations[{p.index}].{name}", f"has no effect: this migration does not set "
                                                                  f"{turn_on}"))
    return problems


def _option_problems(technique: str, given, path: str) -> Problems:
    """Options set for a technique that does not declare them."""
    spec = registry.get(technique)
    declared = spec.option_names()
    return [(f"{path}.{name}", f"not an option of technique \"{technique}\" (its options: {', '.join(declared)})")
            for name in OPTIONS if name in given and name not in declared]


def _endpoint_problems(src: Host, dsts: list[Host], from_path: str, to_path: str) -> Problems:
    """Roles: the source needs "source"; the (main) destination "destination" or "main"; the rest "sub-host"."""
    problems: Problems = []
    if "source" not in src.roles:
        problems.append((from_path, f"host \"{src.name}\" lacks role \"source\" (its roles: {', '.join(src.roles)}); "
                                    f"add \"source\" to its role"))
    for n, dst in enumerate(dsts):
        wanted = ("destination", "main") if n == 0 else ("sub-host",)
        if dst.name == src.name:
            problems.append((to_path, f"\"{dst.name}\" is also the migration's source; a host cannot be its own destination"))
        elif not set(wanted) & set(dst.roles):
            which = "the first host of `to`" if n == 0 else "a host after the first in `to`"
            problems.append((to_path, f"host \"{dst.name}\" lacks role {' or '.join(map(repr, wanted))} needed as {which} "
                                      f"(its roles: {', '.join(dst.roles)})"))
    return problems


def _entry_problems(s: Scenario) -> Problems:
    """Each [[migrations]] entry: its VM, its hosts and their roles, its technique's options."""
    problems: Problems = []
    vms = {v.name: v for v in s.vms}
    hosts = {h.name: h for h in s.hosts}
    known_hosts = _names(hosts)
    where: dict[str, tuple[str, str]] = {}  # VM -> (the host the previous migrations left it on, why)
    been: dict[str, set[str]] = {}  # VM -> the hosts it may be on, earlier migrations completed or not
    for k, e in enumerate(s.migrations):
        p = f"migrations[{k}]"
        problems += _option_problems(e.technique or s.migration.technique, e.overrides(), p)
        vm = vms.get(e.vm)
        if vm is None or not vm.migrate:
            problems.append((f"{p}.vm", f"\"{e.vm}\" is not a VM; known: {_names(vms)}" if vm is None else
                             f"\"{e.vm}\" has migrate = false; set migrate = true on it or drop this migration"))
            continue
        unknown = [(f"{p}.{key}", n) for key, names in (("from", (e.from_host,)), ("to", e.to))
                   for n in names if n is not None and n not in hosts]
        problems += [(field, f"\"{n}\" is not a host; known: {known_hosts}") for field, n in unknown]
        start = s.initial_host(vm)
        here, why = where.get(e.vm, (start.name if start else None, "its initial host"))
        if unknown or (e.from_host or here) is None:  # reported above, or at vms[i].host
            continue
        # An earlier migration may be cancelled: the VM may then still be on any host it could have reached.
        reachable = been.setdefault(e.vm, {here})
        if e.from_host and here and e.from_host not in reachable:
            problems.append((f"{p}.from", f"\"{e.vm}\" cannot be on \"{e.from_host}\" at that point (it is on \"{here}\", "
                                          f"{why}); leave `from` out or write from = \"{here}\""))
            continue
        problems += _endpoint_problems(hosts[e.from_host or here], [hosts[n] for n in e.to], f"{p}.from", f"{p}.to")
        where[e.vm] = (e.to[0], f"the destination of {p}")
        reachable.add(e.to[0])
    return problems


def _implicit_problems(s: Scenario) -> Problems:
    """Without [[migrations]]: a VM placed with `host` must start on the source host."""
    dsts = [h for h in s.hosts if "destination" in h.roles]
    if len(dsts) != 1:
        return []  # _host_problems reports it
    problems: Problems = []
    for i, vm in enumerate(s.vms):
        start = s.initial_host(vm)
        if vm.migrate and vm.host is not None and start is not None:
            problems += _endpoint_problems(start, dsts, f"vms[{i}].host", f"vms[{i}].host")
    return problems


def _link_problems(s: Scenario) -> Problems:
    if not s.migrations:
        return _single_pair_link_problems(s)
    problems: Problems = []
    for p in s.migration_plans():
        for dst in p.destinations:
            try:
                s.links_between(p.source, dst)
            except ValueError as exc:
                problems.append((f"migrations[{p.index}].to", f"no link from \"{p.source.name}\" to \"{dst.name}\": none is "
                                 f"listed and their NICs cannot be paired ({exc}); add one with "
                                 f"from = \"{p.source.name}:<nic>\" and to = \"{dst.name}:<nic>\""))
        if p.technique == "split":
            problems += _paging_link_problems(s, p)
    return problems


def _paging_link_problems(s: Scenario, p) -> Problems:
    """A split migration's main host pages to and from each sub-host over a link between them."""
    main = p.destinations[0]
    problems: Problems = []
    for sub in p.destinations[1:]:
        try:
            s.paging_links(main, sub)
        except ValueError as exc:
            problems.append((f"migrations[{p.index}].to", f"no link between the main host \"{main.name}\" and the "
                             f"sub-host \"{sub.name}\" for remote paging ({exc}); add one with "
                             f"from = \"{main.name}:<nic>\" and to = \"{sub.name}:<nic>\""))
    return problems


def _single_pair_link_problems(s: Scenario) -> Problems:
    """Today's rule for one source and one destination: listed links must include one between them."""
    src, dst = s.source, s.destination
    if s.network.links and not s.listed_links(src, dst):
        return [("network.links", f"no link goes from the source host \"{src.name}\" to the destination \"{dst.name}\"; "
                                  f"add one with from = \"{src.name}:<nic>\" and to = \"{dst.name}:<nic>\"")]
    if not s.network.links:
        try:
            s.links_between(src, dst)
        except ValueError as exc:
            return [("network.links", f"empty, and the NICs cannot be paired automatically: {exc}")]
    return []


def _vm_problems(s: Scenario) -> Problems:
    """Each VM on its own: its NIC and whether its workload fits its memory."""
    problems: Problems = []
    if not s.migrations and not any(v.migrate for v in s.vms):
        problems.append(("vms", "no VM has migrate = true; at least one must migrate"))
    for i, vm in enumerate(s.vms):
        if vm.nic == "passthrough":
            problems.append((f"vms[{i}].nic", "a pass-through NIC (DirectPath I/O / SR-IOV) forbids live migration; use \"virtio\", \"e1000\" or \"vmxnet3\""))
        ws = getattr(vm.workload, "working_set_gib", None)
        if ws is not None and ws > vm.memory_gib:
            problems.append((f"vms[{i}].workload.working_set_gib", f"{ws:g} GiB exceeds the VM's memory_gib of {vm.memory_gib:g}"))
        reads = getattr(vm.workload, "read_set_gib", None)
        if reads is not None and reads + (ws or 0.0) > vm.memory_gib:
            problems.append((f"vms[{i}].workload.read_set_gib", f"read set {reads:g} GiB plus working set {ws or 0:g} GiB "
                                                               f"exceeds the VM's memory_gib of {vm.memory_gib:g}"))
        frames = getattr(vm.workload, "frame_mib", None)
        if frames is not None and frames * MIB > vm.memory_gib * GIB:
            problems.append((f"vms[{i}].workload.frame_mib", f"{frames:g} MiB exceeds the VM's memory_gib of {vm.memory_gib:g}"))
        for key in ("log_mib", "session_mib"):
            mib = getattr(vm.workload, key, None)
            if mib is not None and mib * MIB > vm.memory_gib * GIB / 4:
                problems.append((f"vms[{i}].workload.{key}", f"{mib:g} MiB is more than a quarter of the VM's memory_gib of {vm.memory_gib:g}"))
        sweep = getattr(vm.workload, "sweep_gib", None)
        if sweep is not None and sweep > vm.memory_gib:
            problems.append((f"vms[{i}].workload.sweep_gib", f"{sweep:g} GiB exceeds the VM's memory_gib of {vm.memory_gib:g}"))
        if vm.memory_gib * s.emulation.memory_scale * GIB < 16 * PAGE_SIZE:
            problems.append((f"vms[{i}].memory_gib", f"{vm.memory_gib:g} GiB at emulation.memory_scale {s.emulation.memory_scale:g} is under 16 real pages; raise memory_scale"))
    return problems


def _placement_problems(s: Scenario) -> Problems:
    """The VMs must fit on the hosts they start on (no memory overcommit): one line per host that overflows."""
    problems: Problems = []
    used: dict[str, float] = {}
    for i, vm in enumerate(s.vms):
        host = s.initial_host(vm)
        before = used.get(host.name, 0.0)
        used[host.name] = before + vm.memory_gib
        if before <= host.memory_gib < used[host.name]:  # only the VM that tips it over
            others = f" with the {before:g} GiB of the VMs before it there" if before else ""
            problems.append((f"vms[{i}].memory_gib", f"{vm.memory_gib:g} GiB{others} does not fit on its host "
                                                     f"\"{host.name}\" (memory_gib = {host.memory_gib:g})"))
    return problems


def _cache_problems(s: Scenario) -> Problems:
    """An XBZRLE cache is at most its VM's memory (QEMU refuses a larger xbzrle-cache-size too):
    it is allocated in full, so 1e308 MiB would exhaust this machine. One line per field that sets it."""
    problems: dict[str, str] = {}
    for p in s.migration_plans():
        o = p.options
        if "xbzrle" in o.compression and o.xbzrle_cache_mib > p.vm.memory_gib * 1024:
            own = s.migrations and "xbzrle_cache_mib" in s.migrations[p.index].overrides()
            field = f"migrations[{p.index}].xbzrle_cache_mib" if own else "migration.xbzrle_cache_mib"
            problems.setdefault(field, f"{o.xbzrle_cache_mib:g} MiB is more than the memory of \"{p.vm.name}\" "
                                       f"({p.vm.memory_gib * 1024:g} MiB); a cache holds that VM's pages")
    return list(problems.items())


def _split_problems(s: Scenario) -> Problems:
    """A split migration (S-memV) needs a main host and sub-hosts (and only it sends to
    several hosts), a chunk no larger than its VM, and a main host that holds at least
    the VM's state plus one chunk."""
    problems: dict[str, str] = {}
    for p in s.migration_plans():
        to = f"migrations[{p.index}].to" if s.migrations else "migration.technique"
        if p.technique != "split" and len(p.destinations) > 1:
            problems.setdefault(to, f"{len(p.destinations)} hosts, but technique \"{p.technique}\" sends to one; "
                                    f"only \"split\" takes a main host then sub-hosts")
        if p.technique != "split":
            continue
        if len(p.destinations) < 2:
            problems.setdefault(to, "technique \"split\" needs a main host then at least one sub-host: "
                                    "a [[migrations]] entry with to = [\"<main>\", \"<sub-host>\", ...]")
            continue
        o, vm_bytes = p.options, p.vm.memory_gib * GIB
        chunk_bytes = o.chunk_pages * PAGE_SIZE
        own = s.migrations and "chunk_pages" in s.migrations[p.index].overrides()
        field = f"migrations[{p.index}].chunk_pages" if own else "migration.chunk_pages"
        if chunk_bytes > vm_bytes:
            problems.setdefault(field, f"{o.chunk_pages} pages ({chunk_bytes / MIB:g} MiB) is larger than \"{p.vm.name}\" "
                                       f"({p.vm.memory_gib:g} GiB); a chunk is at most the VM's pages")
            continue
        from agents.techniques.split import chunk_problem
        problem = chunk_problem(o.chunk_pages, s.emulation.memory_scale)
        if problem:
            problems.setdefault(field, problem)
            continue
        need = o.device_state_kib * 1024 + chunk_bytes
        main = p.destinations[0]
        if main.memory_gib * GIB < need:
            problems.setdefault(f"migrations[{p.index}].to" if s.migrations else "hosts",
                                f"main host \"{main.name}\" has memory_gib = {main.memory_gib:g}, less than "
                                f"\"{p.vm.name}\"'s device state ({o.device_state_kib:g} KiB) plus one chunk "
                                f"({o.chunk_pages} pages): {need / GIB:.6g} GiB at least")
    return list(problems.items())


def _capacity_problems(s: Scenario) -> Problems:
    """The VMs must fit where they end up, and their images in this machine's memory."""
    plans = s.migration_plans()
    last = list({p.vm.name: p for p in plans}.values())  # each VM's last migration
    if s.migrations:
        problems = _arrival_problems(last)
    else:
        total, dst = sum(p.vm.memory_gib for p in last), s.destination
        problems = [] if total <= dst.memory_gib else [
            ("vms", f"the VMs need {total:g} GiB but the destination \"{dst.name}\" has memory_gib = {dst.memory_gib:g}")]
    per_host: dict[str, dict[str, float]] = {}  # host -> the VMs with an image there
    for vm in s.vms:  # every VM's image on its first host, co-located ones too
        per_host.setdefault(s.initial_host(vm).name, {})[vm.name] = vm.memory_gib
    for p in plans:
        for h in (p.source, *p.destinations):
            per_host.setdefault(h.name, {})[p.vm.name] = p.vm.memory_gib
    real_bytes = max((sum(v.values()) for v in per_host.values()), default=0.0) * GIB * s.emulation.memory_scale
    if real_bytes > 8 * GIB:
        problems.append(("emulation.memory_scale", f"the images would take {real_bytes / GIB:.1f} GiB of real memory per host; lower memory_scale so they stay under 8 GiB"))
    return problems


def _arrival_problems(last: list[MigrationPlan]) -> Problems:
    """A host must hold the VMs whose last migration goes there (a split VM: its hosts together)."""
    problems: Problems = []
    arriving: dict[str, list[MigrationPlan]] = {}
    for p in last:
        if len(p.destinations) == 1:
            arriving.setdefault(p.destination.name, []).append(p)
            continue
        room = sum(h.memory_gib for h in p.destinations)
        if p.vm.memory_gib > room:
            problems.append((f"migrations[{p.index}].to", f"\"{p.vm.name}\" needs {p.vm.memory_gib:g} GiB but its "
                                                          f"destinations have memory_gib = {room:g} together"))
    for name, ps in arriving.items():
        need, host = sum(p.vm.memory_gib for p in ps), ps[0].destination
        if need > host.memory_gib:
            problems.append((f"migrations[{max(p.index for p in ps)}].to",
                             f"the VMs ending on \"{name}\" ({', '.join(p.vm.name for p in ps)}) need {need:g} GiB "
                             f"but it has memory_gib = {host.memory_gib:g}"))
    return problems


def _event_problems(s: Scenario) -> Problems:
    """Events must name links that exist, and VMs that migrate (a workload change: any VM)."""
    problems: Problems = []
    links = s.link_names()
    migrated = list(dict.fromkeys(p.vm.name for p in s.migration_plans()))
    migrated_set = set(migrated)  # sets: thousands of events each look a VM up
    vm_names = [v.name for v in s.vms]
    all_vms = set(vm_names)
    for i, ev in enumerate(s.events):
        link = getattr(ev, "link", None)
        if link is not None and link not in links:
            problems.append((f"events[{i}].link", f"\"{link}\" is not a link of the scenario; known: {_names(links)}"))
        # A workload change may concern any VM (a noisy neighbour that stays); the rest, migrated ones.
        for field, vm in (("vm", getattr(ev, "vm", None)), ("on.vm", ev.on.vm if ev.on else None)):
            anyone = field == "vm" and ev.action == "set-workload"
            if vm is not None and vm not in (all_vms if anyone else migrated_set):
                which, pool = ("a VM", vm_names) if anyone else ("a migrated VM", migrated)
                problems.append((f"events[{i}].{field}", f"\"{vm}\" is not {which}; known: {_names(pool) or 'none'}"))
        if ev.action == "kill-memory-server":
            problems += _memory_server_problems(s, i, ev)
        if ev.action == "start-postcopy" and ev.vm in migrated_set:
            problems += _postcopy_switch_problems(s, i, ev)
    return problems


def _memory_server_problems(s: Scenario, i: int, ev) -> Problems:
    """A kill-memory-server event names a sub-host of a split migration (where a memory server runs)."""
    subs = list(dict.fromkeys(h.name for p in s.migration_plans() if p.technique == "split" for h in p.destinations[1:]))
    if ev.host in subs:
        return []
    return [(f"events[{i}].host", f"\"{ev.host}\" runs no memory server: it is not a sub-host of a split migration; "
                                  f"known: {_names(subs) or 'none'}")]


def _postcopy_switch_problems(s: Scenario, i: int, ev) -> Problems:
    """A start-postcopy event needs a post-copy migration of its VM whose connections exist by then."""
    plans = [p for p in s.migration_plans() if p.vm.name == ev.vm and p.technique == "postcopy"]
    if not plans:
        return [(f"events[{i}].vm", f"\"{ev.vm}\" has no migration with technique = \"postcopy\" "
                                    f"(QEMU's postcopy-ram); set it on the VM's migration or drop this event")]
    plans = [p for p in plans if p.options.postcopy_after_iterations != 0]
    if not plans:
        return [(f"events[{i}].action", f"\"start-postcopy\" switches a pre-copy to post-copy, but the migration "
                                        f"of \"{ev.vm}\" is post-copy from the start (postcopy_after_iterations = 0); "
                                        f"drop this event, or set postcopy_after_iterations >= 1 or leave it unset")]
    if ev.on is not None and ev.on.phase != "precopy":
        when = "before any connection exists" if ev.on.phase == "setup" else "once stop-and-copy has begun"
        return [(f"events[{i}].on.phase", f"a post-copy switch on entering \"{ev.on.phase}\" comes {when}; "
                                          f"use phase = \"precopy\" (with an iteration) or at_s")]
    ready = min(p.start_s + p.options.setup_ms / 1000 for p in plans)
    if ev.at_s is not None and ev.at_s < ready:
        return [(f"events[{i}].at_s", f"{ev.at_s:g} s is a post-copy switch before any connection exists "
                                      f"(the migration of \"{ev.vm}\" is set up at {ready:g} s); use at_s >= {ready:g}")]
    return []


_WORKLOADS = {"idle": IdleWorkload, "uniform": UniformWorkload, "hotset": HotsetWorkload,
              "readmostly": ReadMostlyWorkload, "sweeper": SweeperWorkload, "memwrite": MemwriteWorkload, "video": VideoWorkload, "erp": ErpWorkload}
_EVENTS = {"set-link": SetLinkEvent, "set-background": SetBackgroundEvent, "set-workload": SetWorkloadEvent,
           "cancel": CancelEvent, "start-postcopy": StartPostcopyEvent, "link-down": LinkDownEvent,
           "link-up": LinkUpEvent, "corrupt-batch": CorruptBatchEvent, "kill-destination": KillDestinationEvent,
           "crash-migration-thread": CrashMigrationThreadEvent, "kill-memory-server": KillMemoryServerEvent}
_TAGGED = _WORKLOADS | _EVENTS  # members of discriminated unions, by tag


def _format_location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # Discriminated unions add the tag ("uniform") as a path element: drop it.
            if part in _TAGGED or part == "function-after":
                continue
            out += ("." if out else "") + _key(str(part))
    return out or "(top level)"


def _key(name: str) -> str:
    """A TOML key as written: bare, or quoted when it holds anything else (a ":" would look like the field's end)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through list, Optional, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _fields_at(parent: tuple) -> list[str]:
    """Field names allowed at a location of the scenario (by their TOML names)."""
    model: type[BaseModel] | None = Scenario
    for part in parent:
        if isinstance(part, int) or model is None:
            continue
        if part in _TAGGED:
            model = _TAGGED[part]
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        models = _models_in(field.annotation) if field else []
        model = models[0] if len(models) == 1 else (None if not models else model)
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _tag_of(ctx: dict) -> str:
    """The discriminator of a tagged union's error: "kind" (workloads) or "action" (events)."""
    return str(ctx.get("discriminator", "kind")).strip("'")


def _pydantic_lines(path: str, errors: list[dict]) -> list[str]:
    """One line per problem; a misspelt required field is one problem, not two."""
    missing = {e["loc"] for e in errors if e["type"] == "missing"}
    merged: set[tuple] = set()
    lines: list[tuple[tuple, str]] = []
    for err in errors:
        loc, kind = err["loc"], err["type"]
        msg = err["msg"]
        if kind == "extra_forbidden":
            allowed = _fields_at(loc[:-1])
            guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = "unknown field"
            if guess:
                msg += f"; did you mean {guess[0]!r}?"
                if loc[:-1] + (guess[0],) in missing:
                    merged.add(loc[:-1] + (guess[0],))
            if allowed:
                msg += f" (allowed: {', '.join(allowed)})"
        elif kind == "missing":
            msg = "is required but missing"
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx", {})
            msg = f"unknown {_tag_of(ctx)} {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
        elif kind == "union_tag_not_found":
            tag = _tag_of(err.get("ctx", {}))
            msg = f"needs {'an' if tag == 'action' else 'a'} `{tag}` ({', '.join(_EVENTS if tag == 'action' else _WORKLOADS)})"
        else:
            got = err.get("input")
            if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME:
                msg = f"a name is {NAME_TEXT}"
            if not isinstance(got, (dict, list)):
                msg = f"{msg} (got {_short(repr(got))})"
        lines.append((loc if kind == "missing" else (), f"{path}: {_format_location(loc)}: {msg.replace('Value error, ', '')}"))
    return [line for loc, line in lines if loc not in merged]


def _short(text: str, limit: int = 80) -> str:
    """A quoted value, cut so that a megabyte string does not become a megabyte line."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def parse_scenario(text: str, path: str = "<scenario>") -> Scenario:
    """A scenario from TOML text, or ScenarioError with one line per problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([f"{path}: not valid TOML: {exc}"]) from None
    except RecursionError:  # arrays or tables nested thousands deep
        raise ScenarioError([f"{path}: not valid TOML: nested too deeply"]) from None
    if {"base", "vary"} <= set(data):  # one line, not one per field a scenario lacks or does not know
        raise ScenarioError([f"{path}: a sweep file (base, vary), not a scenario; run it with `livemig sweep {path}`"])
    return scenario_from_data(data, path)


def scenario_from_data(data: dict, path: str = "<scenario>") -> Scenario:
    """A scenario from its parsed TOML tables (e.g. a sweep's point), or ScenarioError."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_pydantic_lines(path, exc.errors())) from None
    problems = _semantic_problems(scenario)
    if problems:
        raise ScenarioError([f"{path}: {field}: {msg}" for field, msg in problems])
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """A scenario file: a regular file of at most MAX_FILE_BYTES of UTF-8 TOML (see read_scenario_text)."""
    return parse_scenario(read_scenario_text(path), str(path))


def read_scenario_text(path: str | Path) -> str:
    """The text of a scenario file, refusing at once what is not one: a directory, a FIFO or a
    device (opened without blocking, so a FIFO with no writer cannot hang), a file over
    MAX_FILE_BYTES (read no further, so an endless file cannot either), or bytes that are not UTF-8."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ScenarioError([f"{p}: no such file; `livemig list` shows the shipped scenarios"]) from None
    except OSError as exc:
        raise ScenarioError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    kind = _file_kind(os.fstat(fd).st_mode)
    if kind:
        os.close(fd)
        raise ScenarioError([f"{p}: not a regular file: it is {kind}; give a scenario .toml file"])
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ScenarioError([f"{p}: too large: over {MAX_FILE_BYTES // MIB} MiB; a scenario is a hand-written "
                             f"experiment (at most {MAX_COUNT} hosts, VMs or migrations)"])
    body = data.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark (Windows editors write one) is not TOML
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + len(data) - len(body)
        raise ScenarioError([f"{p}: not UTF-8: byte 0x{body[exc.start]:02x} at offset {offset}; "
                             f"save the file as UTF-8"]) from None


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words; "" for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((words for test, words in kinds if test(mode)), "not a regular file")


def shipped_scenarios(directory: Path) -> list[Path]:
    """The scenario files under `directory` (scenarios/), sorted; the sweep
    specifications in its `sweeps/` folder are not scenarios."""
    return sorted(p for p in directory.rglob("*.toml") if "sweeps" not in p.relative_to(directory).parts[:-1])
