"""The rule index agrees with checking every rule one by one, for any rules and any mail."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config import Rule
from gateway.model import Delivery, MailFacts, RoutingState
from gateway.routing.index import parents
from gateway.routing.rotation import GLOBAL
from gateway.routing.router import route
from gateway.routing.rules import check_each
from tests.unit.test_routing import AGENTS, STATUS, facts, policy

# Overlapping domains, parents and children, look-alikes, IDNA and odd dots.
DOMAINS = ["acme.com", "mail.acme.com", "eu.mail.acme.com", "com", "notacme.com", "b.org"]
DOMAINS += ["xn--bcher-kva.example", "bücher.example", "ACME.COM", "a..b", ".b", ""]
ODD_DOMAINS = st.text(alphabet="ab.", max_size=6)

# Phrases, words inside phrases, punctuation at either end or inside or alone, Unicode folds.
KEYWORDS = ["refund", "late invoice", "invoice", "late", "ÄRGER", "straße", "c++", "c", "#123"]
KEYWORDS += [".net", "re:", "a-b", "b", "x_y", "  late\tinvoice ", "!!!", "€", "?!", "ﬁle", "Σ"]
VARIANTS = ["refunded", "Late  Invoice", "ärger", "STRASSE", "file", "\u03c3", "\u03c2", "ǅ"]
SEPARATORS = [" ", "  ", "\t", "\n", "-", "+", "!", "?", ".", ":", "#", "_", "1", "a", "x", "re"]
KEYWORD = st.one_of(
    st.sampled_from(KEYWORDS),
    st.text(alphabet="ab -+.!?ßΣ", min_size=1, max_size=5).filter(str.strip),
)

ADDRESSES = ["support@example.com", "Sales@Example.com", "sales+promo@example.com"]
ADDRESSES += ["billing@b.org", "x@bücher.example", "x@xn--bcher-kva.example", "nobody"]
RECIPIENTS = st.lists(st.sampled_from(ADDRESSES), max_size=3).map(tuple)

CONDITIONS = st.fixed_dictionaries(
    {},
    optional={
        "sender_domain": st.lists(st.one_of(st.sampled_from(DOMAINS), ODD_DOMAINS), max_size=3),
        "subject_keywords": st.lists(KEYWORD, min_size=1, max_size=3),
        "recipient": st.lists(st.sampled_from(ADDRESSES), max_size=2),
    },
)
TARGETS = st.sampled_from(["agent:a1", "agent:a2", "team:t", None])  # None: a tagging rule
TAGS = st.lists(st.sampled_from(["x", "y", "z"]), max_size=2)
Config = list[tuple[dict[str, list[str]], str | None, list[str]]]


def configured(rules: Config) -> list[Rule]:
    return [
        Rule(name=f"r{i}", assign_to=target, tags=tags or ([] if target else [f"t{i}"]), **values)
        for i, (values, target, tags) in enumerate(rules)
    ]


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Rule], list[Delivery]]:
    """Rules, and mail made of pieces of them, so that most of it matches something."""
    rules = draw(st.lists(st.tuples(CONDITIONS, TARGETS, TAGS), max_size=12))
    keywords = [k for values, _, _ in rules for k in values.get("subject_keywords", [])]
    domains = [d for values, _, _ in rules for d in values.get("sender_domain", [])]
    pieces = [*keywords, *(k.upper() for k in keywords), *KEYWORDS, *VARIANTS, *SEPARATORS]
    subjects = st.lists(st.sampled_from(pieces), max_size=8).map("".join)
    near = st.tuples(st.sampled_from(["", "x.", "x", "a.b."]), st.sampled_from(domains + DOMAINS))
    senders = st.one_of(near.map("".join), ODD_DOMAINS).map(lambda domain: f"c@{domain}")
    mail = st.builds(
        facts,
        subject=subjects,
        sender=st.one_of(senders, st.none()),
        auto=st.sampled_from([None, None, "bounce"]),
        recipients=RECIPIENTS,
    )
    deliveries = st.builds(Delivery, mail, st.sampled_from(ADDRESSES[:3]), RECIPIENTS)
    return configured(rules), draw(st.lists(deliveries, min_size=1, max_size=4))


@settings(max_examples=300)
@given(
    case=cases(),
    statuses=st.dictionaries(st.sampled_from(AGENTS), STATUS),
    last=st.dictionaries(st.sampled_from([GLOBAL, "team:t"]), st.sampled_from(AGENTS)),
    rotation=st.sampled_from([None, AGENTS[:3]]),
)
@example(  # a parent of the sender domain
    case=(
        [Rule(name="r", sender_domain=["acme.com"], assign_to="agent:a1")],
        [Delivery(facts(sender="c@mail.acme.com"), "support@example.com")],
    ),
    statuses={},
    last={},
    rotation=None,
)
def test_the_index_finds_what_checking_every_rule_finds(
    case: tuple[list[Rule], list[Delivery]],
    statuses: dict[str, str],
    last: dict[str, str],
    rotation: list[str] | None,
) -> None:
    rules, mail = case
    p = policy(rules, rotation, teams={"t": ("a2", "a3")})
    state = RoutingState(statuses=statuses, last_served=last)  # type: ignore[arg-type]
    for d in mail:
        assert list(p.index.hits(d)) == list(check_each(p.rules, d))
        assert route(d, p, state) == route(d, p, state, naive=True)


@given(domain=st.one_of(st.none(), st.sampled_from(DOMAINS), ODD_DOMAINS), rule=ODD_DOMAINS)
def test_parents_are_the_domains_a_sender_domain_matches(domain: str | None, rule: str) -> None:
    holds = bool(domain and (domain == rule or domain.endswith("." + rule)))
    assert (rule in parents(domain)) == holds


def test_each_rule_is_filed_under_its_rarest_condition_and_checked_on_all() -> None:
    rules = [
        Rule(
            name=f"gmail{i}",
            sender_domain=["gmail.com"],
            subject_keywords=[f"case {i}"],
            tags=["x"],
        )
        for i in range(50)
    ]
    p = policy(rules)
    assert not p.index.by_domain  # every rule is filed under its keyword, which no other shares
    facts = MailFacts(None, "c@x", "", "gmail.com", "About case 7!", (), (), None, None, None)
    [(rule, matched)] = p.index.hits(Delivery(facts, "support@example.com"))
    assert (rule.name, matched) == (
        "gmail7",
        (("sender_domain", "gmail.com"), ("subject_keywords", "case 7")),
    )
