"""The pool: every backend's state, owned in one place.

Owns: per backend the health state machine's position, the operator's state, the last load report
(with its time) and the redirects sent since, the load estimate's figures, the counters that
metrics read, and the policy index that choosing uses.
Rules: no I/O, no trio; time is passed in (`now`, from trio.current_time() by the caller) so that
everything here runs under a mock clock and without sockets. The pool is the only writer of a
`Backend`: health results come in through `record_check` and `record_load` (net.health), redirects
go out through `choose` (core.reply), a worker's mirror of the master through `take_master_report`,
`mirror`, `set_next_check` and `set_counts` (processes), the backend list through `reconcile`
(a reload, DNS, the admin API). Health moves only by walking core.health_state's table. The admin
API reads `view()` snapshots; metrics read the backends' fields at scrape time.
"""

from __future__ import annotations

import logging
import math
import random
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from dispatcher.core import estimate
from dispatcher.core.hashing import BoundedLoadHash
from dispatcher.core.health_state import Admin, Event, Health, visible_state, walk
from dispatcher.core.policy import LOAD_AWARE, Policy, make_policy
from dispatcher.settings.config import (
    DEFAULT_POLICY,
    DEFAULT_POOL,
    BackendSpec,
    Fallback,
    HashKey,
    HealthSettings,
    PoolSpec,
)

log = logging.getLogger("dispatcher.pool")

FAILURE_REASONS = ("timeout", "refused", "dns", "tls", "status", "bad_load", "protocol")
# Health check durations: milliseconds on a LAN, up to the timeout (1 s by default) when a check fails.
# Few buckets: with 1,000 backends every bucket is 1,000 more series to scrape.
CHECK_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)
# Envoy's slow start `min_weight_percent` default: a recovering backend starts at 10 % of its weight.
MIN_RAMP = 0.1
# How often `tick` folds in the redirect rate and the usable weight (the drain shares, `estimate`).
TICK = 0.5
# The shares change by more than this fraction: every usable backend is filed again with its new step.
REFILE_CHANGE = 0.2
# How a backend's load reaches the pool: by the answers to polled checks, or by its load stream.
LOAD_SOURCES = ("poll", "stream")


@dataclass(slots=True)
class CheckResult:
    """What one health check found. `load` is None when the check failed.

    A value: nothing changes one once made. Not `frozen`, because a frozen dataclass is made through
    object.__setattr__ per field, three times the cost, and 1,000 backends make 500 a second."""

    passed: bool
    duration: float
    load: float | None = None  # None on a pass: a streaming backend, whose reports came as events
    reason: str | None = None  # one of FAILURE_REASONS when not passed
    detail: str = ""
    self_drain: bool = False  # the backend asked to be drained (X-Load-State: drain)
    timed: bool = True  # False for a streaming backend's pass: no request was timed


@dataclass(slots=True)
class LoadReport:
    """A load figure and the time (trio clock) it was received."""

    value: float
    at: float


@dataclass(eq=False, slots=True)
class Backend:
    """One backend's live state. Mutable, but only the pool mutates it."""

    # What a redirect reads and writes comes first, beside the object's header: in a pool of 1,000 the
    # backend a redirect goes to is cold in the CPU cache, and these then share one cache line or two.
    spec: BackendSpec
    location_base: bytes
    version: int = 0  # bumped whenever the policy's key or the backend's usability changes
    since: int = 0  # redirects sent since `report`
    redirects: int = 0
    # When the backend is expected to have drained all we know it has (the policy's key; a redirect
    # moves it by 1 / rate), and the drain rate that estimate uses (dispatcher.core.estimate).
    free_at: float = 0.0
    rate: float = 1.0
    sent_at: float = -math.inf  # when the last redirect was sent
    health: Health = Health.STARTING
    streak: int = 0
    admin: Admin = Admin.READY
    self_drain: bool = False
    report: LoadReport | None = None
    others: int = 0  # redirects other worker processes sent since `report` (--workers), as last seen
    reports: int = 0  # load reports taken: checks' answers and stream events
    busy: float = estimate.BUSY_PRIOR  # the share of time it reports a load of 1 or more (estimate.next_busy)
    busy_samples: int = 0  # reports folded into `busy`
    carried: float = 0.0  # redirects sent just before `report` that it cannot have seen (estimate.unseen)
    delay: float = 0.0  # the last timed check's duration: how late a redirect reaches the backend
    source: str = "poll"  # one of LOAD_SOURCES
    stream_connections: int = 0  # load streams opened
    stream_events: int = 0  # load reports received on a stream
    checks_passed: int = 0
    checks_failed: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    state_changes: int = 0
    # Per bucket of CHECK_BUCKETS (+Inf last), not cumulative: metrics accumulates them at scrape time.
    check_durations: list[int] = field(default_factory=lambda: [0] * (len(CHECK_BUCKETS) + 1))
    check_duration_sum: float = 0.0
    last_check: CheckResult | None = None
    last_check_at: float | None = None
    next_check_at: float = 0.0
    # Slow start: the share of its weight a recovered backend gets, growing from MIN_RAMP to 1.
    ramp: float = 1.0
    up_at: float = 0.0
    resumed_from: str | None = None  # a fresh start's first state (out of maint: down), until a check
    pool: str = DEFAULT_POOL  # the name of the pool it is in (labels, the admin API)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def weight(self) -> float:
        return self.spec.weight

    @property
    def usable(self) -> bool:
        """May receive new redirects: healthy, ready, not draining itself."""
        return self.health is Health.UP and self.admin is Admin.READY and not self.self_drain

    @property
    def load(self) -> float:
        """The last reported load; a backend that reports nothing counts as 0."""
        return self.report.value if self.report is not None else 0.0

    def effective_load(self, now: float, drained: bool = True) -> float:
        """The load estimate now, over weight x ramp: what the choice goes by (dispatcher.core.estimate).

        `drained`: the estimate falls at the drain rate between reports (least-loaded, p2c); else the
        report + redirects since, as the blind policies would have it."""
        if drained:
            load = max(0.0, self.free_at - now) * self.rate
        else:
            load = self.load + self.carried + self.since + self.others
        return load / (self.spec.weight * self.ramp)

    @property
    def state(self) -> str:
        return visible_state(self.health, self.admin, self.self_drain)


@dataclass(frozen=True, slots=True)
class BackendView:
    """An immutable snapshot of one backend for readers (metrics, admin API, tests)."""

    name: str
    url: str
    state: str
    weight: float
    load: float
    effective_load: float
    load_age: float | None
    since: int
    redirects: int
    last_check_at: float | None
    last_check: CheckResult | None
    drain_rate: float
    load_source: str
    pool: str = DEFAULT_POOL


# (backend, before, after, the check that made the change; None: the operator's word)
TransitionListener = Callable[[Backend, str, str, CheckResult | None], None]
ChangeListener = Callable[[Backend], None]


# A backend a reload moves between pools, with the operator state it had before it was released.
Moving = tuple[Backend, Admin]


class Pool:
    """All backends, the policy index over the usable ones, and the transitions between states."""

    def __init__(
        self,
        specs: Iterable[BackendSpec],
        health: HealthSettings,
        started_at: float = 0.0,
        slow_start: float = 0.0,
        policy: str = DEFAULT_POLICY,
        rng: random.Random | None = None,
        spec: PoolSpec | None = None,
    ) -> None:
        # Which pool this is (the default one unless routes name others) and its own settings: the
        # answer when nothing is usable, the hash policy's key and balance.
        self.spec = spec or PoolSpec(DEFAULT_POOL, policy=policy)
        self.name = self.spec.name
        self.fallback: Fallback = self.spec.fallback
        # The operator holds the whole pool in maintenance: every answer is its fallback. Written
        # through `set_maintenance`, which tells `maintenance_listeners` (the --workers master's table).
        self.maintenance = False
        self.maintenance_listeners: list[Callable[[Pool], None]] = []
        self.fallbacks = 0  # answers given by the fallback (of its kind now), for metrics
        # The answers of the kinds a reload changed the fallback from, each series kept where it
        # stood: a counter labelled with the new kind must not start at the old kind's count.
        self.earlier_fallbacks: dict[str, int] = {}
        self._usable: set[int] = set()  # ids of the usable backends, so that `takes_redirects` is O(1)
        self._rng = rng
        self.health_settings = health
        self.started_at = started_at
        self.slow_start = slow_start
        # Each with its health settings resolved over `health` (a Settings has done it already; a
        # pool built from bare specs, as in tests and benchmarks, has not).
        self.backends = [self._backend(spec.resolved(health)) for spec in specs]
        self.by_name = {backend.name: backend for backend in self.backends}
        self.policy_name = policy
        self.policy: Policy[Backend] = self._make_policy(policy)
        self.drained = policy in LOAD_AWARE  # the policy goes by the drained estimate
        # This process chooses (False in the --workers master, which only checks and reports).
        self.chooses = True
        self.redirect_rate = estimate.RedirectRate(started_at)
        self.others_total = 0  # redirects the other worker processes sent, in all (--workers)
        # The drain share per unit of weight x ramp: the redirect rate over the usable backends' weight.
        # One figure for the whole pool, changed only by `tick` (which then files every backend
        # again), so that every backend's step is drawn from the same figure and weights hold exactly.
        # Before the first tick: the least rate over every configured backend.
        self.share_per_weight = estimate.MIN_RATE / max(1.0, sum(b.spec.weight for b in self.backends))
        self._ticked_at = -math.inf
        # The mean reported load per unit of weight, over the last MEAN_ROUNDS rounds of reports:
        # where an old report's estimate settles (estimate.settled).
        self.mean_load = 0.0
        # The usable backends' mean `busy`, as of the last tick: one figure for the whole pool, so that
        # its noise moves every backend's drain alike and never reorders them.
        self.busy = estimate.BUSY_PRIOR
        self.listeners: list[TransitionListener] = []
        # Told after anything that changes what choosing sees (a report, a state, a weight, a ramp).
        self.change_listeners: list[ChangeListener] = []

    def _backend(self, spec: BackendSpec) -> Backend:
        return Backend(spec, spec.base.encode("ascii"), pool=self.name)

    def _make_policy(self, name: str) -> Policy[Backend]:
        if name == "hash":
            from dispatcher.core.hashing import BoundedLoadHash

            return BoundedLoadHash(self._rng, self.spec.balance_factor)
        return make_policy(name, self._rng)

    @property
    def hash_key(self) -> HashKey | None:
        """What the hash policy hashes; None for the other policies (routing reads no key for them)."""
        return self.spec.hash_key if self.policy_name == "hash" else None

    def set_spec(self, spec: PoolSpec) -> None:
        """A reload: this pool's policy, fallback and hash settings (its backends: `reconcile`)."""
        balance_changed = spec.balance_factor != self.spec.balance_factor
        old, new = self.fallback.kind, spec.fallback.kind
        if new != old:
            self.earlier_fallbacks[old] = self.fallbacks
            self.fallbacks = self.earlier_fallbacks.pop(new, 0)
        self.spec, self.fallback = spec, spec.fallback
        if balance_changed and spec.policy == "hash" == self.policy_name:
            self.policy_name = ""  # the same name, a new factor: a new index
        self.set_policy(spec.policy)

    def set_policy(self, name: str) -> None:
        """A reload named another policy: file every backend in a new one (their figures stay)."""
        if name == self.policy_name:
            return
        self.policy_name, self.policy = name, self._make_policy(name)
        self.drained = name in LOAD_AWARE
        for backend in self.backends:
            self.reindex(backend)

    def choose(self, now: float = -math.inf, key: bytes | None = None) -> Backend | None:
        """The backend for one redirect, counted as sent; None when no backend is usable. `key`: what
        the hash policy hashes (routing's, from the request); the other policies take none."""
        if key is None:
            return self.policy.choose(now)
        policy = self.policy
        if isinstance(policy, BoundedLoadHash):
            return policy.choose(now, key)
        return policy.choose(now)

    def set_maintenance(self, on: bool) -> None:
        """The operator's word for the whole pool (the admin API), or the master's (a worker's mirror)."""
        if on != self.maintenance:
            self.maintenance = on
            for listener in self.maintenance_listeners:
                listener(self)

    @property
    def takes_redirects(self) -> bool:
        """Has a usable backend and is not in maintenance: a split's variant can be chosen."""
        return bool(self._usable) and not self.maintenance

    @property
    def usable_count(self) -> int:
        """Backends that take redirects now: none while the pool is in maintenance, as HAProxy's
        `nbsrv` counts no server in MAINT (so /readyz and the gauge agree with where requests go)."""
        if self.maintenance:
            return 0
        return sum(1 for backend in self.backends if backend.usable)

    # --- load reports and the estimate -------------------------------------------------------------

    def _step(self, backend: Backend) -> float:
        """What one redirect adds to the backend's key, after refreshing its drain rate."""
        if not self.drained:
            return 1.0 / (backend.spec.weight * backend.ramp)
        share = self.share_per_weight * backend.spec.weight * backend.ramp
        backend.rate = estimate.drain_rate(share, self.busy)
        return 1.0 / backend.rate

    def take_report(self, backend: Backend, load: float, now: float) -> float:
        """A new load figure: keep what it cannot have seen, learn how busy it is, re-key; returns the
        step."""
        load = min(load, estimate.MAX_LOAD)
        previous = backend.report
        age = now - previous.at if previous is not None else math.inf
        carried = estimate.unseen(backend.since, age, now - backend.sent_at, backend.delay)
        # Idle and sent nothing says nothing of how busy it is, nor of the queue it holds under traffic:
        # a pool that sat idle (a quiet night, another dispatcher's turn) would otherwise meet the
        # next traffic with a usual queue of nothing, and old reports would settle towards empty.
        informative = previous is None or backend.carried + backend.since + backend.others - carried > 0
        informative = informative or load > 0 or (previous is not None and previous.value > 0)
        if previous is not None and informative:
            backend.busy = estimate.next_busy(backend.busy, previous.value, age, backend.busy_samples)
            backend.busy_samples += 1
        backend.report = LoadReport(load, now)
        backend.reports += 1
        if informative:
            sample = estimate.usual_sample(load / backend.spec.weight, self.mean_load)
            self.mean_load += (sample - self.mean_load) / (estimate.MEAN_ROUNDS * len(self.backends))
        backend.since, backend.carried = 0, carried
        step = self._step(backend)
        # A report below every other backend's estimate gives it a head start of at most CREDIT
        # requests: its deficit may be the others' estimates being high, not its load being low,
        # and a whole deficit taken at once is a herd (estimate). A first report has no estimate
        # before it to correct: it stands as it is.
        least = self.policy.least_key() - estimate.CREDIT * step if previous is not None else -math.inf
        backend.free_at = max(now + (load + carried + backend.others) * step, least)
        return step

    def record_load(self, backend: Backend, load: float, self_drain: bool, now: float) -> None:
        """One event of a backend's load stream: a fresh report, applied at once.

        The health state moves only with checks (`record_check`, once an interval for a stream), but a
        drain asked for on the stream applies now, as it would on a check's answer."""
        backend.stream_events += 1
        step = self.take_report(backend, load, now)
        if backend.health is Health.UP and backend.self_drain != self_drain:
            before = backend.state
            backend.self_drain = self_drain
            # Announced as a check's answer would be ("is draining (was up)"): the stream's event is
            # the backend's word, as an answer's X-Load-State is.
            self._changed(backend, before, CheckResult(True, 0.0, load, self_drain=self_drain, timed=False))
            return
        self._reindex_as(backend, backend.usable, backend.free_at, step)

    def confirm_load(self, backend: Backend, now: float) -> None:
        """A load stream's heartbeat: the backend's load is still its last report's, as of now.

        A stream sends an event whenever its load changes, so its silence says "unchanged", while
        the estimate drains every report as it ages: held long requests (uploads, reports of
        seconds) would drift towards empty and draw new requests onto a backend that still holds
        them. Taken again as fresh, the report stands (and its age, which alerts read, restarts)."""
        report = backend.report
        if report is None or backend.health is not Health.UP:
            return
        step = self.take_report(backend, report.value, now)
        self._reindex_as(backend, backend.usable, backend.free_at, step)

    def add_others(self, backend: Backend, others: int, now: float) -> None:
        """Other worker processes have sent `others` redirects to the backend since its report."""
        more = others - backend.others
        backend.others = others
        if more > 0:
            backend.free_at = max(backend.free_at, now) + more / backend.rate

    # --- a worker's mirror of the master's figures (--workers: processes/shared.py) ----------------

    def take_master_report(self, backend: Backend, load: float, now: float) -> None:
        """The master has a new report: what the other workers sent before it is in it."""
        backend.others = 0
        self.take_report(backend, load, now)

    def mirror(
        self, backend: Backend, usable: bool, weight: float, ramp: float, others: int, now: float
    ) -> None:
        """The master's health, weight and ramp for a backend, and the other workers' redirects since
        its report. A worker checks nothing: its health is the master's, as the table's mirror rows say."""
        self.add_others(backend, others, now)
        self._step_health(backend, Event.MIRROR_UP if usable else Event.MIRROR_DOWN)
        backend.ramp = ramp
        if weight != backend.spec.weight:
            backend.spec = replace(backend.spec, weight=weight)
        self.reindex(backend)

    def set_next_check(self, backend: Backend, at: float) -> None:
        """When the backend is checked next: set by the health checks, and in a worker by the master's
        figure (a worker shows it; it checks nothing itself)."""
        backend.next_check_at = at

    def polled(self, backend: Backend) -> None:
        """Its check answered without a load stream: its load arrives by polling."""
        backend.source = "poll"

    def stream_opened(self, backend: Backend) -> None:
        """A load stream of the backend's gave its first event: its load arrives as it changes. That
        event is the check's answer (`record_check`), and one of the stream's events all the same."""
        backend.source = "stream"
        backend.stream_connections += 1
        backend.stream_events += 1

    def set_counts(self, backend: Backend, since: int, redirects: int) -> None:
        """Counters summed from elsewhere: the workers' (in the master), or a predecessor's (in a worker
        that was restarted), so that a counter never goes back."""
        backend.since, backend.redirects = since, redirects

    def tick(self, now: float) -> None:
        """Every TICK: the redirect rate and the usable weight behind the drain shares; slow starts."""
        if now - self._ticked_at < TICK:
            return
        self._ticked_at = now
        total = sum(backend.redirects for backend in self.backends) + self.others_total
        rate = self.redirect_rate.observe(total, now)
        self.advance_ramps(now)
        usable = [b for b in self.backends if b.usable]
        weight = sum(b.spec.weight * b.ramp for b in usable)
        # With none usable the share is kept: rate / 0 would show every backend draining at 1e9 a
        # second in /backends and the metrics, a spike on every dashboard while the pool is down.
        share = rate / weight if usable and weight > 0 else self.share_per_weight
        # While this dispatcher sends (almost) nothing, its backends' idleness says nothing of how busy
        # they are under its traffic: the figure from the last busy time is kept.
        quiet = rate <= 2 * estimate.MIN_RATE or not usable
        busy = self.busy if quiet else sum(b.busy for b in usable) / len(usable)
        drain, before = share / max(busy, 0.5), self.share_per_weight / max(self.busy, 0.5)
        if abs(drain - before) > REFILE_CHANGE * before:
            self.share_per_weight, self.busy = share, busy
            for backend in self.backends:
                if backend.usable:
                    before = backend.rate  # the estimate now stays what it is: only its drain changes
                    step = self._step(backend)
                    if backend.free_at > now:
                        backend.free_at = now + (backend.free_at - now) * before * step
                    self._reindex_as(backend, True, backend.free_at, step)
        self._settle(now)

    def _settle(self, now: float) -> None:
        """Raise old reports' estimates towards the pool's usual queue (estimate.settled)."""
        if not self.drained or self.mean_load <= 0:
            return
        for backend in self.backends:
            report = backend.report
            if report is None or not backend.usable:
                continue
            step = self._step(backend)
            usual = self.mean_load * backend.spec.weight * backend.ramp
            floor = now + estimate.settled(usual, now - report.at, step) * step
            if floor > backend.free_at:
                backend.free_at = floor
                self._reindex_as(backend, True, floor, step)

    def effective_load(self, backend: Backend, now: float) -> float:
        """What the admin API and the metrics show as the backend's effective load now."""
        if self.drained and not self.chooses and backend.report is not None:
            # The --workers master does not choose: its keys never saw the redirects. The same
            # estimate from its figures: report + redirects since, drained since the report.
            sent = backend.report.value + backend.carried + backend.since
            return max(0.0, sent - backend.rate * (now - backend.report.at)) / (backend.weight * backend.ramp)
        return backend.effective_load(now, self.drained)

    # --- health ------------------------------------------------------------------------------------

    def record_check(self, backend: Backend, result: CheckResult, now: float) -> None:
        """Apply one health check: counters, a new load report, and the state machine."""
        backend.last_check, backend.last_check_at = result, now
        if result.timed:
            backend.check_durations[bisect_left(CHECK_BUCKETS, result.duration)] += 1
            backend.check_duration_sum += result.duration
        if result.passed:
            backend.checks_passed += 1
            if result.timed:
                backend.delay = result.duration
            if result.load is not None:
                key_step = self.take_report(backend, result.load, now)
                if backend.health is Health.UP and backend.self_drain == result.self_drain:
                    # Up and staying up, the visible state unchanged: the common case, on every check
                    # of every healthy backend. Only the new report is re-indexed, with figures at hand.
                    self._step_health(backend, Event.PASS)
                    usable = backend.admin is Admin.READY and not backend.self_drain
                    self._reindex_as(backend, usable, backend.free_at, key_step)
                    return
            elif backend.health is Health.UP and backend.self_drain == result.self_drain:
                self._step_health(
                    backend, Event.PASS
                )  # a streaming backend's interval: its reports came as events
                return
        else:
            backend.checks_failed += 1
            backend.failures[result.reason or "protocol"] += 1
        starting = backend.health is Health.STARTING
        before = backend.state
        self._step_health(backend, Event.PASS if result.passed else Event.FAIL)
        if result.passed:
            backend.self_drain = result.self_drain
        # Back up from down ramps; so does the first pass after leaving maint (a fresh start, but of
        # one backend, which the others' loads would send every request to), as HAProxy's slowstart.
        back = not starting or backend.resumed_from is not None
        if back and before == "down" and backend.health is Health.UP:
            self._begin_ramp(backend, now)
        self._changed(backend, before, result, starting)

    def _step_health(self, backend: Backend, event: Event) -> None:
        """The one place a backend's health moves: the state machine's table, walked."""
        settings = backend.spec.health  # its own rise and fall, if its entry sets them (HAProxy's per server)
        backend.health, backend.streak = walk(
            backend.health, backend.streak, event, settings.rise, settings.fall
        )

    def _begin_ramp(self, backend: Backend, now: float) -> None:
        """A backend back from down (or out of maint) reports a low load and would take every request:
        ramp its weight (HAProxy `slowstart`, Envoy `slow_start_window`). At start all backends begin
        together: no ramp."""
        if self.slow_start > 0:
            backend.ramp, backend.up_at = MIN_RAMP, now

    def advance_ramps(self, now: float) -> bool:
        """Grow the ramping backends' weights to `now`; True while any is still ramping."""
        ramping = False
        for backend in self.backends:
            if backend.ramp < 1.0:
                progress = (now - backend.up_at) / self.slow_start if self.slow_start > 0 else 1.0
                backend.ramp = min(1.0, max(MIN_RAMP, progress))
                self.reindex(backend)
                ramping = ramping or backend.ramp < 1.0
        return ramping

    def set_admin(self, backend: Backend, admin: Admin) -> None:
        """The operator's word (ready / drain / maint) for one backend.

        Leaving maint, a backend's old health is stale (it was not checked): it starts over and takes
        traffic again after its next passing check, as at start.
        """
        before = backend.state
        leaving = backend.admin is Admin.MAINT and admin is not Admin.MAINT
        if leaving:
            self._step_health(backend, Event.RESUME)
        backend.admin = admin
        if leaving:
            # Its first check's line goes on from the admin line's "is down (was maint)", not "was
            # starting": the state it left maint for.
            backend.resumed_from = backend.state
        self._changed(backend, before, None)

    def reindex(self, backend: Backend) -> None:
        """After a change to what choosing sees of a backend (a report, a state, a weight, a ramp)."""
        self._reindex_as(backend, backend.usable, backend.free_at, self._step(backend))

    def _reindex_as(self, backend: Backend, usable: bool, key: float, step: float) -> None:
        backend.version += 1
        if usable:
            self._usable.add(id(backend))
        else:
            self._usable.discard(id(backend))
        self.policy.update(backend, usable, key, step)
        for listener in self.change_listeners:
            listener(backend)

    def _changed(
        self, backend: Backend, before: str, result: CheckResult | None, starting: bool = False
    ) -> None:
        """Re-index the backend; count and announce a change of its visible state.

        A first check result is always announced ("was starting"), so a backend that is dead at start
        is logged too, though the state-set shows it as down before and after.
        """
        self.reindex(backend)
        after = backend.state
        if after != before:
            backend.state_changes += 1
        if after != before or starting:
            if starting:
                before, backend.resumed_from = backend.resumed_from or "starting", None
            for listener in self.listeners:
                listener(backend, before, after, result)

    def reconcile(
        self, specs: Sequence[BackendSpec], moving: Mapping[tuple[str, str], Moving] | None = None
    ) -> tuple[list[Backend], list[Backend]]:
        """Apply a reloaded backend list; returns (added, removed).

        A backend is the same backend when its name and URL are unchanged: it keeps its health, load
        reports, counters and operator state (drain survives a reload, unlike HAProxy's). A new weight
        applies at once. A removed backend is put in maint so that no redirect goes to it any more.
        One that the reload moves here from another pool (`moving`, by name and URL, released there
        first: `release`) is the same backend too: it comes with its state, and is among the added
        only so that its checks start in this pool.
        """
        old = self.by_name
        kept: list[Backend] = []
        added: list[Backend] = []
        adopted: list[Backend] = []
        for spec in (spec.resolved(self.health_settings) for spec in specs):
            backend = old.get(spec.name)
            move = moving.get((spec.name, spec.url)) if moving is not None else None
            if backend is not None and backend.spec.url == spec.url:
                if backend.spec != spec:
                    backend.spec = spec
                    self.reindex(backend)
                kept.append(backend)
            elif move is not None:
                backend, admin = move
                backend.spec, backend.pool, backend.admin = spec, self.name, admin
                adopted.append(backend)
            else:
                added.append(self._backend(spec))
        keep = {id(b) for b in kept}
        removed = [b for b in self.backends if id(b) not in keep]
        for backend in removed:
            backend.admin = Admin.MAINT
            self.reindex(backend)
        order = {spec.name: i for i, spec in enumerate(specs)}
        self.backends = sorted(kept + added + adopted, key=lambda b: order[b.name])
        self.by_name = {backend.name: backend for backend in self.backends}
        for backend in adopted:
            self.reindex(backend)  # filed here, as usable as it was there
        return added + adopted, removed

    def release(self, backend: Backend) -> Moving:
        """Take a backend out of this pool for another one to adopt (`reconcile`'s `moving`): no
        redirect goes to it from here any more; its operator state goes with it."""
        admin = backend.admin
        backend.admin = Admin.MAINT
        self.reindex(backend)
        self.backends = [each for each in self.backends if each is not backend]
        self.by_name = {each.name: each for each in self.backends}
        return backend, admin

    def view(self, now: float) -> list[BackendView]:
        return [self.view_of(backend, now) for backend in self.backends]

    def view_of(self, backend: Backend, now: float) -> BackendView:
        report = backend.report
        return BackendView(
            name=backend.name,
            url=backend.spec.url,
            state=backend.state,
            weight=backend.weight,
            load=backend.load,
            effective_load=self.effective_load(backend, now),
            load_age=None if report is None else max(0.0, now - report.at),
            since=backend.since,
            redirects=backend.redirects,
            last_check_at=backend.last_check_at,
            last_check=backend.last_check,
            drain_rate=backend.rate,
            load_source=backend.source,
            pool=backend.pool,
        )

    def next_check_in(self, now: float) -> float | None:
        """Seconds until the next health check of any backend that is being checked; None when none
        is (no backends, or all in maintenance): no check can bring one back, only an operator."""
        times = [b.next_check_at for b in self.backends if b.admin is not Admin.MAINT]
        return max(0.0, min(times) - now) if times else None
