"""The rules compiled into lookups, so that routing costs about the same for 10 rules or 10,000.

Each rule is filed under one of its conditions: the kind (domain, keyword or
recipient) whose values the fewest other rules share. A message looks up what it
offers (its sender domain and every parent of it, the keywords its subject
contains, its addresses), the rules filed under those are the candidates, and
each candidate, in file order, is held against all its conditions at once with
set lookups. A rule with no condition is always a candidate.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from gateway.addresses import normalize_address
from gateway.model import Delivery
from gateway.routing.rules import CompiledRule, Matched, fold

_RUN = re.compile(r"\w+")


def parents(domain: str | None) -> set[str]:
    """The d for which `domain == d or domain.endswith("." + d)`: the domain and its parents."""
    if not domain:
        return set()
    found = {domain}
    dot = domain.find(".")
    while dot != -1:
        found.add(domain[dot + 1 :])
        dot = domain.find(".", dot + 1)
    return found


def anchor(keyword: str, shared: Mapping[str, int]) -> str:
    """What a folded keyword is looked up by: the run of word characters of it that the
    fewest keywords share, or the first character of a keyword without word characters.

    A run of word characters of a keyword can only match a whole run of word
    characters of the subject: around it, `keyword_pattern` has either a non-word
    character or, at its ends, a demand for one.
    """
    runs = _RUN.findall(keyword)
    return min(runs, key=shared.__getitem__) if runs else keyword[:1]


@dataclass(frozen=True, eq=False)
class _Keyword:
    """One keyword as folded: its pattern, the spellings the rules use, the rules filed under it."""

    pattern: re.Pattern[str]
    spellings: tuple[str, ...]
    rules: tuple[int, ...]


@dataclass(frozen=True)
class Seen:
    """What one message offers the conditions."""

    domains: set[str]  # the sender domain and its parents
    keywords: set[str]  # the rules' spellings of the keywords the subject contains
    recipients: set[str]  # normalized inbox, envelope and To/Cc addresses

    def matched(self, rule: CompiledRule) -> Matched | None:
        """What `rule.check` answers, from the sets: each condition's first value that holds."""
        matched: list[tuple[str, str]] = []
        for condition, values, seen in (
            ("sender_domain", rule.domains, self.domains),
            ("subject_keywords", tuple(word for word, _ in rule.keywords), self.keywords),
            ("recipient", rule.recipients, self.recipients),
        ):
            if values:
                hit = next((value for value in values if value in seen), None)
                if hit is None:
                    return None
                matched.append((condition, hit))
        return tuple(matched)


def _postings(pairs: Iterable[tuple[str, int]]) -> dict[str, list[int]]:
    postings: dict[str, list[int]] = {}
    for value, position in pairs:
        found = postings.setdefault(value, [])
        if not found or found[-1] != position:
            found.append(position)
    return postings


@dataclass(frozen=True)
class RuleIndex:
    rules: tuple[CompiledRule, ...]
    unconditional: tuple[int, ...]
    by_domain: dict[str, tuple[int, ...]]
    by_recipient: dict[str, tuple[int, ...]]
    by_anchor: dict[str, tuple[_Keyword, ...]]  # every keyword of every rule
    by_character: frozenset[str]  # the anchors of keywords without a word character
    recipients: bool  # whether any rule has a recipient condition

    @classmethod
    def of(cls, rules: Sequence[CompiledRule]) -> RuleIndex:
        folded = [tuple(fold(word) for word, _ in rule.keywords) for rule in rules]
        kinds = (
            [rule.domains for rule in rules],
            folded,
            [rule.recipients for rule in rules],
        )
        holders = [
            _postings((value, i) for i, values in enumerate(kind) for value in values)
            for kind in kinds
        ]

        def spread(kind: int, i: int) -> int:  # how many rules share this rule's values
            return sum(len(holders[kind][value]) for value in set(kinds[kind][i]))

        filed: tuple[list[tuple[str, int]], ...] = ([], [], [])
        unconditional: list[int] = []
        for i in range(len(rules)):
            own = [kind for kind in range(3) if kinds[kind][i]]
            if not own:
                unconditional.append(i)
                continue
            _, kind = min((spread(k, i), k) for k in own)
            filed[kind].extend((value, i) for value in kinds[kind][i])
        by_domain, by_keyword, by_recipient = (_postings(pairs) for pairs in filed)

        patterns: dict[str, re.Pattern[str]] = {}
        spellings: dict[str, dict[str, None]] = {}
        for rule, keywords in zip(rules, folded, strict=True):
            for keyword, (word, pattern) in zip(keywords, rule.keywords, strict=True):
                patterns.setdefault(keyword, pattern)
                spellings.setdefault(keyword, {})[word] = None
        runs = Counter(run for keyword in patterns for run in set(_RUN.findall(keyword)))
        by_anchor: dict[str, list[_Keyword]] = {}
        for keyword, pattern in patterns.items():
            entry = _Keyword(pattern, tuple(spellings[keyword]), tuple(by_keyword.get(keyword, ())))
            by_anchor.setdefault(anchor(keyword, runs), []).append(entry)
        return cls(
            rules=tuple(rules),
            unconditional=tuple(unconditional),
            by_domain={domain: tuple(found) for domain, found in by_domain.items()},
            by_recipient={address: tuple(found) for address, found in by_recipient.items()},
            by_anchor={found: tuple(entries) for found, entries in by_anchor.items()},
            by_character=frozenset(found for found in by_anchor if not _RUN.match(found)),
            recipients=any(rule.recipients for rule in rules),
        )

    def keywords_in(self, subject: str) -> Iterator[_Keyword]:
        """The keywords a folded subject contains, each once."""
        anchors = _RUN.findall(subject)
        if self.by_character:
            anchors.extend(self.by_character.intersection(subject))
        tried: set[_Keyword] = set()
        for found in anchors:
            for keyword in self.by_anchor.get(found, ()):
                if keyword not in tried:
                    tried.add(keyword)
                    if keyword.pattern.search(subject):
                        yield keyword

    def hits(self, delivery: Delivery) -> Iterator[tuple[CompiledRule, Matched]]:
        """What `check_each(rules, delivery)` yields: the rules that match, in file order."""
        facts = delivery.facts
        candidates = set(self.unconditional)
        domains = parents(facts.sender_domain)
        for domain in domains:
            candidates.update(self.by_domain.get(domain, ()))
        keywords: set[str] = set()
        if self.by_anchor:
            for keyword in self.keywords_in(fold(facts.subject)):
                keywords.update(keyword.spellings)
                candidates.update(keyword.rules)
        recipients: set[str] = set()
        if self.recipients:
            addresses = (delivery.inbox, *delivery.envelope_to, *facts.recipients)
            recipients = {normalize_address(address) for address in addresses}
            for address in recipients:
                candidates.update(self.by_recipient.get(address, ()))
        seen = Seen(domains, keywords, recipients)
        for position in sorted(candidates):
            rule = self.rules[position]
            matched = seen.matched(rule)
            if matched is not None:
                yield rule, matched
