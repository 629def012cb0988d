"""The pure router: properties over generated messages, rules and availability."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from gateway.addresses import normalize_domain
from gateway.config import Rule
from gateway.model import Delivery, MailFacts, RoutingState
from gateway.routing.rotation import GLOBAL, next_agent
from gateway.routing.router import Policy, route
from gateway.routing.rules import compile_rules

AGENTS = ["a1", "a2", "a3", "a4", "a5"]
STATUS = st.sampled_from(["available", "away", "dnd"])


def facts(
    subject: str = "",
    sender: str | None = "c@example.org",
    auto: str | None = None,
    recipients: tuple[str, ...] = (),
) -> MailFacts:
    domain = sender.rpartition("@")[2] if sender else None
    return MailFacts(None, sender, "", domain, subject, recipients, (), auto, None, None)


def delivery(**kwargs: object) -> Delivery:
    return Delivery(facts(**kwargs), "support@example.com")  # type: ignore[arg-type]


def policy(
    rules: list[Rule] | None = None,
    rotation: list[str] | None = None,
    teams: dict[str, tuple[str, ...]] | None = None,
) -> Policy:
    return Policy(
        compile_rules(rules or []), teams or {}, tuple(rotation) if rotation is not None else None
    )


def serve(order: list[str], n: int, statuses: dict[str, str] | None = None) -> list[str | None]:
    state_last: dict[str, str] = {}
    served: list[str | None] = []
    for _ in range(n):
        decision = route(
            delivery(),
            policy(rotation=order),
            RoutingState(
                statuses=dict(statuses or {}),  # type: ignore[arg-type]
                last_served=dict(state_last),
            ),
        )
        served.append(decision.assignee)
        if decision.rotation:
            state_last[decision.rotation[0]] = decision.rotation[1]
    return served


@given(k=st.integers(1, 5), n=st.integers(0, 60))
def test_round_robin_gives_each_agent_floor_or_ceiling(k: int, n: int) -> None:
    served = serve(AGENTS[:k], n)
    counts = Counter(served)
    assert sum(counts.values()) == n
    assert all(n // k <= counts[a] <= -(-n // k) for a in AGENTS[:k])


@given(statuses=st.dictionaries(st.sampled_from(AGENTS), STATUS), n=st.integers(1, 30))
def test_round_robin_never_picks_an_unavailable_agent(statuses: dict[str, str], n: int) -> None:
    served = serve(AGENTS, n, statuses)
    available = {a for a in AGENTS if statuses.get(a, "available") == "available"}
    if available:
        assert set(served) <= available
        assert len(set(served)) == min(len(available), n)
    else:
        assert served == [None] * n


@given(
    order=st.lists(st.sampled_from(AGENTS), min_size=1, unique=True),
    last=st.sampled_from(AGENTS),
    available=st.sets(st.sampled_from(AGENTS)),
)
def test_next_agent_is_the_first_available_after_the_last_one_served(
    order: list[str], last: str, available: set[str]
) -> None:
    pick = next_agent(order, last, available)
    start = order.index(last) + 1 if last in order else 0
    cyclic = order[start:] + order[:start]
    assert pick == next((a for a in cyclic if a in available), None)


def test_auto_mail_is_unassigned_tagged_auto_and_takes_no_turn() -> None:
    decision = route(delivery(auto="bounce"), policy(rotation=AGENTS), RoutingState())
    assert (decision.assignee, decision.tags, decision.rotation) == (None, ("auto",), None)


def test_auto_mail_keeps_rule_tags_but_no_rule_assigns_it() -> None:
    rules = [
        Rule(name="tag", subject_keywords=["invoice"], tags=["billing"]),
        Rule(name="own", subject_keywords=["invoice"], assign_to="agent:a1", tags=["mine"]),
    ]
    decision = route(
        delivery(subject="invoice", auto="auto-submitted"), policy(rules), RoutingState()
    )
    assert (decision.assignee, decision.via) == (None, None)
    assert decision.tags == ("auto", "billing", "mine")


def test_mail_without_a_sender_is_unassigned_tagged_and_takes_no_turn() -> None:
    decision = route(delivery(sender=None), policy(rotation=AGENTS), RoutingState())
    assert (decision.assignee, decision.tags, decision.rotation) == (None, ("no-sender",), None)
    assert decision.reason == "mail without a sender address goes to the unassigned queue"


RULE_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "sender_domain": st.lists(
            st.sampled_from(["acme.com", "b.org", "mail.acme.com"]), min_size=1, max_size=2
        ),
        "subject_keywords": st.lists(
            st.sampled_from(["refund", "late invoice", "ÄRGER"]), min_size=1, max_size=2
        ),
        "recipient": st.lists(
            st.sampled_from(["support@example.com", "sales@example.com"]), min_size=1, max_size=2
        ),
    },
)
SUBJECTS = st.sampled_from(["", "Refund!", "refunded", "a LATE  invoice", "ärger", "Re: x"])
SENDERS = st.sampled_from(["x@acme.com", "y@mail.acme.com", "z@b.org", "w@notacme.com"])


@given(
    rules=st.lists(
        st.tuples(RULE_VALUES, st.sampled_from(["agent:a1", "agent:a2", None])), max_size=6
    ),
    subject=SUBJECTS,
    sender=SENDERS,
)
def test_the_first_assigning_rule_that_matches_wins(
    rules: list[tuple[dict[str, list[str]], str | None]], subject: str, sender: str | None
) -> None:
    configured = [
        Rule(name=f"r{i}", assign_to=target, tags=[] if target else [f"t{i}"], **values)
        for i, (values, target) in enumerate(rules)
    ]
    compiled = compile_rules(configured)
    d = delivery(subject=subject, sender=sender)
    decision = route(d, policy(configured, rotation=["a3"]), RoutingState())
    hits = [r for r in compiled if r.check(d) is not None]
    assigning = next((r for r in hits if r.assign_to is not None), None)
    if assigning is None:
        assert (decision.via, decision.assignee) == ("round_robin", "a3")
    else:
        assert (decision.rule, decision.assignee) == (assigning.name, assigning.assign_to[1])
    last = len(compiled) if assigning is None else compiled.index(assigning)
    assert set(decision.tags) == {t for r in hits if compiled.index(r) <= last for t in r.tags}


@given(
    rules=st.lists(
        st.tuples(RULE_VALUES, st.sampled_from(["agent:a1", "team:billing", None])), max_size=6
    ),
    subject=SUBJECTS,
    auto=st.sampled_from([None, "bounce"]),
    statuses=st.dictionaries(st.sampled_from(AGENTS), STATUS),
    last=st.sampled_from(AGENTS),
)
def test_a_delivery_without_a_sender_never_takes_a_turn(
    rules: list[tuple[dict[str, list[str]], str | None]],
    subject: str,
    auto: str | None,
    statuses: dict[str, str],
    last: str,
) -> None:
    configured = [
        Rule(name=f"r{i}", assign_to=target, tags=[] if target else [f"t{i}"], **values)
        for i, (values, target) in enumerate(rules)
    ]
    p = policy(configured, rotation=AGENTS, teams={"billing": ("a4", "a5")})
    state = RoutingState(
        statuses=statuses,  # type: ignore[arg-type]
        last_served={GLOBAL: last, "team:billing": last},
    )
    decision = route(delivery(subject=subject, sender=None, auto=auto), p, state)
    assert (decision.assignee, decision.via, decision.rotation) == (None, None, None)
    assert "no-sender" in decision.tags


def test_keyword_is_whole_words_casefolded() -> None:
    [rule] = compile_rules([Rule(name="k", subject_keywords=["refund", "straße"], tags=["x"])])
    assert rule.check(delivery(subject="Re: REFUND please")) is not None
    assert rule.check(delivery(subject="STRASSE closed")) is not None
    assert rule.check(delivery(subject="refunded")) is None
    assert rule.check(delivery(subject="nonrefund")) is None


def test_sender_domain_idna_and_unicode_forms_are_the_same() -> None:
    [rule] = compile_rules([Rule(name="d", sender_domain=["xn--bcher-kva.example"], tags=["x"])])
    for sender_domain in ("BÜCHER.example", "xn--bcher-kva.example", "mail.bücher.example"):
        found = MailFacts(
            None, "a@x", "", normalize_domain(sender_domain), "", (), (), None, None, None
        )
        assert rule.check(Delivery(found, "support@example.com")) is not None


def test_recipient_ignores_case_and_plus_tag() -> None:
    [rule] = compile_rules([Rule(name="r", recipient=["Sales@Example.com"], tags=["x"])])
    assert rule.check(delivery(recipients=("sales+promo@example.com",))) is not None
    assert rule.check(delivery(recipients=("sales2@example.com",))) is None


def test_team_rotation_is_separate_from_the_global_one() -> None:
    rules = [Rule(name="t", subject_keywords=["refund"], assign_to="team:billing")]
    p = policy(rules, rotation=AGENTS, teams={"billing": ("a4", "a5")})
    state = RoutingState(last_served={GLOBAL: "a1", "team:billing": "a4"})
    decision = route(delivery(subject="refund"), p, state)
    assert (decision.assignee, decision.team, decision.rotation) == (
        "a5",
        "billing",
        ("team:billing", "a5"),
    )


LIMITS = st.dictionaries(st.sampled_from(AGENTS), st.integers(1, 3))
OPEN = st.dictionaries(st.sampled_from(AGENTS), st.integers(0, 4))
LAST = st.one_of(st.none(), st.sampled_from(AGENTS))


def able(agent: str, statuses: dict[str, str], limits: dict[str, int], open_: dict[str, int]):
    limit = limits.get(agent)
    return statuses.get(agent, "available") == "available" and (
        limit is None or open_.get(agent, 0) < limit
    )


def capacity_state(statuses: dict[str, str], open_: dict[str, int], last: str | None):
    return RoutingState(
        statuses=dict(statuses),  # type: ignore[arg-type]
        last_served={GLOBAL: last} if last else {},
        open=dict(open_),
    )


@given(
    statuses=st.dictionaries(st.sampled_from(AGENTS), STATUS), limits=LIMITS, open_=OPEN, last=LAST
)
def test_the_rotation_never_gives_a_conversation_to_the_away_the_dnd_or_the_full(
    statuses: dict[str, str], limits: dict[str, int], open_: dict[str, int], last: str | None
) -> None:
    rules = policy(rotation=AGENTS)
    limited = Policy(rules.rules, rules.teams, rules.round_robin, limits)
    decision = route(delivery(), limited, capacity_state(statuses, open_, last))
    takers = [a for a in AGENTS if able(a, statuses, limits, open_)]
    assert decision.assignee == next_agent(AGENTS, last, takers)
    if decision.assignee is not None:
        assert able(decision.assignee, statuses, limits, open_)


@given(
    statuses=st.dictionaries(st.sampled_from(AGENTS), STATUS), limits=LIMITS, open_=OPEN, last=LAST
)
def test_a_team_never_gives_a_conversation_to_the_away_the_dnd_or_the_full(
    statuses: dict[str, str], limits: dict[str, int], open_: dict[str, int], last: str | None
) -> None:
    rule = Rule(name="Billing", subject_keywords=["invoice"], assign_to="team:billing")
    teams = {"billing": tuple(AGENTS)}
    base = policy(rules=[rule], teams=teams)
    limited = Policy(base.rules, base.teams, base.round_robin, limits)
    state = capacity_state(statuses, open_, None)
    state.last_served.update({"team:billing": last} if last else {})
    decision = route(delivery(subject="invoice"), limited, state)
    takers = [a for a in AGENTS if able(a, statuses, limits, open_)]
    assert decision.assignee == next_agent(AGENTS, last, takers)
    assert decision.team == "billing"


def test_the_rotation_says_whom_it_skipped_and_why() -> None:
    base = policy(rotation=["a1", "a2", "a3", "a4"])
    limited = Policy(base.rules, base.teams, base.round_robin, {"a2": 2})
    state = capacity_state({"a1": "away", "a3": "dnd"}, {"a2": 2}, None)
    decision = route(delivery(), limited, state)
    assert decision.assignee == "a4"
    assert decision.reason == (
        "no rule assigns it; the rotation picks a4, skipping a1 away, a2 full at 2/2, a3 dnd"
    )


def test_a_rule_naming_a_full_agent_assigns_it_all_the_same() -> None:
    rule = Rule(name="VIP", sender_domain=["example.org"], assign_to="agent:a1")
    base = policy(rules=[rule], rotation=AGENTS)
    limited = Policy(base.rules, base.teams, base.round_robin, {"a1": 1})
    decision = route(delivery(), limited, capacity_state({}, {"a1": 5}, None))
    assert (decision.assignee, decision.via) == ("a1", "rule")


def away_rule_policy(setting: str) -> Policy:
    rules = [
        Rule(name="VIP", sender_domain=["example.org"], assign_to="agent:a1"),
        Rule(name="Second", sender_domain=["example.org"], assign_to="agent:a2"),
    ]
    base = policy(rules=rules, rotation=["a3"])
    return Policy(base.rules, base.teams, base.round_robin, rule_agent_away=setting)


def test_a_rule_whose_agent_is_away_assigns_it_anyway_and_says_so() -> None:
    decision = route(delivery(), away_rule_policy("assign"), RoutingState({"a1": "away"}))
    assert (decision.assignee, decision.reason) == (
        "a1",
        "rule 'VIP' assigns it to a1, who is away",
    )


def test_a_rule_whose_agent_is_away_goes_on_to_the_next_rule() -> None:
    state = RoutingState({"a1": "dnd"})
    decision = route(delivery(), away_rule_policy("next"), state)
    assert (decision.assignee, decision.rule) == ("a2", "Second")
    assert (
        decision.reason == "rule 'VIP' assigns it to a1, who is dnd; rule 'Second' assigns it to a2"
    )


def test_a_rule_whose_agents_are_all_away_goes_on_to_the_rotation() -> None:
    state = RoutingState({"a1": "away", "a2": "away"})
    decision = route(delivery(), away_rule_policy("next"), state)
    assert (decision.assignee, decision.via) == ("a3", "round_robin")


def test_a_rule_whose_agent_is_away_can_leave_it_waiting_in_the_queue() -> None:
    decision = route(delivery(), away_rule_policy("unassign"), RoutingState({"a1": "away"}))
    assert (decision.assignee, decision.waits_for) == (None, GLOBAL)
    assert decision.reason == "rule 'VIP' assigns it to a1, who is away: it waits unassigned"


def balanced(order: list[str], limits: dict[str, int] | None = None) -> Policy:
    base = policy(rotation=order)
    return Policy(
        base.rules, base.teams, base.round_robin, limits or {}, balanced=frozenset({GLOBAL})
    )


@given(
    k=st.integers(1, 5),
    start=st.lists(st.integers(0, 3), min_size=5, max_size=5),
    n=st.integers(1, 40),
)
def test_balanced_mode_brings_and_keeps_open_counts_within_one(
    k: int, start: list[int], n: int
) -> None:
    order = AGENTS[:k]
    open_ = {agent: start[i] for i, agent in enumerate(order)}
    deficit = sum(max(open_.values()) - count for count in open_.values())
    last: dict[str, str] = {}
    for step in range(n):
        decision = route(
            delivery(), balanced(order), RoutingState(open=dict(open_), last_assigned=dict(last))
        )
        assert decision.assignee is not None
        assert open_[decision.assignee] == min(open_.values())  # the least loaded
        open_[decision.assignee] += 1
        last[decision.assignee] = f"{step:06d}"
    if n >= deficit:  # enough arrivals to even out where it started
        assert max(open_.values()) - min(open_.values()) <= 1


def test_balanced_ties_go_to_the_never_assigned_then_the_longest_since() -> None:
    state = RoutingState(last_assigned={"a1": "2026-11-30T10:00", "a3": "2026-11-30T09:00"})
    decision = route(delivery(), balanced(["a1", "a2", "a3"]), state)
    assert decision.assignee == "a2"  # never assigned
    state.last_assigned["a2"] = "2026-11-30T11:00"
    assert route(delivery(), balanced(["a1", "a2", "a3"]), state).assignee == "a3"


def test_balanced_mode_skips_the_away_and_the_full() -> None:
    state = RoutingState(statuses={"a1": "away"}, open={"a2": 2, "a3": 3})
    decision = route(delivery(), balanced(["a1", "a2", "a3"], {"a2": 2}), state)
    assert decision.assignee == "a3"
    assert decision.reason == (
        "no rule assigns it; the rotation picks a3 (a3 has the fewest open, 3),"
        " skipping a1 away, a2 full at 2/2"
    )
