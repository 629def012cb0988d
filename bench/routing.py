"""The pure router: microseconds per message at 10, 1,000 and 10,000 rules, indexed and naive.

    .venv/bin/python -m bench.routing

The rules are a mix of customer domains, product keywords and phrases, desk
addresses, tagging rules and two-condition rules; the mail is made to match rules
in the last tenth of the list (or anywhere, with 10 rules), through subdomains,
other cases and +tags, and one message in five matches nothing and goes to the
rotation. Each round measures every size indexed then naive (`route(...,
naive=True)` checks every rule one by one), so the machine's noise falls on both;
the figure is the median of the rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from gateway.config import Rule
from gateway.model import Decision, Delivery, MailFacts, RoutingState
from gateway.routing.rotation import GLOBAL
from gateway.routing.router import Policy, route
from gateway.routing.rules import compile_rules

SIZES = (10, 1_000, 10_000)
ROUNDS = 3
SECONDS = 0.4  # per size, mode and round
AGENTS = ("a1", "a2", "a3")
INBOX = "support@example.com"


def rule(i: int) -> Rule:
    """Rule i of a configuration: which kind it is depends on i modulo 10."""
    name, kind = f"rule {i}", i % 10
    if kind < 3:
        return Rule(name=name, sender_domain=[f"customer{i}.example"], assign_to="agent:a1")
    if kind < 6:
        words = [f"product{i} outage", f"SKU-{i}"]
        return Rule(name=name, subject_keywords=words, assign_to="team:ops")
    if kind == 6:
        return Rule(name=name, recipient=[f"desk{i}@example.com"], assign_to="agent:a2")
    if kind == 7:
        return Rule(name=name, subject_keywords=[f"priority{i}"], tags=["priority"])
    if kind == 8:
        domains = [f"partner{i}.example"]
        return Rule(name=name, sender_domain=domains, subject_keywords=["invoice"], tags=["ap"])
    return Rule(name=name, sender_domain=[f"vip{i}.example"], tags=["vip"])


def message(i: int, n: int) -> Delivery:
    """Mail for rule i (or, for i < 0, mail that no rule matches)."""
    sender, subject, to = "someone@mail.example.net", "Question about my order", (INBOX,)
    kind = i % 10
    if i < 0:
        pass
    elif kind < 3:
        sender = f"Jo@Support.Customer{i}.example".lower()
    elif kind < 6:
        subject = f"Re: PRODUCT{i}  Outage since this morning" if n % 2 else f"Broken sku-{i}!"
    elif kind == 6:
        to = (INBOX, f"Desk{i}+urgent@example.com")
    elif kind == 7:
        subject = f"[priority{i}] Question about my order"
    elif kind == 8:
        sender, subject = f"billing@partner{i}.example", f"Invoice {n} overdue"
    else:
        sender = f"ceo@vip{i}.example"
    domain = sender.rpartition("@")[2]
    facts = MailFacts(None, sender, "", domain, subject, to, (), None, None, None)
    return Delivery(facts, INBOX, (INBOX,))


def workload(size: int) -> tuple[Policy, list[Delivery]]:
    policy = Policy(
        compile_rules([rule(i) for i in range(size)]), {"ops": AGENTS}, round_robin=AGENTS
    )
    late = range(size - max(size // 10, 10), size)
    mail = [message(late[n * 7 % len(late)] if n % 5 else -1, n) for n in range(200)]
    return policy, mail


def per_message(one: Callable[[Delivery], Decision], mail: list[Delivery]) -> float:
    """Microseconds per message, routing the mail round and round for SECONDS."""
    done, started = 0, time.perf_counter()
    while True:
        for delivery in mail:
            one(delivery)
            done += 1
            elapsed = time.perf_counter() - started
            if elapsed >= SECONDS:
                return elapsed / done * 1e6


CROWD = 1_000  # agents in the rotation, each with a limit


def crowded(size: int, balanced: bool) -> tuple[Policy, RoutingState]:
    """`size` rules and a rotation of CROWD agents with a limit of 20: every other one
    full, every tenth away, so that a pick skips some on its way."""
    agents = tuple(f"agent{n}" for n in range(CROWD))
    policy = Policy(
        compile_rules([rule(i) for i in range(size)]),
        {"ops": AGENTS},
        round_robin=agents,
        limits=dict.fromkeys(agents, 20),
        balanced=frozenset({GLOBAL}) if balanced else frozenset(),
    )
    state = RoutingState(
        statuses={agent: "away" for agent in agents[::10]},
        last_served={GLOBAL: agents[CROWD // 2]},
        open={agent: 20 if n % 2 else n % 20 for n, agent in enumerate(agents)},
        last_assigned={agent: f"2026-11-30T{n % 24:02d}:00" for n, agent in enumerate(agents)},
    )
    return policy, state


def measure() -> str:
    state = RoutingState()
    workloads = {size: workload(size) for size in SIZES}
    for policy, mail in workloads.values():  # the same decisions, and the caches warm
        assert all(route(d, policy, state) == route(d, policy, state, naive=True) for d in mail)
    times: dict[tuple[int, bool], list[float]] = {}
    for _ in range(ROUNDS):
        for size, (policy, mail) in workloads.items():
            for naive in (False, True):

                def one(d: Delivery, p: Policy = policy, naive: bool = naive) -> Decision:
                    return route(d, p, state, naive=naive)

                times.setdefault((size, naive), []).append(per_message(one, mail))
    median = {key: statistics.median(found) for key, found in times.items()}
    lines = [
        "| rules | indexed µs/msg | naive µs/msg | indexed / indexed at 10 rules |",
        "| --- | --- | --- | --- |",
    ]
    for size in SIZES:
        indexed, naive = median[size, False], median[size, True]
        ratio = indexed / median[SIZES[0], False]
        lines.append(f"| {size:,} | {indexed:.1f} | {naive:,.1f} | {ratio:.2f} |")
    mail = workloads[SIZES[-1]][1]
    for mode in ("rotation", "balanced"):
        policy, crowd = crowded(SIZES[-1], mode == "balanced")

        def pick(d: Delivery, p: Policy = policy, s: RoutingState = crowd) -> Decision:
            return route(d, p, s)

        cost = statistics.median(per_message(pick, mail) for _ in range(ROUNDS))
        ratio = cost / median[SIZES[0], False]
        lines.append(
            f"| {SIZES[-1]:,} and {CROWD:,} agents with limits, half full, a tenth away"
            f" ({mode}) | {cost:.1f} | | {ratio:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(measure())
