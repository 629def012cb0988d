"""Rule conditions, compiled once; a rule is data with a `check`."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.addresses import normalize_address, normalize_domain
from gateway.config import Rule
from gateway.model import Delivery

_WS = re.compile(r"\s+")

Matched = tuple[tuple[str, str], ...]  # (condition, value) pairs that held, in condition order


def fold(text: str) -> str:
    return _WS.sub(" ", text).strip().casefold()


def keyword_pattern(keyword: str) -> re.Pattern[str]:
    """A whole-word, whole-phrase match on folded text: 'refund' is not in 'refunded'."""
    words = [re.escape(word) for word in fold(keyword).split(" ")]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)")


@dataclass(frozen=True)
class CompiledRule:
    name: str
    domains: tuple[str, ...]
    keywords: tuple[tuple[str, re.Pattern[str]], ...]
    recipients: tuple[str, ...]
    assign_to: tuple[str, str] | None  # ("agent" | "team", id)
    tags: tuple[str, ...]

    def check(self, delivery: Delivery) -> Matched | None:
        """The (condition, value) pairs that hold, or None when any condition fails."""
        matched: list[tuple[str, str]] = []
        facts = delivery.facts
        if self.domains:
            domain = facts.sender_domain
            hit = next(
                (d for d in self.domains if domain and (domain == d or domain.endswith("." + d))),
                None,
            )
            if hit is None:
                return None
            matched.append(("sender_domain", hit))
        if self.keywords:
            subject = fold(facts.subject)
            word = next((w for w, pattern in self.keywords if pattern.search(subject)), None)
            if word is None:
                return None
            matched.append(("subject_keywords", word))
        if self.recipients:
            seen = {
                normalize_address(a)
                for a in (delivery.inbox, *delivery.envelope_to, *facts.recipients)
            }
            address = next((r for r in self.recipients if r in seen), None)
            if address is None:
                return None
            matched.append(("recipient", address))
        return tuple(matched)


def check_each(
    rules: Sequence[CompiledRule], delivery: Delivery
) -> Iterator[tuple[CompiledRule, Matched]]:
    """Every rule checked on its own, in file order: the reference the index must agree with."""
    for rule in rules:
        matched = rule.check(delivery)
        if matched is not None:
            yield rule, matched


def compile_rules(rules: Sequence[Rule]) -> tuple[CompiledRule, ...]:
    compiled = []
    for rule in rules:
        target = None
        if rule.assign_to is not None:
            kind, _, ident = rule.assign_to.partition(":")
            target = (kind, ident)
        compiled.append(
            CompiledRule(
                name=rule.name,
                domains=tuple(normalize_domain(d) for d in rule.sender_domain),
                keywords=tuple((k, keyword_pattern(k)) for k in rule.subject_keywords),
                recipients=tuple(normalize_address(r) for r in rule.recipient),
                assign_to=target,
                tags=tuple(rule.tags),
            )
        )
    return tuple(compiled)
