"""Migration policies of the management layer: presets a scenario names
(`policy = "nova"`), each taken from its source, plus the single settings
that tune or replace a preset's numbers. Pure logic: no clocks, no Ray.

A policy watches pre-copy from outside, as a cloud's compute service does
(it polls query-migrate and acts through the hypervisor's API), and decides,
every `policy_monitor_period_s` (Nova's monitor loop: 0.5 s) and at each
check of the stop rule (agents/techniques/precopy.py):

- the downtime limit now: raised in steps over time, the way OpenStack Nova
  raises QEMU's downtime limit (nova/virt/libvirt/migration.py,
  `downtime_steps`): with a maximum `live_migration_downtime` (500 ms),
  `live_migration_downtime_steps` steps (10) and a delay of
  `live_migration_downtime_delay` (75 s) per GiB of guest RAM, at least
  2 GiB: delay = int(delay_per_gib x GiB); base = max / steps;
  offset = (max - base) / steps; step i (0..steps) starts at i x delay and
  sets int(base + offset x i) ms. Nova's own example: 10 steps, 30 s per
  GiB, 3 GiB, 400 ms: 40 ms at 0 s, 76 ms at 90 s, ... 400 ms at 900 s;
- a completion timeout: `live_migration_completion_timeout` (800 s per GiB,
  at least 2 GiB; 0: none), after which `live_migration_timeout_action`
  applies: abort (here "cancel": the VM stays on its source) or
  force_complete (here "force": switch to post-copy when the technique can,
  else pause the VM and finish as a stop-and-copy, as Nova does when
  post-copy is not permitted);
- a progress timeout: no new lowest remaining-bytes for N seconds (Nova's
  deprecated `live_migration_progress_timeout`, which compares
  query-migrate's data_remaining with its lowest value so far; KubeVirt's
  `progressTimeout`, 150 s); the same action applies;
- a hard maximum downtime, which the run may not exceed: a stop-and-copy
  whose expected downtime (what remains over the measured bandwidth, QEMU's
  expected-downtime) exceeds it is refused and pre-copy goes on; where
  nothing would ever end it (no timeout is set, or the refused stop-and-copy
  was the timeout's own "force"), the fallback is to cancel. The stepped
  limit never exceeds the hard maximum. A switch to post-copy is never
  refused: its downtime is only the device state.

Presets (`PRESETS`): "none" (nothing: only the settings given), "nova"
(Nova's libvirt defaults, abort on timeout), "nova-force" (the same with
force_complete), "kubevirt" (KubeVirt's migration defaults:
completionTimeoutPerGiB 800 s, progressTimeout 150 s, cancel). A setting
given in the scenario replaces the preset's.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

GIB = 1 << 30


@dataclass(frozen=True)
class PolicySettings:
    """A policy's numbers; 0 or None turns a part off."""

    completion_timeout_s_per_gib: float = 0.0
    timeout_action: str = "cancel"  # cancel | force
    progress_timeout_s: float = 0.0
    downtime_max_ms: float | None = None  # None: the migration's downtime_limit_ms stays
    downtime_steps: int = 1
    downtime_delay_s_per_gib: float = 0.0
    hard_max_downtime_ms: float | None = None
    min_gib: float = 0.0  # per-GiB figures count at least this much memory (Nova: 2 GiB)
    source: str = ""


PRESETS: dict[str, PolicySettings] = {
    "none": PolicySettings(source="no policy: only the settings given"),
    "nova": PolicySettings(800, "cancel", 0, 500, 10, 75, None, 2.0,
                           source="OpenStack Nova [libvirt] defaults: live_migration_completion_timeout 800 s/GiB, "
                                  "live_migration_timeout_action abort, live_migration_downtime 500 ms in "
                                  "live_migration_downtime_steps 10 every live_migration_downtime_delay 75 s/GiB, "
                                  "at least 2 GiB"),
    "nova-force": PolicySettings(800, "force", 0, 500, 10, 75, None, 2.0,
                                 source="Nova's defaults with live_migration_timeout_action = force_complete "
                                        "(post-copy if permitted, else pause the VM)"),
    "kubevirt": PolicySettings(800, "cancel", 150, None, 1, 0, None, 0.0,
                               source="KubeVirt migration defaults: completionTimeoutPerGiB 800 s, "
                                      "progressTimeout 150 s, the migration cancelled"),
}

# The scenario's option names that replace a preset's number (agents/techniques/options.py POLICY).
SETTING_NAMES = ("completion_timeout_s_per_gib", "timeout_action", "progress_timeout_s", "downtime_max_ms",
                 "downtime_steps", "downtime_delay_s_per_gib", "hard_max_downtime_ms")


def settings_from_options(o) -> PolicySettings | None:
    """The preset the options name, with the settings they give over it; None: no policy at all."""
    name = getattr(o, "policy", "none") or "none"
    given = {k: getattr(o, k) for k in SETTING_NAMES if getattr(o, k, None) is not None}
    if name == "none" and not given:
        return None
    return replace(PRESETS[name], **given)


def downtime_schedule(max_ms: float, steps: int, delay_s_per_gib: float, data_gib: float) -> list[tuple[int, int]]:
    """Nova's downtime_steps: (start time in s, downtime limit in ms) for steps 0..steps."""
    delay = int(delay_s_per_gib * data_gib)
    base = max_ms / steps
    offset = (max_ms - base) / steps
    return [(int(delay * i), int(base + offset * i)) for i in range(steps + 1)]


@dataclass(frozen=True)
class Decision:
    action: str  # "go-on" | "cancel" | "force" | "refuse-switchover"
    reason: str = ""


GO_ON = Decision("go-on")


@dataclass
class Policy:
    """One migration's policy state. `memory_bytes`: the VM's memory (emulated);
    `base_limit_s`: the migration's own downtime limit; `postcopy`: whether a
    forced completion switches to post-copy."""

    settings: PolicySettings
    memory_bytes: float
    base_limit_s: float
    postcopy: bool = False
    lowest: float = float("inf")
    lowest_at: float = 0.0
    refused: set = field(default_factory=set)

    @property
    def data_gib(self) -> float:
        return max(self.settings.min_gib, self.memory_bytes / GIB)

    @property
    def completion_timeout_s(self) -> float:
        """Nova: int(completion_timeout x data_gb); 0: none."""
        return int(self.settings.completion_timeout_s_per_gib * self.data_gib)

    def schedule(self) -> list[tuple[int, int]]:
        s = self.settings
        if s.downtime_max_ms is None:
            return []
        return downtime_schedule(s.downtime_max_ms, s.downtime_steps, s.downtime_delay_s_per_gib, self.data_gib)

    def downtime_limit_s(self, elapsed_s: float) -> float:
        """The downtime limit at `elapsed_s` after the migration started (the last step begun), within the hard maximum."""
        limit = self.base_limit_s
        for start, ms in self.schedule():
            if elapsed_s >= start:
                limit = ms / 1000
        hard = self.settings.hard_max_downtime_ms
        return min(limit, hard / 1000) if hard is not None else limit

    def _timeout(self, elapsed_s: float, remaining: float) -> str | None:
        if remaining < self.lowest:
            self.lowest, self.lowest_at = remaining, elapsed_s
        s = self.settings
        if self.completion_timeout_s and elapsed_s > self.completion_timeout_s:
            return "completion-timeout"
        if s.progress_timeout_s and elapsed_s - self.lowest_at > s.progress_timeout_s:
            return "progress-timeout"
        return None

    def decide(self, elapsed_s: float, remaining: float, bandwidth: float, stop: str | None) -> Decision:
        """At a stop-rule check: `stop` is the stop rule's reason (None: it goes on),
        `remaining` the dirty bytes, `bandwidth` the last measured bytes/s."""
        timeout = self._timeout(elapsed_s, remaining)
        if timeout and stop != "converged":
            if self.settings.timeout_action == "cancel":
                return Decision("cancel", timeout)
            if self.postcopy:
                return Decision("force", timeout)
            if self._too_long(remaining, bandwidth):
                return Decision("cancel", f"{timeout}: stop-and-copy would exceed hard_max_downtime_ms")
            return Decision("force", timeout)
        has_timeout = bool(self.completion_timeout_s or self.settings.progress_timeout_s)
        if stop and stop != "converged" and not self.postcopy and self._too_long(remaining, bandwidth):
            if not has_timeout:
                return Decision("cancel", f"{stop}: stop-and-copy would exceed hard_max_downtime_ms")
            return Decision("refuse-switchover", stop)
        if stop and stop != "converged" and has_timeout:
            # Under a manager with timeouts QEMU switches over only when the remainder fits the
            # (stepped) downtime limit: it has no iteration or byte cap, and the timeouts end it.
            return Decision("refuse-switchover", f"{stop}: only the downtime limit or a timeout ends pre-copy")
        return GO_ON

    def _too_long(self, remaining: float, bandwidth: float) -> bool:
        hard = self.settings.hard_max_downtime_ms
        if hard is None:
            return False
        return bandwidth <= 0 or remaining / bandwidth > hard / 1000
