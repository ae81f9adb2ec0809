"""Convergence control: slowing a guest that dirties memory faster than pre-copy
can carry it, so that pre-copy converges instead of stopping the VM for seconds.

Three policies, pure (no clocks, no Ray): each is told what one dirty-bitmap
sync period saw (`SyncPeriod`) and answers with the throttle it wants.

- `AutoConverge`: QEMU's auto-converge (migration/ram.c
  `migration_trigger_throttle`, `mig_throttle_guest_down`; parameters from
  qapi/migration.json). Rates are compared once at least a second has passed
  since the last comparison (QEMU only looks after 1000 ms): when the bytes
  dirtied in the period exceed `throttle-trigger-threshold` percent of the
  bytes transferred, a counter goes up; at two the counter is cleared and the
  throttle starts at `cpu-throttle-initial` or rises by
  `cpu-throttle-increment`, up to `max-cpu-throttle`. QEMU does not clear the
  counter on a calm period, so "two" means two high periods, not necessarily
  in a row; we do the same. With `cpu-throttle-tailslow` the step is the
  smaller of the increment and the one that would bring the dirty rate to the
  threshold: cpu_ideal = cpu_now * threshold_bytes / dirtied_bytes, step =
  min(cpu_now - cpu_ideal, increment), in whole percent.
- `DirtyLimit`: QEMU's dirty-limit (system/dirtylimit.c). The same trigger;
  then every vCPU gets a quota of `vcpu-dirty-limit` MB/s which the guest
  enforces itself every `x-vcpu-dirty-limit-period` (`DirtyLimitController`).
- `Sdps`: vMotion's Stun During Page Send (seed vmotion-5.1, "Stun During
  Page-Send"): when pre-copy stops making forward progress because the guest
  dirties faster than the transfer rate, it injects delays into the vCPUs so
  the dirty rate falls to a preferred rate below the transfer rate. It kicks
  in when two syncs in a row find no forward progress (the guest dirtied at
  least what was sent, or the dirty set did not shrink: the seed's "each
  pre-copy iteration should take less time to complete than the previous";
  two, as QEMU's trigger wants two high periods, so that one slow pass on a
  loaded link does not stun the guest), or when the stop rule would give up
  (stalled, too many iterations or bytes). The seed gives no formula; ours re-aims at every
  sync from then on: the unthrottled dirty rate (the observed one over the
  share the vCPUs ran) times the running share must equal
  `sdps_target_ratio` times the transfer rate.

A CPU throttle of p percent is QEMU's (system/cpu-throttle.c): every 10 ms
timeslice a vCPU runs, it then sleeps p/(1-p) of a timeslice, so it runs
1 - p/100 of the time and the workload's progress and writes slow in
proportion (agents/guest/vcpus.py applies it).

`Governor` is the mechanism a technique holds: it turns a policy's answers
into settings of the guest's shared dirty log and timeline events. The
predictor (cluster/predict_convergence.py) drives the same policies.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PAGE = 4096
MIB = 1 << 20
QEMU_SYNC_PERIOD_S = 1.0  # migration_bitmap_sync compares rates at most once a second
QEMU_HIGH_PERIODS = 2  # dirty_rate_high_cnt >= 2
SDPS_NO_PROGRESS_SYNCS = 2  # syncs in a row without forward progress before SDPS kicks in (ours)
CPU_THROTTLE_PCT_MAX = 99  # system/cpu-throttle.c clamps to 1..99


@dataclass(frozen=True)
class SyncPeriod:
    """What one dirty-bitmap sync saw since the previous one (emulated units)."""

    duration_s: float
    dirtied_bytes: float  # pages found dirty at this sync, times 4 KiB
    transferred_bytes: float  # put on the wire since the previous sync
    remaining_before: float = 0.0  # dirty bytes at the start of the period
    remaining_after: float = 0.0  # ... and at its end


def running_share(throttle_pct: float) -> float:
    """Share of the time a vCPU throttled at `throttle_pct` runs (QEMU: it
    runs a 10 ms timeslice, then sleeps pct/(1-pct) of one)."""
    return 1.0 - min(max(throttle_pct, 0.0), CPU_THROTTLE_PCT_MAX) / 100.0


class _Accumulator:
    """QEMU's period counters: dirtied and transferred bytes summed over syncs
    until at least `min_s` has passed (num_dirty_pages_period, bytes_xfer_prev)."""

    def __init__(self, min_s: float) -> None:
        self.min_s = min_s
        self.clear()

    def clear(self) -> None:
        self.s = self.dirtied = self.transferred = 0.0

    def add(self, p: SyncPeriod) -> SyncPeriod | None:
        self.s += p.duration_s
        self.dirtied += p.dirtied_bytes
        self.transferred += p.transferred_bytes
        if self.s < self.min_s:
            return None
        out = SyncPeriod(self.s, self.dirtied, self.transferred, p.remaining_before, p.remaining_after)
        self.clear()
        return out


class _Trigger:
    """migration_trigger_throttle's test: dirtied above `threshold_pct` of
    transferred, for the `QEMU_HIGH_PERIODS`-th time since it last fired."""

    def __init__(self, threshold_pct: float, min_period_s: float = QEMU_SYNC_PERIOD_S) -> None:
        self.threshold_pct = threshold_pct
        self.periods = _Accumulator(min_period_s)
        self.high = 0
        self.seen = 0  # complete periods judged
        self.last_high = False

    def fires(self, p: SyncPeriod) -> SyncPeriod | None:
        """The period that fired it (to size the step), or None."""
        period = self.periods.add(p)
        if period is None:
            return None
        self.seen += 1
        self.last_high = period.dirtied_bytes > self.threshold_bytes(period)
        if not self.last_high:
            return None
        self.high += 1
        if self.high < QEMU_HIGH_PERIODS:
            return None
        self.high = 0
        return period

    def threshold_bytes(self, p: SyncPeriod) -> float:
        return p.transferred_bytes * self.threshold_pct / 100

    def may_fire(self) -> bool:
        """Whether it can still fire on this guest: it has judged fewer periods than it needs to
        fire, or the last one was high. One that judged enough, the last of them low, says the
        guest dirties below the threshold: throttling is not what keeps pre-copy from converging."""
        return self.seen < QEMU_HIGH_PERIODS or self.last_high


@dataclass
class Decision:
    """What a policy wants after a sync: a CPU throttle (percent) or a dirty limit (MiB/s per vCPU)."""

    throttle_pct: float | None = None
    dirty_limit_mbytes_s: float | None = None


class AutoConverge:
    name = "auto-converge"

    def __init__(self, threshold_pct: float = 50, initial: int = 20, increment: int = 10, maximum: int = 99,
                 tailslow: bool = False, min_period_s: float = QEMU_SYNC_PERIOD_S) -> None:
        self.trigger = _Trigger(threshold_pct, min_period_s)
        self.initial, self.increment, self.maximum, self.tailslow = initial, increment, maximum, tailslow
        self.throttle_pct = 0

    def on_sync(self, p: SyncPeriod) -> Decision | None:
        period = self.trigger.fires(p)
        if period is None:
            return None
        self.throttle_pct = self.next_pct(period)
        return Decision(throttle_pct=self.throttle_pct)

    def next_pct(self, p: SyncPeriod) -> int:
        """mig_throttle_guest_down: start at the initial percentage, then step up."""
        cap = min(self.maximum, CPU_THROTTLE_PCT_MAX)
        if self.throttle_pct == 0:
            return max(1, min(self.initial, cap))
        step = self.increment
        if self.tailslow:
            cpu_now = 100 - self.throttle_pct
            cpu_ideal = int(cpu_now * (self.trigger.threshold_bytes(p) / p.dirtied_bytes))
            step = min(cpu_now - cpu_ideal, self.increment)
        return min(self.throttle_pct + step, cap)

    def on_stop(self, reason: str) -> Decision | None:
        """The stop rule would end pre-copy for `reason`: QEMU has no such rule and keeps going."""
        return None

    def engaged(self) -> bool:
        return self.throttle_pct > 0

    def may_engage(self) -> bool:
        return self.trigger.may_fire()

    def exhausted(self) -> bool:
        """Nothing more to try: the stop rule may end pre-copy."""
        return self.throttle_pct >= min(self.maximum, CPU_THROTTLE_PCT_MAX)


class DirtyLimit:
    """QEMU's dirty-limit: on the auto-converge trigger, cap each vCPU's dirty rate."""

    name = "dirty-limit"
    SETTLE_PERIODS = 3  # enforcement periods before the stop rule may end pre-copy

    def __init__(self, quota_mbytes_s: float, period_ms: float = 1000, threshold_pct: float = 50,
                 min_period_s: float = QEMU_SYNC_PERIOD_S) -> None:
        self.trigger = _Trigger(threshold_pct, min_period_s)
        self.quota = quota_mbytes_s
        self.period_s = period_ms / 1000
        self.active = False
        self.active_s = 0.0
        self.throttle_pct = 0  # not a CPU throttle: the guest reports its own sleep shares

    def on_sync(self, p: SyncPeriod) -> Decision | None:
        if self.active:
            self.active_s += p.duration_s
            return None
        if self.trigger.fires(p) is None:
            return None
        self.active = True
        return Decision(dirty_limit_mbytes_s=self.quota)

    def on_stop(self, reason: str) -> Decision | None:
        return None

    def engaged(self) -> bool:
        return self.active

    def may_engage(self) -> bool:
        return self.trigger.may_fire()

    def exhausted(self) -> bool:
        return self.active and self.active_s >= self.SETTLE_PERIODS * self.period_s


class Sdps:
    """Stun During Page Send: hold the dirty rate at `target_ratio` of the transfer rate."""

    name = "sdps"

    def __init__(self, target_ratio: float = 0.5, maximum: int = 99) -> None:
        self.target_ratio = target_ratio
        self.maximum = min(maximum, CPU_THROTTLE_PCT_MAX)
        self.active = False
        self.throttle_pct = 0.0
        self.last: SyncPeriod | None = None
        self.stuck = 0  # syncs in a row without forward progress

    def no_progress(self, p: SyncPeriod) -> bool:
        """The guest dirtied at least what was sent, or the dirty set did not shrink."""
        return p.dirtied_bytes >= p.transferred_bytes or p.remaining_after >= p.remaining_before > 0

    def on_sync(self, p: SyncPeriod) -> Decision | None:
        if p.duration_s <= 0 or p.transferred_bytes <= 0:
            return None
        self.last = p
        self.stuck = self.stuck + 1 if self.no_progress(p) else 0
        if not self.active and self.stuck < SDPS_NO_PROGRESS_SYNCS:
            return None
        return self._aim(p)

    def on_stop(self, reason: str) -> Decision | None:
        """Pre-copy would give up: kick in now, aiming from the last period."""
        if self.active or self.last is None:
            return None
        return self._aim(self.last)

    def _aim(self, p: SyncPeriod) -> Decision | None:
        self.active = True
        ran = running_share(self.throttle_pct)
        unthrottled = p.dirtied_bytes / p.duration_s / ran
        target = self.target_ratio * p.transferred_bytes / p.duration_s
        share = min(1.0, target / unthrottled) if unthrottled > 0 else 1.0
        pct = round(min(self.maximum, max(0.0, 100 * (1 - share))), 1)
        if pct == self.throttle_pct:
            return None
        self.throttle_pct = pct
        return Decision(throttle_pct=pct)

    def engaged(self) -> bool:
        return self.active

    def may_engage(self) -> bool:
        return True  # on_stop kicks it in where pre-copy would give up

    def exhausted(self) -> bool:
        return self.active and self.throttle_pct >= self.maximum


def keeps_going(policy, reason: str | None) -> bool:
    """Pre-copy goes on past a stop other than convergence while the policy can
    still act; once it cannot, only a stall ends it (the bytes already sent or
    the passes already made say nothing about a guest that is now slowed). A
    policy that has not kicked in and no longer can (its trigger judged the guest
    below its threshold) leaves the stop rule as it is: without that, a guest that
    never trips the trigger would iterate past every cap, for ever."""
    if not reason or reason == "converged":
        return False
    if not policy.engaged():
        return policy.may_engage()
    return not policy.exhausted() or reason != "stalled"


def policy_from_options(o) -> AutoConverge | DirtyLimit | Sdps | None:
    """The policy a migration's options ask for (cluster/scenario.py rejects asking for two)."""
    if getattr(o, "auto_converge", False):
        return AutoConverge(o.throttle_trigger_threshold, o.cpu_throttle_initial, o.cpu_throttle_increment,
                            o.max_cpu_throttle, o.cpu_throttle_tailslow)
    if getattr(o, "dirty_limit", False):
        return DirtyLimit(o.vcpu_dirty_limit_mbytes_s, o.x_vcpu_dirty_limit_period_ms, o.throttle_trigger_threshold)
    if getattr(o, "sdps", False):
        return Sdps(o.sdps_target_ratio, o.max_cpu_throttle)
    return None


def conflicts(o) -> str | None:
    """Two convergence methods at once (QEMU refuses auto-converge with dirty-limit)."""
    on = [n for n in ("auto_converge", "dirty_limit", "sdps") if getattr(o, n, False)]
    return f"{' and '.join(on)} are both on; choose one convergence method" if len(on) > 1 else None


# --- the mechanism --------------------------------------------------------------
@dataclass
class Governor:
    """Applies a policy to a migration's guest and records what it did.

    `guest` has `set_throttle(pct)` and `set_dirty_limit(bytes_s, period_s)`
    (the shared dirty log's control fields); `record(event, **fields)` is the
    MigrationContext's. Events: `throttle-start` (the policy kicked in),
    `throttle` (each new percentage), `dirty-limit` (a quota set),
    `throttle-stop` (the migration ended; the guest runs free again).
    """

    policy: AutoConverge | DirtyLimit | Sdps
    guest: object
    record: object
    memory_scale: float = 1.0
    started: bool = False
    steps: list[float] = field(default_factory=list)

    def on_sync(self, sync: int, p: SyncPeriod) -> None:
        """After dirty-log sync number `sync` (QEMU's dirty-sync-count), which saw `p`."""
        self._apply(sync, self.policy.on_sync(p), p)

    def _apply(self, sync: int, d: Decision | None, p: SyncPeriod | None) -> None:
        if d is None:
            return
        p = p or getattr(self.policy, "last", None)
        rates = {"dirty_rate_bytes_s": p.dirtied_bytes / p.duration_s if p and p.duration_s else None,
                 "transfer_rate_bytes_s": p.transferred_bytes / p.duration_s if p and p.duration_s else None}
        if not self.started:
            self.started = True
            self.record("throttle-start", method=self.policy.name, dirty_sync_count=sync, **rates)
        if d.throttle_pct is not None:
            self.steps.append(d.throttle_pct)
            self.guest.set_throttle(d.throttle_pct)
            self.record("throttle", method=self.policy.name, dirty_sync_count=sync, throttle_pct=d.throttle_pct)
        if d.dirty_limit_mbytes_s is not None:
            quota = d.dirty_limit_mbytes_s * MIB
            self.guest.set_dirty_limit(quota, self.policy.period_s)
            self.record("dirty-limit", method=self.policy.name, dirty_sync_count=sync,
                        vcpu_dirty_limit_mbytes_s=d.dirty_limit_mbytes_s,
                        period_ms=self.policy.period_s * 1000)

    def overrides(self, reason: str | None, sync: int = 0) -> bool:
        """Keep iterating past a stop other than convergence while the policy can still act."""
        if reason and reason != "converged":
            self._apply(sync, self.policy.on_stop(reason), None)
        return keeps_going(self.policy, reason)

    def stop(self) -> None:
        """The migration ended (completed, cancelled or failed): lift every throttle."""
        self.guest.set_throttle(0.0)
        self.guest.set_dirty_limit(0.0, 0.0)
        if self.started:
            self.record("throttle-stop", method=self.policy.name)


# --- dirty-limit enforcement, guest side ------------------------------------------
DIRTYLIMIT_TOLERANCE_MBYTES_S = 25  # dirtylimit_done: within 25 MB/s, leave it
DIRTYLIMIT_LINEAR_ADJUSTMENT_PCT = 50  # larger errors are corrected in proportion
DIRTYLIMIT_THROTTLE_PCT_MAX = 99


def dirty_limit_step(sleep_ratio: float, quota: float, current: float) -> float:
    """QEMU's dirtylimit_set_throttle for one vCPU, in ratios.

    A vCPU's cycle is a dirty-ring-full run of length T and a sleep S; the
    state here is S/T (`sleep_ratio`), so the vCPU runs 1/(1+S/T) of the
    time. `quota` and `current` are its dirty rates in MiB/s. Errors over
    50% move S by T*pct/(1-pct) with pct the relative error, smaller ones by
    T/10; within 25 MB/s nothing changes; S stays within 0 and 99 T.
    """
    if current <= 0:
        return 0.0
    if abs(quota - current) <= DIRTYLIMIT_TOLERANCE_MBYTES_S:
        return sleep_ratio
    big = max(quota, current)
    if abs(quota - current) * 100 / big > DIRTYLIMIT_LINEAR_ADJUSTMENT_PCT:
        pct = abs(quota - current) / big
        step = pct / (1 - pct)
    else:
        step = 0.1
    sleep_ratio += step if quota < current else -step
    return min(max(sleep_ratio, 0.0), float(DIRTYLIMIT_THROTTLE_PCT_MAX))


def sleep_ratio_pct(sleep_ratio: float) -> float:
    """A vCPU's sleep share in percent, from its S/T ratio."""
    return 100 * sleep_ratio / (1 + sleep_ratio)
