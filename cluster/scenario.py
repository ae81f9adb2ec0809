"""Scenario files: the schema of a migration experiment and its validation.

A scenario is TOML in physical units (GiB, Gbit/s, ms, pages/s, cores). This
module knows what a valid scenario is and turns every problem into one line
that names the file, the field path, what is wrong and what is allowed. It
knows nothing of Ray, scaling or migration mechanics.
"""
from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PAGE_SIZE = 4096
GIB = 1 << 30
MIB = 1 << 20


class ScenarioError(Exception):
    """A scenario that cannot be used; `lines` holds one message per problem."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Nic(_Strict):
    name: str = Field(min_length=1)
    speed_gbps: Positive
    # A pass-through NIC (SR-IOV / DirectPath I/O) cannot be live-migrated.
    passthrough: bool = False


class Host(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    role: Literal["source", "destination", "sub-host"]
    cores: Annotated[int, Field(ge=1, le=4096)] = 16
    memory_gib: Positive = 64
    nics: list[Nic] = Field(min_length=1)


class BackgroundTraffic(_Strict):
    """A co-located VM's traffic sharing the link (e.g. a web server)."""

    mbytes_s: Annotated[float, Field(ge=0)] = 0.0


class Link(_Strict):
    """One NIC pair: `from_nic` and `to_nic` are written "host:nic"."""

    from_nic: str = Field(alias="from", pattern=r"^[^:]+:[^:]+$")
    to_nic: str = Field(alias="to", pattern=r"^[^:]+:[^:]+$")
    bandwidth_gbps: Positive | None = None  # default: the slower NIC's speed
    rtt_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.2
    background: BackgroundTraffic = BackgroundTraffic()


class Network(_Strict):
    """NIC pairs for the migration: listed in `links`, or paired automatically
    by link speed (the vMotion rule, cluster/nic_pairing.py) when `links` is empty."""

    links: list[Link] = []
    rtt_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.2  # for automatically paired links
    # PMigrate §3.2: migration takes only spare bandwidth, keeping a reserved minimum.
    rate_control: bool = False
    reserved_mbytes_s: Annotated[float, Field(ge=0)] = 0.0


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
    text: Fraction = 0.25
    structured: Fraction = 0.25
    random: Fraction = 0.25
    working_set: Literal["zero", "text", "structured", "random"] | None = None
    working_set_fraction: Fraction | None = None
    writes: Literal["image", "text", "structured", "random"] = "image"

    @model_validator(mode="after")
    def _sums_to_one(self) -> "ContentMix":
        total = self.zero + self.text + self.structured + self.random
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"zero + text + structured + random is {total:g}; they must add up to 1")
        return self


class IdleWorkload(_Strict):
    kind: Literal["idle"]


class UniformWorkload(_Strict):
    """Writes pages chosen uniformly at random in a working set."""

    kind: Literal["uniform"]
    dirty_pages_per_s: Annotated[float, Field(ge=0)]
    working_set_gib: Positive | None = None  # default: all of memory
    # A hot set inside the working set, written at its own rate on top (e.g.
    # memcached's hash table and LRU heads while gets touch random items).
    hot_set_gib: Annotated[float, Field(ge=0)] = 0.0
    hot_pages_per_s: Annotated[float, Field(ge=0)] = 0.0


class HotsetWorkload(_Strict):
    """memcached-like: Zipf-skewed keys over a hot set, a read/write mix."""

    kind: Literal["hotset"]
    ops_per_s: Annotated[float, Field(gt=0)]
    write_fraction: Fraction = 0.1
    zipf_s: Annotated[float, Field(gt=1, le=5)] = 1.2
    working_set_gib: Positive | None = None


class SweeperWorkload(_Strict):
    """RapidWrite-like: writes `sweep_gib` sequentially, then sleeps."""

    kind: Literal["sweeper"]
    sweep_gib: Positive
    write_mbytes_s: Positive = 1000
    sleep_s: Annotated[float, Field(ge=0)] = 5


class MemwriteWorkload(_Strict):
    """lmbench-like memory write benchmark: small writes at random offsets into
    pages of a working set, over and over (near-ideal for delta encoding)."""

    kind: Literal["memwrite"]
    writes_per_s: Annotated[float, Field(ge=0)]
    bytes_per_write: Annotated[int, Field(ge=1, le=PAGE_SIZE)] = 64
    working_set_gib: Positive | None = None


class VideoWorkload(_Strict):
    """HD video transcoding: frame buffers of `frame_mib` rewritten at `fps`;
    per frame, `changed_fraction` of every page (its moving part) changes."""

    kind: Literal["video"]
    frame_mib: Positive
    fps: Positive = 25
    changed_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1


class ErpWorkload(_Strict):
    """Transactional ERP-like application: each transaction writes
    `writes_per_op` records of `record_bytes` in its tables, appends
    `log_bytes_per_op` to a redo log and rewrites `session_kib_per_op` of a
    session (roll) area of `session_mib`; it breaks (stops responding) when
    a downtime exceeds `max_downtime_ms`."""

    kind: Literal["erp"]
    ops_per_s: Annotated[float, Field(gt=0)]
    writes_per_op: Annotated[int, Field(ge=1, le=1000)] = 8
    record_bytes: Annotated[int, Field(ge=1, le=PAGE_SIZE)] = 128
    log_bytes_per_op: Annotated[int, Field(ge=0, le=PAGE_SIZE)] = 256
    log_mib: Positive = 64
    session_mib: Annotated[float, Field(ge=0)] = 0
    session_kib_per_op: Annotated[float, Field(ge=0)] = 64
    working_set_gib: Positive | None = None
    max_downtime_ms: Positive = 500


Workload = Annotated[
    IdleWorkload | UniformWorkload | HotsetWorkload | SweeperWorkload | MemwriteWorkload | VideoWorkload
    | ErpWorkload,
    Field(discriminator="kind"),
]


class Vm(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    memory_gib: Positive
    vcpus: Annotated[int, Field(ge=1, le=1024)] = 2
    nic: Literal["virtio", "e1000", "vmxnet3", "passthrough"] = "virtio"
    disk_gib: Annotated[float, Field(ge=0)] = 0
    workload: Workload = IdleWorkload(kind="idle")
    content: ContentMix = ContentMix()
    # Its operations are network requests served by the hypervisor's I/O thread.
    io_bound: bool = False
    # false: a co-located VM that stays on the source; its throughput before
    # and during the others' migration is reported (PMigrate §6.3).
    migrate: bool = True

    @model_validator(mode="after")
    def _size_placed_working_set(self) -> "Vm":
        """content.working_set covers the workload's footprint unless sized."""
        c = self.content
        if c.working_set is None or c.working_set_fraction is not None:
            return self
        from agents.guest.workloads import footprint_gib
        share = footprint_gib(self.workload.model_dump(), self.memory_gib) / self.memory_gib
        return self.model_copy(update={"content": c.model_copy(update={"working_set_fraction": share})})


class Migration(_Strict):
    technique: Literal["precopy"] = "precopy"
    # image: each iteration a pass over the dirty image (PMigrate); time-sliced:
    # each iteration a slice of `slice_mib` after fetching the dirty log (vanilla KVM).
    strategy: Literal["image", "time-sliced"] = "image"
    slice_mib: Positive = 2.0
    downtime_limit_ms: Annotated[float, Field(gt=0)] = 300
    max_iterations: Annotated[int, Field(ge=1, le=1_000_000)] = 30
    # Stop when the remaining dirty set has not shrunk for this many iterations.
    stall_iterations: Annotated[int, Field(ge=1)] = 3
    max_sent_ratio: Annotated[float, Field(ge=1)] = 3.0  # total sent / memory size
    bandwidth_cap_gbps: Positive | None = None
    device_state_kib: Annotated[float, Field(ge=0)] = 256
    batch_pages: Annotated[int, Field(ge=1, le=4096)] | None = None  # default: a few ms of link time
    setup_ms: Annotated[float, Field(ge=0)] = 50
    # Suspending on the source and restoring devices and resuming on the
    # destination: a fixed part of every downtime (Xen 4.1: about 0.3 s).
    resume_ms: Annotated[float, Field(ge=0)] = 0
    # Time-sliced (vanilla kvm-qemu) migration runs in the I/O thread that also
    # serves the guest's requests: the share of it the migration takes from an
    # I/O-bound guest while pre-copying.
    io_thread_taken: Fraction = 0.0
    # PMigrate: consumer threads, each with its own connection; connections are
    # spread over the NIC pairs (two consumers per port with 8 consumers, 4 ports).
    consumers: Annotated[int, Field(ge=1, le=64)] = 1
    address_space_lock: Literal["global", "rwlock", "range"] = "global"
    memory_pool_mib: Positive = 128  # per pipeline stage, emulated
    # Page compression (agents/encodings/encoding.py): zstd over each batch (multifd-zstd),
    # XBZRLE deltas against a per-VM cache of sent pages, or both.
    compression: Literal["none", "zstd", "xbzrle", "xbzrle+zstd"] = "none"
    zstd_level: Annotated[int, Field(ge=-7, le=22)] = 1
    xbzrle_cache_mib: Positive = 64  # per VM, emulated MiB (QEMU's xbzrle-cache-size)
    xbzrle_budget: Annotated[int, Field(ge=1, le=PAGE_SIZE)] | None = None  # bytes per delta; default a page


class CpuModel(_Strict):
    """Charged CPU (agents/cpu.py): a profile, any of whose costs may be overridden.

    Costs are microseconds of CPU per emulated 4 KiB page. `migration_cores`
    is how many cores of each host the migration may use (CPU rate control);
    by default all of them.
    """

    profile: Literal["modern", "xen-4.1", "kvm-0.14"] = "modern"
    mmap_us: Annotated[float, Field(ge=0)] | None = None
    map_us: Annotated[float, Field(ge=0)] | None = None
    munmap_us: Annotated[float, Field(ge=0)] | None = None
    handle_us: Annotated[float, Field(ge=0)] | None = None
    send_us: Annotated[float, Field(ge=0)] | None = None
    receive_us: Annotated[float, Field(ge=0)] | None = None
    restore_us: Annotated[float, Field(ge=0)] | None = None
    shootdown_us: Annotated[float, Field(ge=0)] | None = None
    dirty_sync_ns: Annotated[float, Field(ge=0)] | None = None
    guest_fault_us: Annotated[float, Field(ge=0)] | None = None
    migration_cores: Annotated[int, Field(ge=1, le=4096)] | None = None
    # CPU rate control: how many of the migration's cores on the source are
    # also run by co-located VMs, and the migration's share of such a core
    # when both want it (PMigrate: "by default its priority is set below the average").
    shared_cores: Annotated[int, Field(ge=0, le=4096)] = 0
    migration_priority: Annotated[float, Field(gt=0, le=1)] = 0.5

    def overrides(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in ("mmap_us", "map_us", "munmap_us", "handle_us", "send_us", "receive_us",
                                              "restore_us", "shootdown_us", "dirty_sync_ns", "guest_fault_us")}


class Emulation(_Strict):
    memory_scale: Annotated[float, Field(gt=0, le=1)] = 1 / 64
    dilation: Annotated[float, Field(gt=0, le=1000)] = 1.0
    seed: int = 1


REFERENCE_KEYS = ("total_time_s", "downtime_ms", "iterations", "memory_bytes_sent", "downtime_bytes_sent",
                  "avg_throughput_mbytes_s", "cpu_usage_percent", "cpu_seconds", "non_response_s",
                  "memory_compress_rate", "degradation")


class Reference(_Strict):
    """What the paper measured for this experiment, for `livemig compare`."""

    source: str = ""
    figures: dict[Literal[REFERENCE_KEYS], float] = {}


class Scenario(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    reference: Reference = Reference()
    hosts: list[Host] = Field(min_length=2)
    network: Network = Network()
    vms: list[Vm] = Field(min_length=1)
    migration: Migration = Migration()
    cpu: CpuModel = CpuModel()
    emulation: Emulation = Emulation()

    def host(self, role: str) -> Host:
        return next(h for h in self.hosts if h.role == role)

    @property
    def source(self) -> Host:
        return self.host("source")

    @property
    def destination(self) -> Host:
        return self.host("destination")

    def migration_links(self) -> list[Link]:
        """Links from the source host to the destination host: as listed, or paired by speed."""
        src, dst = self.source, self.destination
        if not self.network.links:
            from cluster.nic_pairing import Nic as PairNic
            from cluster.nic_pairing import pair_nics
            pairs = pair_nics([PairNic(n.name, n.speed_gbps) for n in src.nics if not n.passthrough],
                              [PairNic(n.name, n.speed_gbps) for n in dst.nics if not n.passthrough])
            return [Link.model_validate({"from": f"{src.name}:{p.source}", "to": f"{dst.name}:{p.dest}",
                                         "bandwidth_gbps": p.bandwidth_gbps, "rtt_ms": self.network.rtt_ms})
                    for p in pairs]
        return [
            l for l in self.network.links
            if l.from_nic.split(":")[0] == src.name and l.to_nic.split(":")[0] == dst.name
        ]

    def link_bandwidth_gbps(self, link: Link) -> float:
        if link.bandwidth_gbps is not None:
            return link.bandwidth_gbps
        return min(self._nic(link.from_nic).speed_gbps, self._nic(link.to_nic).speed_gbps)

    def _nic(self, ref: str) -> Nic:
        host_name, nic_name = ref.split(":")
        host = next(h for h in self.hosts if h.name == host_name)
        return next(n for n in host.nics if n.name == nic_name)


def _semantic_problems(s: Scenario) -> list[tuple[str, str]]:
    """Cross-field checks pydantic cannot express; (field path, message)."""
    problems: list[tuple[str, str]] = []
    roles = [h.role for h in s.hosts]
    for role in ("source", "destination"):
        if roles.count(role) != 1:
            problems.append(("hosts", f"needs exactly one host with role = \"{role}\", found {roles.count(role)}"))
    names = [h.name for h in s.hosts]
    for i, h in enumerate(s.hosts):
        if names.count(h.name) > 1:
            problems.append((f"hosts[{i}].name", f"\"{h.name}\" is used by more than one host; host names must be unique"))
    nic_refs = {f"{h.name}:{n.name}" for h in s.hosts for n in h.nics}
    for i, link in enumerate(s.network.links):
        for key, ref in (("from", link.from_nic), ("to", link.to_nic)):
            if ref not in nic_refs:
                problems.append((f"network.links[{i}].{key}", f"\"{ref}\" is not a NIC of any host; known: {', '.join(sorted(nic_refs))}"))
    if problems:
        return problems
    if s.network.links and not s.migration_links():
        problems.append(("network.links", f"no link goes from the source host \"{s.source.name}\" to the destination \"{s.destination.name}\"; add one with from = \"{s.source.name}:<nic>\" and to = \"{s.destination.name}:<nic>\""))
    if not s.network.links:
        try:
            s.migration_links()
        except ValueError as exc:
            problems.append(("network.links", f"empty, and the NICs cannot be paired automatically: {exc}"))
    if not any(v.migrate for v in s.vms):
        problems.append(("vms", "no VM has migrate = true; at least one must migrate"))
    vm_names = [v.name for v in s.vms]
    total_gib = 0.0
    for i, vm in enumerate(s.vms):
        if vm_names.count(vm.name) > 1:
            problems.append((f"vms[{i}].name", f"\"{vm.name}\" is used by more than one VM; VM names must be unique"))
        if vm.nic == "passthrough":
            problems.append((f"vms[{i}].nic", "a pass-through NIC (DirectPath I/O / SR-IOV) forbids live migration; use \"virtio\", \"e1000\" or \"vmxnet3\""))
        ws = getattr(vm.workload, "working_set_gib", None)
        if ws is not None and ws > vm.memory_gib:
            problems.append((f"vms[{i}].workload.working_set_gib", f"{ws:g} GiB exceeds the VM's memory_gib of {vm.memory_gib:g}"))
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
        total_gib += vm.memory_gib if vm.migrate else 0.0
    dst = s.destination
    if total_gib > dst.memory_gib:
        problems.append(("vms", f"the VMs need {total_gib:g} GiB but the destination \"{dst.name}\" has memory_gib = {dst.memory_gib:g}"))
    real_bytes = total_gib * GIB * s.emulation.memory_scale
    if real_bytes > 8 * GIB:
        problems.append(("emulation.memory_scale", f"the images would take {real_bytes / GIB:.1f} GiB of real memory per host; lower memory_scale so they stay under 8 GiB"))
    return problems


_WORKLOADS = {"idle": IdleWorkload, "uniform": UniformWorkload, "hotset": HotsetWorkload, "sweeper": SweeperWorkload,
              "memwrite": MemwriteWorkload, "video": VideoWorkload, "erp": ErpWorkload}


def _format_location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # Discriminated unions add the tag ("uniform") as a path element: drop it.
            if part in _WORKLOADS or part == "function-after":
                continue
            out += ("." if out else "") + str(part)
    return out or "(top level)"


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
        if part in _WORKLOADS:
            model = _WORKLOADS[part]
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        models = _models_in(field.annotation) if field else []
        model = models[0] if len(models) == 1 else (None if not models else model)
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


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
            msg = f"unknown kind {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
        elif kind == "union_tag_not_found":
            msg = f"needs a `kind` ({', '.join(_WORKLOADS)})"
        else:
            got = err.get("input")
            if not isinstance(got, (dict, list)):
                msg = f"{msg} (got {got!r})"
        lines.append((loc if kind == "missing" else (), f"{path}: {_format_location(loc)}: {msg.replace('Value error, ', '')}"))
    return [line for loc, line in lines if loc not in merged]


def parse_scenario(text: str, path: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([f"{path}: not valid TOML: {exc}"]) from None
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_pydantic_lines(path, exc.errors())) from None
    problems = _semantic_problems(scenario)
    if problems:
        raise ScenarioError([f"{path}: {field}: {msg}" for field, msg in problems])
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError([f"{p}: no such file; `livemig list` shows the shipped scenarios"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([f"{p}: cannot read: {exc}"]) from None
    return parse_scenario(text, str(p))
