"""Membership: members from SRV and address records, a bad answer keeps the last ones, when to ask again."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core.membership import (
    EMPTY,
    FAILED,
    MIN_TTL,
    OK,
    PENDING,
    ZERO_WEIGHT,
    Answer,
    Membership,
    SrvRecord,
    address_answer,
    combine,
    next_in,
    srv_answer,
)
from dispatcher.settings.config import ServiceSpec, Settings, apply

SRV = ServiceSpec("dns+srv://_http._tcp.web.test", "SRV", "_http._tcp.web.test", "http", None, "/app")
A = ServiceSpec("dns://web.test:8080", "A", "web.test", "https", 8080, weight=2.0)


def names(answer: Answer) -> list[str]:
    return [member.name for member in answer.members]


def test_srv_members_are_the_lowest_prioritys_targets_ports_and_weights() -> None:
    """Priority 1 is a backup set (RFC 2782): left out while priority 0 has records."""
    records = [
        SrvRecord(0, 10, 8081, "B.web.test"),
        SrvRecord(0, 30, 8080, "a.web.test"),
        SrvRecord(1, 50, 8082, "backup.web.test"),
    ]
    answer = srv_answer(SRV, records, 30.0)
    assert (answer.outcome, names(answer), answer.ttl) == (OK, ["a.web.test:8080", "b.web.test:8081"], 30.0)
    assert [(m.weight, m.base) for m in answer.members] == [
        (30.0, "http://a.web.test:8080/app"),
        (10.0, "http://b.web.test:8081/app"),
    ]


def test_srv_weight_zero_is_a_very_small_share_unless_all_are_zero() -> None:
    """RFC 2782: weight 0 beside others has "a very small chance"; all 0 means no selection: equal."""
    mixed = srv_answer(SRV, [SrvRecord(0, 0, 80, "a.test"), SrvRecord(0, 5, 80, "b.test")], None)
    assert [m.weight for m in mixed.members] == [ZERO_WEIGHT, 5.0]
    zeros = srv_answer(SRV, [SrvRecord(0, 0, 80, "a.test"), SrvRecord(0, 0, 80, "b.test")], None)
    assert [m.weight for m in zeros.members] == [1.0, 1.0]


def test_the_same_target_and_port_twice_is_one_member_of_the_greater_weight() -> None:
    """Whatever order the server sends them in: no change from one answer to the next."""
    twice = [SrvRecord(0, 5, 80, "a.test"), SrvRecord(0, 9, 80, "a.test")]
    for records in (twice, twice[::-1]):
        assert [(m.name, m.weight) for m in srv_answer(SRV, records, None).members] == [("a.test:80", 9.0)]


def test_an_srv_target_of_dot_is_no_member() -> None:
    """RFC 2782: "." says the service is decidedly not available here: an empty answer."""
    assert srv_answer(SRV, [SrvRecord(0, 0, 80, ".")], 5.0).outcome == EMPTY


def test_a_target_that_makes_no_url_is_skipped_and_said() -> None:
    """A name no URL can hold (a space) is left out, and named in the answer for the log."""
    answer = srv_answer(SRV, [SrvRecord(0, 1, 80, "bad name.test"), SrvRecord(0, 1, 81, "ok.test")], None)
    assert (names(answer), answer.skipped) == (["ok.test:81"], ("bad name.test:80",))


def test_address_members_take_the_entrys_port_scheme_and_weight() -> None:
    """Every A and AAAA record at the entry's port; v6 in brackets, as a backend given by URL."""
    answer = address_answer(A, ["10.0.0.2", "2001:db8::1", "10.0.0.1", "10.0.0.1"], 5.0)
    assert names(answer) == ["10.0.0.1:8080", "10.0.0.2:8080", "[2001:db8::1]:8080"]
    assert {(m.scheme, m.weight) for m in answer.members} == {("https", 2.0)}


@given(st.permutations(["10.0.0.1", "10.0.0.2", "10.0.0.3"]))
def test_the_records_order_is_no_change(order: list[str]) -> None:
    """A DNS server rotates its records (round-robin DNS): the same set is the same member list."""
    assert address_answer(A, order, None).members == address_answer(A, sorted(order), None).members


def membership_with(*addresses: str) -> Membership:
    membership = Membership(A)
    membership.take(address_answer(A, addresses, 5.0))
    return membership


def test_an_ok_answer_replaces_the_members() -> None:
    """Members that come are added, those that go are removed: one change."""
    membership = membership_with("10.0.0.1", "10.0.0.2")
    change = membership.take(address_answer(A, ["10.0.0.2", "10.0.0.3"], 5.0))
    assert (change.added(), change.removed()) == (["10.0.0.3:8080"], ["10.0.0.1:8080"])
    assert (membership.changes, membership.resolutions) == (2, 2)


def test_a_failed_or_empty_answer_keeps_the_last_members() -> None:
    """Never an empty pool because DNS hiccuped: members stay, only the outcome changes."""
    membership = membership_with("10.0.0.1")
    kept = membership.members
    for bad in (Answer(FAILED, detail="no answer within 3s"), Answer(EMPTY, detail="NXDOMAIN")):
        change = membership.take(bad)
        assert (change.members_changed, membership.members, membership.outcome) == (False, kept, bad.outcome)


def test_a_bad_outcome_is_counted_once_per_change_not_per_query() -> None:
    """Ten failed queries in a row are one failure; failing again after an answer is a second one."""
    membership = membership_with("10.0.0.1")
    changes = [membership.take(Answer(FAILED)).outcome_changed for _ in range(10)]
    assert changes == [True] + [False] * 9
    assert membership.failures == {EMPTY: 0, FAILED: 1}
    membership.take(address_answer(A, ["10.0.0.1"], 5.0))
    membership.take(Answer(FAILED))
    membership.take(Answer(EMPTY))
    assert (membership.failures, membership.resolutions) == ({EMPTY: 1, FAILED: 2}, 14)


def test_a_first_answer_that_fails_leaves_no_members_and_counts() -> None:
    """From pending to failed is a change: counted, and there is nothing to keep."""
    membership = Membership(A)
    assert membership.outcome == PENDING
    membership.take(Answer(FAILED))
    assert (membership.members, membership.failures[FAILED]) == ((), 1)


def test_the_next_question_comes_at_the_interval_or_the_ttl_whichever_is_sooner() -> None:
    """TTL 2 s: again at 2 s; TTL 0: at MIN_TTL; a long TTL or a bad answer: at the interval."""
    assert next_in(5.0, Answer(OK, ttl=2.0)) == 2.0
    assert next_in(5.0, Answer(OK, ttl=0.0)) == MIN_TTL
    assert next_in(5.0, Answer(OK, ttl=600.0)) == 5.0
    assert next_in(0.5, Answer(OK, ttl=0.0)) == 0.5  # an interval set below the floor is the operator's
    assert next_in(5.0, Answer(FAILED)) == next_in(5.0, Answer(EMPTY)) == 5.0


def test_the_backend_list_is_the_urls_then_the_members_each_name_once() -> None:
    """A member that is also a backend given by URL, or found by two entries, is one backend: the first."""
    [static] = apply(Settings(), {"backends": ["http://10.0.0.1:8080"]}).backends
    first, second = membership_with("10.0.0.1", "10.0.0.2"), membership_with("10.0.0.2", "10.0.0.3")
    specs, shadowed = combine([static], [first, second])
    assert [spec.name for spec in specs] == ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    assert specs[0] is static
    assert shadowed == ("10.0.0.1:8080", "10.0.0.2:8080")
