"""Membership: the members DNS gives a dns:// or dns+srv:// backend, and what a bad answer keeps.

Owns: the members of one answer (SRV records: the lowest priority's targets, ports and weights; A and
AAAA records: each address at the entry's port), the rule that a failed or empty answer keeps the last
known members (never an empty pool because DNS hiccuped), an entry's outcome and its changes (what is
counted and logged once per change, not once per query), when to ask again (the interval, sooner on a
shorter TTL, never sooner than MIN_TTL), and the backend list the pool reconciles to: the backends
given by URL, then every entry's members, each name once.
Rules: no I/O, no trio, no dnspython: plain data in and out (`net.discovery` asks DNS and turns its
answers into `SrvRecord`s and addresses), so that every rule here is tested without a DNS server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dispatcher.settings.config import BackendSpec, ConfigError, ServiceSpec

# What one resolution of an entry came to: members, a name with no records (NXDOMAIN, or no record of
# the type asked for), or no answer at all (a timeout, SERVFAIL, a resolver that refuses).
OK, EMPTY, FAILED = "ok", "empty", "failed"
PENDING = "pending"  # before its first answer
OUTCOMES = (PENDING, OK, EMPTY, FAILED)
BAD_OUTCOMES = (EMPTY, FAILED)
# The soonest an entry is asked again, whatever its records' TTL: HAProxy's resolvers query no more
# often than `timeout resolve`, 1 s by default. Consul's service TTL is 0 by default: without a floor
# that would be a query loop.
MIN_TTL = 1.0
# RFC 2782: "records containing weights greater than 0 [...] records with weight 0 should have a very
# small chance of being selected". Our weights must be above 0: a hundredth of a weight of 1.
ZERO_WEIGHT = 0.01


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One SRV record's data (RFC 2782), its target without the final dot."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Answer:
    """What one resolution of an entry found: its outcome, and with OK the members, sorted by name so
    that a DNS server's rotation of its records (round-robin DNS) is no change."""

    outcome: str
    members: tuple[BackendSpec, ...] = ()
    ttl: float | None = None  # the shortest TTL of the records that made the members
    detail: str = ""  # why it is empty or failed: "NXDOMAIN", "timed out after 3s"
    skipped: tuple[str, ...] = ()  # records that make no backend URL (a target no URL can hold)


def srv_answer(service: ServiceSpec, records: Iterable[SrvRecord], ttl: float | None) -> Answer:
    """Members from SRV records: those of the lowest priority only (RFC 2782: "a client MUST attempt to
    contact the target host with the lowest-numbered priority"), each with its port and weight. A
    target of "." says the service is decidedly not available (RFC 2782): it is no member."""
    usable = [record for record in records if record.target not in ("", ".")]
    if not usable:
        return Answer(EMPTY, detail="no SRV record with a target")
    lowest = min(record.priority for record in usable)
    group = [record for record in usable if record.priority == lowest]
    # All weights 0 is what RFC 2782 asks for "when there isn't any server selection to do": equal.
    unweighted = all(record.weight == 0 for record in group)
    found = [
        (record.target, record.port, 1.0 if unweighted else float(record.weight) or ZERO_WEIGHT)
        for record in group
    ]
    return _answer(service, found, ttl)


def address_answer(service: ServiceSpec, addresses: Iterable[str], ttl: float | None) -> Answer:
    """Members from A and AAAA records: every address, at the entry's port, with the entry's weight."""
    assert service.port is not None, "a dns:// entry has its port"
    return _answer(service, [(address, service.port, service.weight) for address in addresses], ttl)


def _answer(service: ServiceSpec, found: Sequence[tuple[str, int, float]], ttl: float | None) -> Answer:
    members: dict[str, BackendSpec] = {}
    skipped: list[str] = []
    # The heaviest first: of the same target and port twice, one member with the greater weight,
    # whatever order the server sent them in.
    for host, port, weight in sorted(found, key=lambda each: -each[2]):
        try:
            member = service.member(host.lower(), port, weight)
        except ConfigError:
            skipped.append(f"{host}:{port}")
            continue
        members.setdefault(member.name, member)
    if not members:
        return Answer(EMPTY, detail="no record makes a backend URL", skipped=tuple(skipped))
    ordered = tuple(members[name] for name in sorted(members))
    return Answer(OK, ordered, ttl, skipped=tuple(skipped))


def next_in(interval: float, answer: Answer) -> float:
    """Seconds until the entry is asked again: the interval, or the records' TTL when that is sooner
    (Envoy's `respect_dns_ttl`), never sooner than MIN_TTL. A failed or empty answer waits the
    interval: a resolver in trouble is not asked faster."""
    if answer.outcome == OK and answer.ttl is not None:
        return min(interval, max(answer.ttl, MIN_TTL))
    return interval


@dataclass(frozen=True, slots=True)
class Change:
    """What taking one answer changed: the members (each list sorted by name) and the outcome."""

    before: tuple[BackendSpec, ...]
    after: tuple[BackendSpec, ...]
    outcome_before: str
    outcome: str

    @property
    def members_changed(self) -> bool:
        return self.before != self.after

    @property
    def outcome_changed(self) -> bool:
        return self.outcome != self.outcome_before

    def added(self) -> list[str]:
        names = {spec.name for spec in self.before}
        return [spec.name for spec in self.after if spec.name not in names]

    def removed(self) -> list[str]:
        names = {spec.name for spec in self.after}
        return [spec.name for spec in self.before if spec.name not in names]


@dataclass(slots=True)
class Membership:
    """One dns:// or dns+srv:// entry's last known members, its outcome, and the counters metrics read."""

    service: ServiceSpec
    members: tuple[BackendSpec, ...] = ()
    outcome: str = PENDING
    detail: str = ""
    resolutions: int = 0  # answers taken, whatever their outcome: every query
    # Per bad outcome, how often the entry turned to it: an outage of an hour of queries counts once.
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_OUTCOMES, 0))
    changes: int = 0  # how often its member list changed
    skipped: tuple[str, ...] = ()

    def take(self, answer: Answer) -> Change:
        """Apply one answer: members from an OK one; a failed or empty one keeps the last members."""
        change = Change(
            self.members,
            answer.members if answer.outcome == OK else self.members,
            self.outcome,
            answer.outcome,
        )
        self.resolutions += 1
        if change.outcome_changed and answer.outcome in BAD_OUTCOMES:
            self.failures[answer.outcome] += 1
        if change.members_changed:
            self.changes += 1
        self.members, self.outcome, self.detail = change.after, answer.outcome, answer.detail
        if answer.outcome == OK:
            self.skipped = answer.skipped
        return change


def combine(
    backends: Sequence[BackendSpec], memberships: Iterable[Membership]
) -> tuple[tuple[BackendSpec, ...], tuple[str, ...]]:
    """The backend list for Pool.reconcile: the backends given by URL, then each entry's members in the
    entries' order, and the names left out because an earlier one has them (a member that is also a
    backend given by URL, or found by two entries: it is one backend, the first one)."""
    specs = list(backends)
    names = {spec.name for spec in specs}
    shadowed: list[str] = []
    for membership in memberships:
        for member in membership.members:
            if member.name in names:
                shadowed.append(member.name)
                continue
            names.add(member.name)
            specs.append(member)
    return tuple(specs), tuple(shadowed)
