"""Discovery: the members of dns:// and dns+srv:// backends, asked of DNS at an interval and on TTL.

Owns: the resolver (dnspython's async one, which runs on trio through its trio backend: no DNS client
of our own), one task per entry that asks for its records, turns the answer into plain data for
`core.membership` and asks again when that says; the log lines, one per change of an entry's members
or outcome (a resolver down for an hour is one warning, not 720); and delivering the whole backend
list (backends given by URL, then the members) to `deliver`, which the wiring applies with
Pool.reconcile as it applies a reload.
Rules: the only code that talks to DNS; the members, the keep-on-failure rule and the timing are
`core.membership`'s. No DNS problem leaves `run` as an exception: it is an outcome, counted and logged.
Time is trio's (the sleeps; each resolution is bounded by a trio deadline as well as dnspython's).
Imports nothing of the pool: the member list is plain data, and the caller applies it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import trio

from dispatcher.core.membership import (
    EMPTY,
    FAILED,
    OK,
    Answer,
    Change,
    Membership,
    SrvRecord,
    address_answer,
    combine,
    next_in,
    srv_answer,
)
from dispatcher.settings.config import BackendSpec, DnsSettings, ServiceSpec, Settings, format_duration

log = logging.getLogger("dispatcher.discovery")

# dnspython tries a server again after this within a resolution's lifetime: HAProxy's resolvers'
# `timeout retry 1s`.
RETRY = 1.0

Deliver = Callable[[tuple[BackendSpec, ...]], None]


class Discovery:
    """Every dns:// and dns+srv:// entry's members, kept up to date; `deliver` gets the backend list
    whenever a member comes or goes. `memberships` (url → Membership) holds each entry's counters for
    metrics: resolutions, failures by outcome, members, outcome."""

    def __init__(self, settings: Settings, deliver: Deliver) -> None:
        self.deliver = deliver
        self.backends = settings.backends
        self.dns = settings.dns
        self.memberships = {service.url: Membership(service) for service in settings.services}
        self.shadowed: tuple[str, ...] = ()
        self._resolver, self._no_resolver = _resolver(settings.dns)
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._starting = False  # the first answers are coming in: `run` delivers them at once

    @property
    def specs(self) -> tuple[BackendSpec, ...]:
        """The backend list now: those given by URL, then every entry's last known members."""
        return combine(self.backends, self.memberships.values())[0]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ask for every entry once (each within the timeout, all at once), deliver the backend list
        with what they found (one delivery, not one an entry), then report started: the members
        known at start are in the pool before the front door serves. Then follow each entry, and
        deliver at every change, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery, self._starting = nursery, True
            async with trio.open_nursery() as starting:
                for membership in self.memberships.values():
                    starting.start_soon(
                        partial(nursery.start, self._follow, membership, self._scope(membership))
                    )
            self._starting = False
            self.deliver(self._combined())
            task_status.started()

    def reconfigure(self, settings: Settings) -> tuple[BackendSpec, ...]:
        """A reload: the new backends given by URL, entries and [dns] settings. An entry that stays (the
        same URL) keeps its members and counters and is asked again at once (its health table or
        weight may have changed); a new one is asked now; a removed one stops. Returns the backend
        list to reconcile to now (the members of new entries come with their first answer)."""
        old, self.backends = self.memberships, settings.backends
        if settings.dns != self.dns:
            self.dns = settings.dns
            self._resolver, self._no_resolver = _resolver(settings.dns)
        self.memberships = {}
        for service in settings.services:
            membership = old.get(service.url) or Membership(service)
            membership.service = service
            self.memberships[service.url] = membership
        for url in old.keys() - self.memberships.keys():
            self._scopes.pop(url, trio.CancelScope()).cancel()
        if self._nursery is not None:
            for membership in self.memberships.values():
                self._nursery.start_soon(self._follow, membership, self._scope(membership))
        return self._combined()

    def _scope(self, membership: Membership) -> trio.CancelScope:
        """A new cancel scope for the entry's task; the one it had (a reload) is cancelled."""
        url = membership.service.url
        if url in self._scopes:
            self._scopes[url].cancel()
        scope = self._scopes[url] = trio.CancelScope()
        return scope

    async def _follow(
        self,
        membership: Membership,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Ask for one entry's records, apply the answer, wait as long as it says; again."""
        with scope:
            answer = await self.resolve(membership.service)
            self._take(membership, answer)
            task_status.started()
            while True:
                await trio.sleep(next_in(self.dns.interval, answer))
                answer = await self.resolve(membership.service)
                self._take(membership, answer)

    async def resolve(self, service: ServiceSpec) -> Answer:
        """One resolution of an entry, whatever happens: members, EMPTY or FAILED with the reason."""
        if self._resolver is None:
            return Answer(FAILED, detail=self._no_resolver)
        timeout = self.dns.timeout
        with trio.move_on_after(timeout):
            try:
                if service.record == "SRV":
                    return await _srv(self._resolver, service, timeout)
                return await _addresses(self._resolver, service, timeout)
            except dns.resolver.NXDOMAIN:
                return Answer(EMPTY, detail=f"{service.query} does not exist (NXDOMAIN)")
            except dns.exception.Timeout:
                return Answer(FAILED, detail=f"no answer within {format_duration(timeout)}")
            except (dns.exception.DNSException, OSError) as error:
                return Answer(FAILED, detail=str(error) or type(error).__name__)
        return Answer(FAILED, detail=f"no answer within {format_duration(timeout)}")

    def _take(self, membership: Membership, answer: Answer) -> None:
        skipped = membership.skipped
        change = membership.take(answer)
        _log_change(membership, change)
        if membership.skipped != skipped and membership.skipped:
            log.warning(
                "%s: records that make no backend URL, left out: %s",
                membership.service.url,
                ", ".join(membership.skipped),
            )
        if change.members_changed and not self._starting:
            self.deliver(self._combined())

    def _combined(self) -> tuple[BackendSpec, ...]:
        specs, shadowed = combine(self.backends, self.memberships.values())
        if shadowed != self.shadowed and shadowed:
            log.warning("members already in the backend list, kept once: %s", ", ".join(shadowed))
        self.shadowed = shadowed
        return specs


def _resolver(settings: DnsSettings) -> tuple[dns.asyncresolver.Resolver | None, str]:
    """dnspython's async resolver for `settings`, or None and why (no /etc/resolv.conf to read)."""
    try:
        resolver = dns.asyncresolver.Resolver(configure=settings.resolver is None)
    except dns.exception.DNSException as error:
        return None, f"no resolver: {error}; set dns.resolver (--dns-resolver IP:PORT)"
    if settings.resolver is not None:
        resolver.nameservers = [settings.resolver.host]
        resolver.port = settings.resolver.port
    resolver.timeout = min(RETRY, settings.timeout)
    resolver.lifetime = settings.timeout
    resolver.cache = None  # the TTLs decide when to ask again (core.membership.next_in), not a cache
    return resolver, ""


async def _srv(resolver: dns.asyncresolver.Resolver, service: ServiceSpec, timeout: float) -> Answer:
    answer = await resolver.resolve(_absolute(service), dns.rdatatype.SRV, lifetime=timeout)
    records = [
        SrvRecord(rdata.priority, rdata.weight, rdata.port, rdata.target.to_text(omit_final_dot=True))
        for rdata in answer
    ]
    return srv_answer(service, records, _ttl(answer))


async def _addresses(resolver: dns.asyncresolver.Resolver, service: ServiceSpec, timeout: float) -> Answer:
    """Every A and AAAA record; either kind may have none (NODATA), both none is EMPTY.

    A server that fails one kind only (REFUSED or SERVFAIL for AAAA, as some resolvers and
    appliances answer on an IPv4-only network) does not cost the other kind's members: the answer
    is the kind that came (as getaddrinfo returns the A records when AAAA fails). Both failing, or
    NXDOMAIN (the name does not exist for either), is the failure."""
    addresses: list[str] = []
    ttls: list[float] = []
    failure: dns.exception.DNSException | None = None
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            answer = await resolver.resolve(
                _absolute(service), rdtype, lifetime=timeout, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            raise
        except dns.exception.DNSException as error:
            failure = failure or error
            continue
        if answer.rrset is not None:
            addresses.extend(rdata.address for rdata in answer)
            ttls.append(answer.rrset.ttl)
    if failure is not None and not addresses:
        raise failure
    if not addresses:
        return Answer(EMPTY, detail=f"{service.query} has no A or AAAA record")
    return address_answer(service, addresses, min(ttls))


def _absolute(service: ServiceSpec) -> dns.name.Name:
    """The name as written, from the root: no search domains, so every host asks the same question."""
    return dns.name.from_text(service.query)


def _ttl(answer: dns.resolver.Answer) -> float | None:
    return None if answer.rrset is None else float(answer.rrset.ttl)


def _log_change(membership: Membership, change: Change) -> None:
    """One line for a change of the members, one for a change of the outcome; nothing when neither."""
    url, count = membership.service.url, len(change.after)
    if change.outcome_changed and change.outcome != OK:
        kept = f"keeping the {_members(count)} it had" if count else "no members yet"
        log.warning("%s: %s; %s", url, membership.detail, kept)
    elif change.outcome_changed and change.outcome_before in (EMPTY, FAILED):
        log.info("%s: answers again, %s", url, _members(count))
    if change.members_changed:
        added, removed = change.added(), change.removed()
        parts = [f"added {', '.join(added)}"] * bool(added) + [f"removed {', '.join(removed)}"] * bool(
            removed
        )
        log.info("%s: %s (%s)", url, _members(count), "; ".join(parts) or "weights changed")


def _members(count: int) -> str:
    return f"{count} member{'' if count == 1 else 's'}"
